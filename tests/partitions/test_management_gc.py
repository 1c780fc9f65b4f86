"""A large managed host keeps its objects out of the garbage collector's full passes while it
runs (gc.freeze before each step) and gives them back when closed; a small one is left alone."""
import gc

from partitions import management
from partitions.config import loads
from partitions.management import ManagedHost

TWO_VMS = """
[host]
logical_processors = 2
memory = "1GiB"

[[vm]]
name = "a"
memory = "64MiB"

[[vm]]
name = "b"
memory = "64MiB"
workload = { kind = "cpu-burn", duty = 0.2 }
"""


def _run(tmp_path) -> list[int]:
    frozen = []
    m = ManagedHost(loads(TWO_VMS, base_dir=tmp_path), workdir=tmp_path)
    m.run("300ms", on_progress=lambda m: frozen.append(gc.get_freeze_count()))
    m.close()
    frozen.append(gc.get_freeze_count())
    return frozen


def test_a_large_host_freezes_what_it_holds_while_it_runs_and_thaws_it_when_closed(tmp_path, monkeypatch):
    gc.unfreeze()
    monkeypatch.setattr(management, "FREEZE_GC_VMS", 2)   # two VMs count as many here
    *running, closed = _run(tmp_path)
    assert len(running) == 3 and all(n > 0 for n in running)
    assert closed == 0


def test_a_small_host_leaves_the_collector_alone(tmp_path):
    gc.unfreeze()
    assert set(_run(tmp_path)) == {0}
