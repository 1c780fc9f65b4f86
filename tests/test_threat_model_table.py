"""docs/threat-model-coverage.md stays honest: it has one row for every case of the threat model's
test catalogue, every test it names exists in the suite, and every status is one of the three
the page defines (a case marked partly or not covered says what is missing)."""
from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TABLE = ROOT / "docs" / "threat-model-coverage.md"
# the threat model lives beside the checkout in the project's shared references; the catalogue's
# size is pinned below so the table is still checked where that file is not at hand
THREAT_MODEL = ROOT.parent / "shared" / "reference" / "threat-model.md"
CATALOGUE_SIZE = 47

ROW = re.compile(r"^\|\s*(\d+)\s*\|(.*)\|(.*)\|(.*)\|\s*$")
TEST_REF = re.compile(r"`(tests/[\w/]+\.py)::([\w:]+)`")


def rows() -> dict[int, tuple[str, str, str]]:
    found: dict[int, tuple[str, str, str]] = {}
    for line in TABLE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            number = int(m.group(1))
            assert number not in found, f"case {number} has two rows"
            found[number] = (m.group(2).strip(), m.group(3).strip(), m.group(4).strip())
    return found


def catalogue() -> list[int]:
    text = THREAT_MODEL.read_text()
    section = text.split("## 6. Test cases", 1)[1].split("\n## ", 1)[0]
    return [int(n) for n in re.findall(r"^(\d+)\. ", section, re.M)]


def test_every_case_of_the_catalogue_has_one_row():
    assert sorted(rows()) == list(range(1, CATALOGUE_SIZE + 1))
    if THREAT_MODEL.exists():
        assert catalogue() == list(range(1, CATALOGUE_SIZE + 1)), "the threat model's catalogue changed"


def test_every_status_is_covered_partly_or_not_covered_and_says_what_is_missing():
    for number, (_, tests, status) in rows().items():
        plain = status.replace("*", "")
        assert plain.startswith(("covered", "partly:", "not covered:")), f"case {number}: {status!r}"
        if plain.startswith("covered"):
            assert TEST_REF.search(tests), f"case {number} is covered by no test"
        else:
            assert len(plain.split(":", 1)[1].strip()) > 20, f"case {number} does not say what is missing"


def _exists(path: str, name: str) -> bool:
    module = importlib.import_module(path[:-3].replace("/", "."))
    obj = module
    for part in name.split("::"):
        obj = getattr(obj, part, None)
        if obj is None:
            return False
    leaf = name.split("::")[-1]
    return leaf.startswith("test_") and callable(obj) or leaf.startswith("Test") and isinstance(obj, type)


def test_every_test_named_exists():
    named = {(path, name) for _, tests, _ in rows().values() for path, name in TEST_REF.findall(tests)}
    assert len(named) > CATALOGUE_SIZE
    missing = sorted(f"{path}::{name}" for path, name in named if not (ROOT / path).exists() or not _exists(path, name))
    assert not missing, "named in the table but not in the suite: " + ", ".join(missing)


@pytest.mark.parametrize("ref,ok", [(("tests/test_threat_model_table.py", "test_every_test_named_exists"), True),
                                    (("tests/test_threat_model_table.py", "test_no_such_test"), False),
                                    (("tests/test_threat_model_table.py", "rows"), False)])
def test_the_existence_check_can_fail(ref, ok):
    assert _exists(*ref) is ok
