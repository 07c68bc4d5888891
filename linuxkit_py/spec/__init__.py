"""The YAML spec: loading with positions, schema validation, merging of several files."""
