"""Every test here runs in its own empty directory, so a run that uses the default run directory
(`.hvsim`, relative to where hvsim is started) writes there and never into the checkout."""
import pytest


@pytest.fixture(autouse=True)
def _own_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
