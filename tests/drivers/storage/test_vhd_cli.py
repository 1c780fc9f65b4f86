"""`hvsim vhd create|info`, driven through its own argparse registration."""
from __future__ import annotations

import argparse
import json

import pytest
from hypothesis import given, strategies as st

from drivers.storage.vhd import VirtualDisk
from partitions.cli import vhd as vhd_cli

MiB = 1024 * 1024


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="hvsim")
    sub = parser.add_subparsers(dest="command", required=True)
    vhd_cli.register(sub)
    args = parser.parse_args(["vhd", *argv])
    return args.func(args)


@pytest.mark.parametrize("text, expected", [
    ("4GiB", 4 << 30), ("512MiB", 512 << 20), ("10MB", 10_000_000), ("1048576", 1 << 20),
    ("4G", 4 << 30), ("8 mib", 8 << 20), ("3TB", 3 * 10**12), ("512b", 512),
])
def test_sizes_take_binary_and_decimal_units(text, expected):
    assert vhd_cli.parse_size(text) == expected


@given(st.integers(0, 10**6), st.sampled_from(sorted(vhd_cli._UNITS)))
def test_any_number_with_any_unit_parses_to_its_product(number, unit):
    assert vhd_cli.parse_size(f"{number}{unit.upper()}") == number * vhd_cli._UNITS[unit]


@pytest.mark.parametrize("text, complaint", [
    ("", "not a number"), ("-5MiB", "not a number"), ("1.5GiB", "not a number"),
    ("4 parsecs", "unknown unit 'parsecs'"),
])
def test_bad_sizes_are_named(text, complaint):
    with pytest.raises(ValueError, match=complaint):
        vhd_cli.parse_size(text)


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
    (["--size", "10MB"], "10000000 is not a multiple of 512 bytes"),
    (["--size", "lots"], "size 'lots' is not a number"),
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
