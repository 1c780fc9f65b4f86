"""`hvsim tcb`: the compiled core's sizes from its ELF, the hypervisor kept apart from the cffi
glue, beside the ≈600 KB reference."""
import json
import math
import os
import shutil
import subprocess

import pytest

from hypervisor._binding import core_library_path
from partitions.cli import main
from partitions.cli.tcb import KINDS, REFERENCE_BYTES


def _report(capsys, *args) -> dict:
    assert main(["tcb", "--json", *args]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def report():
    from partitions.cli.tcb import measure
    with open(core_library_path(), "rb") as f:
        return measure(f, top=10_000)


def test_it_reads_the_core_this_python_loaded(capsys):
    out = _report(capsys)
    assert out["library"] == os.path.abspath(core_library_path())
    assert out["sections"][".text"] > 0 and out["image"] >= out["sections"][".text"]
    assert out["hypervisor"]["code"] > 0 and out["hypervisor"]["functions"] > 0
    assert len(out["largest"]) == 10
    sizes = [f["size"] for f in out["largest"]]
    assert sizes == sorted(sizes, reverse=True)


def test_the_hypervisor_is_kept_apart_from_the_cffi_glue(report):
    # A list, not a set: static functions (and a sanitizer's per-file constructors) share names.
    hypervisor = {f["name"] for f in report["largest"]}
    assert len(report["largest"]) == report["hypervisor"]["functions"]
    assert not any(name.startswith(("_cffi_", "PyInit_")) for name in hypervisor)
    assert {"hv_hypercall", "hv_run"} <= hypervisor
    assert report["glue"]["code"] > 0 and report["glue"]["functions"] > 0
    if report["attribution"] == "dwarf":
        assert report["files"] and all(f["file"].startswith("native/") and f["file"].endswith(".c")
                                       for f in report["files"])


def test_every_byte_of_a_section_is_counted_once(report):
    by_kind = dict.fromkeys(KINDS, 0)
    for owner in ("hypervisor", "glue", "runtime", "unattributed"):
        for kind in KINDS:
            by_kind[kind] += report[owner][kind]
    sections = report["sections"]
    assert by_kind["code"] == sections[".text"]
    assert by_kind["rodata"] == sections.get(".rodata", 0)
    assert by_kind["data"] == sections.get(".data", 0) + sections.get(".data.rel.ro", 0)
    assert by_kind["bss"] == sections.get(".bss", 0)
    for owner in ("hypervisor", "glue", "runtime"):
        assert report[owner]["total"] == sum(report[owner][k] for k in KINDS)


def test_the_comparison_is_of_orders_of_magnitude(report, capsys):
    ref = report["reference"]
    assert ref["bytes"] == REFERENCE_BYTES == 600 * 1024
    assert ref["ratio"] == pytest.approx(REFERENCE_BYTES / report["hypervisor"]["total"], abs=0.05)
    assert ref["orders_of_magnitude"] == pytest.approx(math.log10(ref["ratio"]), abs=0.06)
    assert main(["tcb"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "≈600 KB" in text and "orders of magnitude" in text and "needs for hardware" in text
    assert "glue" in text and "hv_" in text


def test_without_debug_information_it_falls_back_on_names(report, tmp_path, capsys):
    bare = tmp_path / "core.so"
    subprocess.run(["objcopy", "--strip-debug", core_library_path(), str(bare)], check=True)
    out = _report(capsys, "--library", str(bare), "--top", "10000")
    assert out["attribution"] in ("file-symbols", "names")
    # Same split as with DWARF: glue by its _cffi_/PyInit_ names, the hypervisor's hv_ functions.
    # Compiler-made helpers without telling names (a sanitizer build's module constructors) may
    # land on either side without DWARF, so the glue agrees to within 1 %.
    assert abs(out["glue"]["code"] - report["glue"]["code"]) <= report["glue"]["code"] // 100
    assert {f["name"] for f in out["largest"] if f["name"].startswith("hv_")} == \
           {f["name"] for f in report["largest"] if f["name"].startswith("hv_")}


def test_a_file_that_is_not_elf_is_a_clear_error(tmp_path, capsys):
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not an ELF file at all")
    assert main(["tcb", "--library", str(junk)]) == 2
    assert str(junk) in capsys.readouterr().err
    assert main(["tcb", "--library", str(tmp_path / "missing.so")]) == 2
    assert "No such file" in capsys.readouterr().err
