"""Where a request runs: placement of requests on isolate kinds and runtimes (placement.py)."""
