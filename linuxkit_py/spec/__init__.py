"""The YAML spec: loading with positions, schema validation, merging of several files."""

from linuxkit_py.spec.dump import spec_to_json, spec_to_yaml
from linuxkit_py.spec.load import load_specs
from linuxkit_py.spec.model import Spec
from linuxkit_py.spec.validate import validate_label

__all__ = ["Spec", "load_specs", "spec_to_json", "spec_to_yaml", "validate_label"]
