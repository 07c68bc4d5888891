"""Container bundles: LinuxKit's ConfigToOCI (config.json, runtime.json), capabilities, mounts, the shell form."""
