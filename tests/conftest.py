"""Test-suite settings: under CI (HVSIM_CI=1, set by .ci/run) hypothesis runs derandomized, so a
given commit always explores the same examples (a red run is reproducible, a green one stable);
elsewhere it explores afresh each run and keeps what fails in .hypothesis/."""
import os
import signal

import pytest
from hypothesis import settings

settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
if os.environ.get("HVSIM_CI") == "1":
    settings.load_profile("ci")


class _Stuck(Exception):
    """A call that should have returned at once was still blocked after 10 s."""


@pytest.fixture
def no_hang():
    """Turns a call that would block for ever (opening a FIFO, say) into a test failure: the
    guard of a test, not its assertion."""
    def stuck(signum, frame):
        raise _Stuck("blocked")
    old = signal.signal(signal.SIGALRM, stuck)
    signal.setitimer(signal.ITIMER_REAL, 10)
    yield
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, old)
