"""The compiled core loads, its ABI version is the one the Python package expects, and only the
binding module touches cffi's ffi/lib."""
import pathlib
import re

import hypervisor._binding as binding

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("hypervisor", "partitions", "vmbus", "drivers", "bench")
PATTERN = (r"(import|from)\s+hypervisor\._hvcore|from hypervisor import _hvcore"
           r"|from hypervisor\._binding import (ffi|lib)|_binding\.(ffi|lib)\b")


def test_core_abi_version_matches_package():
    assert binding.lib.hv_core_abi_version() == binding.ABI_VERSION


def test_only_the_binding_touches_ffi_and_lib():
    pattern = re.compile(PATTERN)
    offenders = [str(path.relative_to(ROOT))
                 for package in PACKAGES for path in (ROOT / package).glob("**/*.py")
                 if path.name != "_binding.py" and pattern.search(path.read_text(errors="replace"))]
    assert offenders == []


def test_the_check_above_can_fail(tmp_path):
    # The pattern recognises the forbidden imports it is meant to catch, and not mere mentions.
    pattern = re.compile(PATTERN)
    assert pattern.search("from hypervisor import _hvcore")
    assert not pattern.search('"glue: PyInit__hvcore"')
    assert pattern.search("from hypervisor._binding import lib")
    assert pattern.search("import hypervisor._hvcore")
    assert not pattern.search("from hypervisor import _binding")
