"""SPDX 2.3 documents: the packages and files an image holds (docs/trust.md, "SBOM").

This package only builds and merges documents; who reads the images and the debs is above it
(pkg/build.py writes a package's SBOM as an attestation, rootfs/sbom.py writes the build's).
"""
