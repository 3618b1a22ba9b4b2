"""The outbound proxy that injects credentials into guests' requests (reserved: not built yet).

Guests have no network today: WASM isolates get no sockets, and a jail's network namespace
holds only `lo` (docs/jail.md).
"""
