"""Native guests: x86-64 ELF kernels loaded into a child's memory and run on its VP by a CPU emulator."""
from partitions.native_guest.loader import ElfImage, ElfLoadError, load_elf, write_image

__all__ = ["ElfImage", "ElfLoadError", "load_elf", "write_image"]
