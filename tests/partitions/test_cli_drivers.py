"""`hvsim drivers`: the installed plugins with their GUIDs and versions; plugins that fail to load
are listed apart, with their error, and make the exit status 1."""
import json
from importlib import metadata

import pytest

from drivers import registry
from drivers.example.protocol import CLASS_ID
from partitions.cli import main


def test_the_built_in_echo_device_is_listed_with_its_guid_classes_and_version(capsys):
    assert main(["drivers", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["failed"] == []
    echo = next(d for d in out["drivers"] if d["name"] == "echo")
    assert echo == {
        "name": "echo", "class_id": str(CLASS_ID),
        "vsp": "drivers.example.vsp.EchoVsp", "vsc": "drivers.example.vsc.EchoVsc",
        "distribution": "hvsim", "version": metadata.version("hvsim"),
        "description": echo["description"],
    }
    assert echo["description"]
    assert [d["name"] for d in out["drivers"]] == sorted(d["name"] for d in out["drivers"])


def test_the_table_shows_the_same(capsys):
    assert main(["drivers"]) == 0
    out = capsys.readouterr().out
    assert "echo" in out and str(CLASS_ID) in out and "EchoVsp" in out
    assert "Failed" not in out


def _with_plugin(monkeypatch, name: str, value: str) -> None:
    """Add one entry point to the `hvsim.drivers` group as installed packages would."""
    real = metadata.entry_points

    def entry_points(**selection):
        found = list(real(**selection))
        if selection.get("group") == registry.GROUP:
            found.append(metadata.EntryPoint(name=name, value=value, group=registry.GROUP))
        return found

    monkeypatch.setattr(metadata, "entry_points", entry_points)


@pytest.mark.parametrize("value, error", [
    ("hvsim_no_such_plugin.module:DEVICE", "ModuleNotFoundError"),
    ("drivers.registry:GROUP", "TypeError: it names str"),
])
def test_a_plugin_that_fails_to_load_is_listed_apart_and_the_status_is_1(monkeypatch, capsys, value, error):
    _with_plugin(monkeypatch, "broken", value)
    assert main(["drivers", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    (failed,) = out["failed"]
    assert failed["entry_point"] == f"broken = {value}"
    assert error in failed["error"]
    assert "echo" in [d["name"] for d in out["drivers"]]   # the others still load
    assert "broken" not in [d["name"] for d in out["drivers"]]

    assert main(["drivers"]) == 1
    text = capsys.readouterr().out
    assert "Failed to load (1)" in text and "broken" in text and error.split(":")[0] in text
    assert text.index("echo") < text.index("Failed to load")


def test_help_documents_the_exit_status(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["drivers", "--help"])
    assert exit_.value.code == 0
    assert "exit status is then 1" in " ".join(capsys.readouterr().out.split())
