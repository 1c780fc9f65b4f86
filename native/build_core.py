"""cffi build script for the hvsim hypervisor core (out-of-line API mode).

The declarations Python may call are the files in native/api/, read in name order; the C sources
are every native/*.c. `python native/build_core.py --sanitize` builds a separate module,
hypervisor._hvcore_asan, under ASan/UBSan for `make sanitize`.
"""
import os
import sys
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# What cffi compiles ahead of its wrappers. hvsim runs in one thread (no other thread waits for
# the GIL while the core works) and nothing reads errno through cffi (ffi.errno), so a call need
# not release the GIL and take it back, nor save and restore errno around the C function: an
# empty call costs a quarter of what it did (~25 ns instead of ~90), and hvsim crosses into C
# once per packet, per hypercall and per guest step. (A thread added to hvsim that runs Python
# while the core works would need these back.)
PREAMBLE = """#include "hvsim.h"
#undef Py_BEGIN_ALLOW_THREADS
#undef Py_END_ALLOW_THREADS
#define Py_BEGIN_ALLOW_THREADS {
#define Py_END_ALLOW_THREADS }
#undef _cffi_restore_errno
#undef _cffi_save_errno
#define _cffi_restore_errno() ((void)0)
#define _cffi_save_errno() ((void)0)
"""


def _builder(module: str, extra_cflags: list[str], extra_ldflags: list[str]) -> FFI:
    ffi = FFI()
    ffi.cdef("\n".join(p.read_text() for p in sorted((HERE / "api").glob("*.h"))))
    sources = sorted(str(p.relative_to(ROOT)) for p in HERE.glob("*.c"))
    ffi.set_source(
        module,
        PREAMBLE,
        sources=sources,
        include_dirs=[str(HERE.relative_to(ROOT))],
        extra_compile_args=["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror=implicit-function-declaration",
                            "-fno-strict-aliasing", *extra_cflags],
        extra_link_args=extra_ldflags,
        depends=[str(p.relative_to(ROOT)) for p in HERE.glob("*.h")],
    )
    return ffi


SAN = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]

# The core's files call each other's small functions on every hypercall and ring packet (a
# translation, a dirty bit, a lookup): hidden visibility makes those calls direct instead of PLT
# calls (Python reaches the functions through cffi's own wrappers in the same module, never by
# symbol), and -O3 inlines more within a file. (Link-time optimisation inlined across files too,
# a batch of GetPartitionId ~25% faster again, but it files every function under one artificial
# compile unit, and `hvsim tcb` attributes the core's code to its C files from the DWARF units.)
FAST = ["-fvisibility=hidden", "-O3"]

ffibuilder = _builder("hypervisor._hvcore", FAST, [])

if __name__ == "__main__":
    os.chdir(ROOT)
    if "--sanitize" in sys.argv:
        _builder("hypervisor._hvcore_asan", SAN + ["-O1", "-g"], SAN).compile(tmpdir=".", verbose=False)
    else:
        ffibuilder.compile(tmpdir=".", verbose=False)
