"""``verl-oel clean RUN_DIR``: what killed launches of a run left in /dev/shm, removed without starting it.

The real SIGKILL of a launch and the ledger it leaves are tests/platform/test_shm_cleanup.py's; here the
command: it removes exactly what the run's ledgers name, and never while a launch holds the run.
"""

from __future__ import annotations

from multiprocessing import resource_tracker, shared_memory

from verl_oel.cli import main
from verl_oel.oel import RunSpec, RunState
from verl_oel.platform.shm import SHM_DIR

SPEC = RunSpec(base_model="/models/tiny", rounds=1, seed=0, config={"oel": {"rounds": 1}})


def _unused_segment() -> str:
    """A /dev/shm block no process maps, as a killed launch leaves one (this process forgets it)."""
    segment = shared_memory.SharedMemory(create=True, size=64)
    segment.close()
    resource_tracker.unregister(segment._name, "shared_memory")  # noqa: SLF001 (else it is unlinked at exit)
    return segment.name


def test_clean_removes_what_the_runs_ledgers_name_and_nothing_else(tmp_path, capsys):
    run_dir = tmp_path / "run"
    RunState.open(run_dir, SPEC).close()
    left, unrelated = _unused_segment(), _unused_segment()
    (run_dir / "logs").mkdir(exist_ok=True)
    (run_dir / "logs" / "shm_20261204_000000.txt").write_text(f"{left}\n")
    try:
        # While a launch holds the run, nothing is touched: its own segments are in its ledger too.
        with RunState.open(run_dir, SPEC):
            assert main(["clean", str(run_dir)]) == 2
        assert "is in use by another process" in capsys.readouterr().err
        assert (SHM_DIR / left).exists()

        assert main(["clean", str(run_dir)]) == 0
        assert capsys.readouterr().out == f"removed 1 shared-memory segment(s) killed launches left: {left}\n"
        assert not (SHM_DIR / left).exists() and (SHM_DIR / unrelated).exists()
        assert main(["clean", str(run_dir)]) == 0
        assert capsys.readouterr().out.startswith("nothing to remove")
    finally:
        for name in (left, unrelated):
            (SHM_DIR / name).unlink(missing_ok=True)


def test_clean_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert main(["clean", str(tmp_path)]) == 2
    assert "is not an OEL run directory: it has no run.json" in capsys.readouterr().err
