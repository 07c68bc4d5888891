"""Running build outputs in a VM (qemu), for `linuxkit-py run` and the boot tests."""

from linuxkit_py.run.image import BootImage, detect_image
from linuxkit_py.run.qemu import BootResult, QemuOptions, boot, boot_image, qemu_command, run_interactive

__all__ = ["BootImage", "BootResult", "QemuOptions", "boot", "boot_image", "detect_image", "qemu_command",
           "run_interactive"]
