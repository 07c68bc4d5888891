"""The image cache: an OCI image layout (blobs, refs), images in it, layer indexes, writing images, verify."""
