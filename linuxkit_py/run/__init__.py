"""Running build outputs in a VM (qemu), for `linuxkit-py run` and the boot tests."""

from linuxkit_py.run.qemu import BootResult, QemuOptions, boot, qemu_command

__all__ = ["BootResult", "QemuOptions", "boot", "qemu_command"]
