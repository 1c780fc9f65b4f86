"""`hvsim vhd create|info`, driven through its own argparse registration."""
from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, strategies as st

from drivers.storage.vhd import VirtualDisk
from hypervisor.quantities import parse_size
from partitions.cli import vhd as vhd_cli

MiB = 1024 * 1024


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hvsim")
    sub = parser.add_subparsers(dest="command", required=True)
    vhd_cli.register(sub)
    args = parser.parse_args(["vhd", *argv])
    return args.func(args)


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 << 30), ("512MiB", 512 << 20), ("1.5MiB", 3 << 19), ("1048576", 1 << 20), ("8 mib", 8 << 20),
    ("512b", 512),
])
def test_sizes_take_bytes_and_binary_units(tmp_path, capsys, text, expected):
    assert run("create", str(tmp_path / "d.vhd"), "--size", text) == 0
    with VirtualDisk.open(tmp_path / "d.vhd", read_only=True) as disk:
        assert disk.size == expected


@pytest.mark.parametrize("text, advice", [
    ("10MB", 'write "10MiB" (what Hyper-V means by 10MB: 10485760 bytes) or 10000000 (bytes)'),
    ("4G", 'write "4GiB" (what Hyper-V means by 4GB: 4294967296 bytes) or 4000000000 (bytes)'),
    ("3tb", 'write "3TiB"'),
    ("64kb", 'write "64KiB"'),
])
def test_units_read_two_ways_are_refused_with_both_readings(tmp_path, capsys, text, advice):
    """Hyper-V's PowerShell reads 10MB as 10 MiB, others as 10,000,000 bytes: no silent choice."""
    assert run("create", str(tmp_path / "d.vhd"), "--size", text) == 2
    err = capsys.readouterr().err
    assert f"--size: {text!r} is ambiguous" in err and advice in err
    assert not (tmp_path / "d.vhd").exists()


@given(st.integers(0, 10**6), st.sampled_from(["", "B", "KiB", "MiB", "GiB", "TiB"]))
def test_any_number_with_a_binary_unit_parses_to_its_product(number, unit):
    scale = {"": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "TiB": 1024**4}[unit]
    assert parse_size(f"{number}{unit.upper()}") == number * scale


@pytest.mark.parametrize("text", ["", "-5MiB", "4 parsecs", "1.1KiB"])
def test_bad_sizes_are_named(tmp_path, capsys, text):
    assert run("create", str(tmp_path / "d.vhd"), f"--size={text}") == 2
    assert "--size: " in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["fixed", "dynamic"])
def test_create_then_info(tmp_path, capsys, kind):
    path = tmp_path / "d.vhd"
    assert run("create", str(path), "--size", "8MiB", "--type", kind) == 0
    assert "created" in capsys.readouterr().out
    assert run("info", str(path), "--json") == 0
    info = json.loads(capsys.readouterr().out)
    assert info["kind"] == kind and info["size"] == 8 * MiB
    assert run("info", str(path)) == 0
    text = capsys.readouterr().out
    assert f"kind: {kind}" in text and f"size: {8 * MiB}" in text and "geometry: cylinders=" in text


def test_create_differencing_takes_the_parents_size(tmp_path, capsys):
    parent, child = tmp_path / "p.vhd", tmp_path / "c.vhd"
    assert run("create", str(parent), "--size", "4MiB", "--type", "dynamic") == 0
    assert run("create", str(child), "--type", "differencing", "--parent", str(parent)) == 0
    with VirtualDisk.open(child, read_only=True) as disk:
        assert disk.kind == "differencing" and disk.size == 4 * MiB
    capsys.readouterr()
    assert run("info", str(child)) == 0
    assert f"parent path: {parent}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, complaint", [
    (["--size", "10000000"], "10000000 is not a multiple of 512 bytes"),
    (["--size", "10MB"], "'10MB' is ambiguous"),
    (["--size", "lots"], "--size: expected a size such as 4096"),
    (["--size", "0"], "not between"),
    ([], "--type dynamic needs --size"),
    (["--size", "1MiB", "--parent", "x.vhd"], "--parent is only for --type differencing"),
    (["--type", "differencing"], "needs --parent"),
    (["--type", "differencing", "--parent", "missing.vhd"], "missing.vhd: No such file"),
])
def test_create_bad_input_exits_2_naming_the_problem(tmp_path, capsys, monkeypatch, argv, complaint):
    monkeypatch.chdir(tmp_path)
    assert run("create", "new.vhd", *argv) == 2
    assert complaint in capsys.readouterr().err
    assert not (tmp_path / "new.vhd").exists()


def test_create_refuses_an_existing_file(tmp_path, capsys):
    path = tmp_path / "d.vhd"
    path.write_bytes(b"keep")
    assert run("create", str(path), "--size", "1MiB") == 2
    assert "exist" in capsys.readouterr().err and path.read_bytes() == b"keep"


@pytest.mark.parametrize("content, complaint", [(None, "No such file"), (b"not a disk" * 100, "footer cookie")])
def test_info_on_a_bad_file_exits_2(tmp_path, capsys, content, complaint):
    path = tmp_path / "x.vhd"
    if content is not None:
        path.write_bytes(content)
    assert run("info", str(path)) == 2
    err = capsys.readouterr().err
    assert str(path) in err and complaint in err


def test_verbs_and_types_are_checked_by_argparse(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run("create", "x.vhd", "--size", "1MiB", "--type", "sparse")
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2


def test_create_in_a_missing_directory_names_the_users_path_not_a_temporary(tmp_path, capsys):
    path = tmp_path / "missing" / "disk.vhd"
    assert run("create", str(path), "--size", "1MiB") == 2
    err = capsys.readouterr().err
    assert f"{path}: No such file or directory" in err and ".tmp" not in err
