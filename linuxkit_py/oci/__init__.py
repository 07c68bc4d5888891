"""OCI images: references, registry client, cache (an OCI image layout), flattening, runtime config."""
