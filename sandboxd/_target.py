"""Where the SDK and the CLI look for a server unless told otherwise.

Its own module so that `sandboxd serve` can name the default without importing the client.
"""

from __future__ import annotations

__all__ = ["DEFAULT_TARGET"]

DEFAULT_TARGET = "localhost:50051"
