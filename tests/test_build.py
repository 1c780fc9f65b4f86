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


LAYERS = ["hypervisor", "vmbus", "drivers", "partitions"]  # native <- hypervisor <- vmbus <- drivers <- partitions


def test_imports_point_downward_only():
    """DESIGN.md's layers: a package imports only the ones below it. The test kit
    (hypervisor/testing/vmbus_strategies.py) imports upward inside its functions on purpose."""
    import ast
    offenders = []
    for i, package in enumerate(LAYERS):
        above = set(LAYERS[i + 1:])
        for path in (ROOT / package).glob("**/*.py"):
            if path.name == "vmbus_strategies.py":
                continue
            tree = ast.parse(path.read_text())
            for node in ast.walk(tree):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                for name in names:
                    if name.split(".")[0] in above:
                        offenders.append(f"{path.relative_to(ROOT)} imports {name}")
    assert offenders == []
