"""ELF reading and kernel modules (.modinfo, dependency closure, modules.dep/alias)."""
