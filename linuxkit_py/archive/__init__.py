"""Archives and their entries: the entry model, tar/cpio reading and writing, gzip/zstd, the deflate block cache."""
