"""Size and count limits of the artifact store, enforced while data streams in."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["StoreLimits"]


class StoreLimits(BaseModel):
    """Limits applied on every way in (commit API, git push, raw ingest)."""

    model_config = ConfigDict(frozen=True)

    max_object_bytes: int = 256 * 1024 * 1024
    """Largest inflated object (a file, or a delta's result) the store accepts."""
    max_pack_bytes: int = 2 * 1024 * 1024 * 1024
    """Largest pack a single push may send, on the wire."""
    max_pack_objects: int = 5_000_000
    """Most objects a single push may carry."""
    max_commit_files: int = 200_000
    """Most files a single API commit may carry."""
    max_commit_bytes: int = 4 * 1024 * 1024 * 1024
    """Most file bytes a single API commit may carry."""
    max_message_bytes: int = 1024 * 1024
    """Largest commit message."""
    max_request_bytes: int = 2 * 1024 * 1024 * 1024 + 1024 * 1024
    """Largest smart-HTTP request body after gzip decoding."""
    stream_threshold: int = 8 * 1024 * 1024
    """Files larger than this are streamed into a pack of their own, never held whole."""
    compression_level: int = 1
    """zlib level of packs the store writes (git's own default for new objects is 1)."""
    threads: int = 2
    """Compression threads per commit."""
    max_packs: int = 16
    """Packs the store holds before the smaller ones are merged (see `artifacts._consolidate`)."""
