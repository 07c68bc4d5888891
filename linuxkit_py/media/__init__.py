"""On-media structures the disk and ISO formats are made of: partition tables, FAT file systems, ISO 9660."""
