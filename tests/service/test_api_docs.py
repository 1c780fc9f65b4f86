"""docs/api.md is the reference tools/api-docs generates from the app's OpenAPI document, and
docs/service.md's roles table is the one it generates from auth.py: both are regenerated here in
memory and compared with the files, so an endpoint or a role changed without the docs fails."""
from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest

from partitions.service.auth import ACTIONS, ROLES

REPO = Path(__file__).resolve().parents[2]
REGENERATE = "run .venv/bin/python tools/api-docs and commit the result"


def _load_tool():
    loader = importlib.machinery.SourceFileLoader("hvsim_api_docs", str(REPO / "tools" / "api-docs"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tool():
    return _load_tool()


@pytest.fixture(scope="module")
def openapi(tool):
    return tool.openapi()


def _operations(doc):
    return [(method.upper(), path, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in ("get", "put", "post", "delete", "patch")]


def test_api_md_is_the_reference_of_the_app_as_it_is(tool, openapi):
    assert (REPO / "docs" / "api.md").read_text(encoding="utf-8") == tool.render(openapi), \
        f"docs/api.md is not what the app's OpenAPI document gives: {REGENERATE}"


def test_the_roles_table_of_service_md_is_auth_py_s(tool):
    page = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    assert tool.TABLE_BEGIN in page and tool.TABLE_END in page
    assert tool.splice(page, tool.roles_table()) == page, \
        f"docs/service.md's roles table is not auth.py's: {REGENERATE}"


def test_every_endpoint_is_an_action_of_the_role_table_and_every_action_an_endpoint(openapi):
    actions = [op.get("operationId") for _, _, op in _operations(openapi)]
    assert len(actions) == len(set(actions)), "two endpoints share an operationId"
    assert set(actions) == set(ACTIONS), (set(actions) ^ set(ACTIONS))


def test_every_endpoint_is_in_the_reference_with_the_roles_that_may_call_it(tool, openapi):
    text = tool.render(openapi)
    scopes = tool.role_scopes()
    for method, path, op in _operations(openapi):
        heading = f"### `{method} {path}`"
        assert text.count(heading) == 1, heading
        section = text.split(heading, 1)[1].split("\n### ", 1)[0]
        assert f"Action `{op['operationId']}`" in section
        roles_line = next(line for line in section.splitlines() if line.startswith("Roles: "))
        for role in ROLES:
            scope = scopes[op["operationId"]].get(role)
            named = f"{role} (own VMs)" if scope == "own" else role
            assert (named in roles_line.split(": ", 1)[1].rstrip(".").split(", ")) == (scope is not None), \
                (op["operationId"], role, roles_line)
        errors = next((line for line in section.splitlines() if line.startswith("Errors (")), "")
        for status in op.get("responses", {}):
            assert f"\n| {status} |" in section or f" {status} `" in errors, (heading, status)


def test_the_roles_table_names_every_action_and_role(tool):
    table = tool.roles_table()
    header = table.splitlines()[0]
    assert all(role in header for role in ROLES)
    rows = {line.split("|")[1].strip().strip("`"): [c.strip() for c in line.split("|")[2:-1]]
            for line in table.split("\n\n")[0].splitlines()[2:]}
    assert list(rows) == list(ACTIONS)
    assert rows["clock.set"] == ["yes", "-", "-", "-"]
    assert rows["vms.start"] == ["yes", "yes", "-", "own VMs"]
    assert rows["vms.move"] == ["yes", "yes", "-", "-"]


def test_check_names_a_stale_file_and_a_run_brings_it_up_to_date(tool, openapi, tmp_path, monkeypatch, capsys):
    api_md, service_md = tmp_path / "api.md", tmp_path / "service.md"
    api_md.write_text("stale\n")
    page = (REPO / "docs" / "service.md").read_text(encoding="utf-8")
    service_md.write_text(tool.splice(page, "| a table from before |\n"))
    monkeypatch.setattr(tool, "REPO", tmp_path)
    monkeypatch.setattr(tool, "API_MD", api_md)
    monkeypatch.setattr(tool, "SERVICE_MD", service_md)
    monkeypatch.setattr(tool, "openapi", lambda: openapi)
    assert tool.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "api.md is out of date" in err and "service.md is out of date" in err
    assert api_md.read_text() == "stale\n"        # --check writes nothing
    assert tool.main([]) == 0
    assert tool.main(["--check"]) == 0
    assert api_md.read_text() == tool.render(openapi)
    assert service_md.read_text() == page
