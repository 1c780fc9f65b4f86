"""Every test here runs in its own empty directory, so that a run's default run directory
(`.hvsim`) and any disk a configuration names land there, never in the checkout."""
import pytest


@pytest.fixture(autouse=True)
def _own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
