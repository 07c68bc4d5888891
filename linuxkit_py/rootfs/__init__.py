"""The root filesystem as a stream of entries (metadata only; data stays in files on disk)."""
