"""The compiled core loads, and its ABI version is the one the Python package expects."""
import hypervisor._binding as binding


def test_core_abi_version_matches_package():
    assert binding.lib.hv_core_abi_version() == binding.ABI_VERSION


def test_only_the_binding_imports_the_compiled_module():
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = []
    for path in root.glob("*/**/*.py"):
        if ".venv" in path.parts or path.name in ("_binding.py", "test_build.py") or path.parts[-2] == "native":
            continue
        text = path.read_text(errors="replace")
        if re.search(r"\b_hvcore\b|from hypervisor\._binding import (ffi|lib)|_binding\.(ffi|lib)\b", text):
            offenders.append(str(path.relative_to(root)))
    assert offenders == []
