"""linuxkit-py: assemble minimal, immutable Linux OS images from LinuxKit YAML specs."""

__version__ = "0.1.0"
