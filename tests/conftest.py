"""Test-suite settings: under CI (HVSIM_CI=1, set by .ci/run) hypothesis runs derandomized, so a
given commit always explores the same examples (a red run is reproducible, a green one stable);
elsewhere it explores afresh each run and keeps what fails in .hypothesis/."""
import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("HVSIM_CI") == "1":
    settings.load_profile("ci")
