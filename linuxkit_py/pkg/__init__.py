"""Building OCI images from Debian packages (`linuxkit-py pkg build`)."""
