"""Generated gRPC stubs of the sandboxd.v1 API. DO NOT EDIT."""
