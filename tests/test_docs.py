"""Every code snippet in README.md and docs/*.md runs as written.

Each page is read top to bottom in a fresh temporary directory, as a reader following it would:
- ```python blocks run in order in one namespace per page (a block may use what an earlier block
  of the same page made, and nothing else);
- ```toml blocks are host files and must load with `partitions.config.loads`, unless the line
  before the block says otherwise: `<!-- fragment: vm -->` (the keys of one [[vm]] table, checked
  inside a host with that VM and the switches its adapters name), `<!-- fragment: host -->` (keys
  of [host]), `<!-- not a host file -->` (TOML only, such as a pyproject.toml excerpt).
  `<!-- file: NAME -->` also writes the block to NAME in the page's directory, for later blocks;
- ```sh blocks: every `hvsim ...` line must parse with the command's own argument parser, and the
  cheap ones run: `hvsim vhd ...`, `hvsim check CONFIG` and `hvsim run CONFIG` (as `hvsim check`)
  when CONFIG exists in the page's directory or the repository, and `hvsim run` of the default
  host for 0.1 s of simulated time; `make TARGET` lines name targets of the Makefile; lines of other
  tools are left alone.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import tomllib
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest

from partitions.cli import build_parser, main
from partitions.config import ConfigError, from_dict, loads

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\s*$")
_MARKER = re.compile(r"^<!--\s*(.*?)\s*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int            # of the opening fence, counting from 1
    lang: str
    text: str
    marker: str | None   # the HTML comment on the line before the fence, if any

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    out, i = [], 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), None)
        assert end is not None, f"{page.relative_to(REPO)}:{i + 1}: a code block that never closes"
        marker = _MARKER.match(lines[i - 1]) if i else None
        out.append(Block(page, i + 1, m.group(1), "\n".join(lines[i + 1:end]) + "\n",
                         marker.group(1) if marker else None))
        i = end + 1
    return out


def test_the_pages_have_snippets_to_check():
    found = {b.lang for page in PAGES for b in blocks(page)}
    assert {"python", "toml", "sh"} <= found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_every_snippet_of_the_page_runs_as_written(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs__"}
    for block in blocks(page):
        if block.lang == "python":
            _python(block, namespace)
        elif block.lang == "toml":
            _toml(block, tmp_path)
        elif block.lang == "sh":
            _sh(block, tmp_path, capsys)


def _python(block: Block, namespace: dict) -> None:
    try:
        exec(compile(block.text, block.where, "exec"), namespace)
    except Exception:
        pytest.fail(f"{block.where}: this python block fails as written (blocks of a page share one "
                    f"namespace, in order):\n{traceback.format_exc()}", pytrace=False)


def _toml(block: Block, workdir: Path) -> None:
    marker = block.marker or ""
    try:
        document = tomllib.loads(block.text)
    except tomllib.TOMLDecodeError as exc:
        pytest.fail(f"{block.where}: not valid TOML: {exc}", pytrace=False)
    if marker.startswith("file:"):
        (workdir / marker.partition(":")[2].strip()).write_text(block.text)
    try:
        if marker == "not a host file":
            return
        if marker == "fragment: vm":
            switches = sorted({nic.get("switch") for nic in document.get("nics", []) if isinstance(nic, dict)})
            from_dict({"vm": [{"name": "vm", **document}], "switch": [{"name": s} for s in switches if s]},
                      file=block.where, base_dir=workdir)
        elif marker == "fragment: host":
            from_dict({"host": document}, file=block.where, base_dir=workdir)
        elif marker and not marker.startswith("file:"):
            pytest.fail(f"{block.where}: unknown marker <!-- {marker} --> (see tests/test_docs.py)", pytrace=False)
        else:
            loads(block.text, file=block.where, base_dir=workdir)
    except ConfigError as exc:
        pytest.fail(f"{exc}\n(a toml block is a whole host file unless the line before it is "
                    "<!-- fragment: vm -->, <!-- fragment: host --> or <!-- not a host file -->)", pytrace=False)


def _sh(block: Block, workdir: Path, capsys) -> None:
    makefile = (REPO / "Makefile").read_text()
    for n, line in enumerate(block.text.splitlines()):
        command = line.split(" #", 1)[0].strip()
        if not command or command.startswith("#"):
            continue
        words = shlex.split(command)
        where = f"{block.page.relative_to(REPO)}:{block.line + 1 + n}"
        if words[0] == "make":
            targets = [w for w in words[1:] if "=" not in w]
            for target in targets:
                assert re.search(rf"^{re.escape(target)}:", makefile, re.M), f"{where}: no make target {target!r}"
            continue
        if words[0] != "hvsim":
            continue   # another tool (jq, cat, ...): the reader's own
        try:
            with contextlib.redirect_stderr(io.StringIO()) as err:
                args = build_parser().parse_args(words[1:])
        except SystemExit as exit_:
            if exit_.code == 0:   # --version, --help: done once parsed
                continue
            pytest.fail(f"{where}: `{command}` does not parse: {err.getvalue().strip()}", pytrace=False)
        argv = _cheap_form(words[1:], args, workdir)
        if argv is None:
            continue
        capsys.readouterr()
        status = main(argv)
        out = capsys.readouterr()
        assert status == 0, f"{where}: `hvsim {' '.join(argv)}` (for `{command}`) exits {status}: {out.err}"


def _cheap_form(argv: list[str], args, workdir: Path) -> list[str] | None:
    """The command to run for a documented one, or None to only parse it."""
    if args.command == "vhd":
        return argv
    if args.command in ("run", "check"):
        if args.config is not None:
            config = next((d / args.config for d in (workdir, REPO) if (d / args.config).exists()), None)
            if config is None:
                return None   # the reader's own file: the documented line only has to parse
            return ["check", *[str(config) if a == args.config else a for a in argv[1:]]]
        if args.command == "run":
            return [*argv, "--for", "0.1s", "--json"]
    return None
