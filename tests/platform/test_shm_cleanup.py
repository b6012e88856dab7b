from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from multiprocessing import shared_memory

import pytest

from verl_oel.platform import shm

pytestmark = pytest.mark.skipif(not shm.SHM_DIR.is_dir(), reason="no /dev/shm on this system")


def test_new_unused_segments_are_removed_and_older_ones_kept():
    older = shared_memory.SharedMemory(create=True, size=64)
    try:
        with shm.cleanup_new_shm_segments():
            newer = shared_memory.SharedMemory(create=True, size=64)
            newer.close()
        assert not (shm.SHM_DIR / newer.name).exists()
        assert (shm.SHM_DIR / older.name).exists()
    finally:
        older.close()
        older.unlink()


def test_a_segment_another_live_process_uses_is_kept():
    """Another run on the same machine creates a segment meanwhile: it must survive our cleanup."""
    holder, name = _made_by_another_process(
        "from multiprocessing import shared_memory; m = shared_memory.SharedMemory(create=True, size=64); "
        "print(m.name, flush=True)"
    )
    try:
        assert name in shm.segments_in_use()
        assert (shm.SHM_DIR / name).exists()
    finally:
        holder.kill()
        holder.wait()
        (shm.SHM_DIR / name).unlink(missing_ok=True)


def test_a_semaphore_another_run_just_created_is_kept():
    """vLLM's engine creates named multiprocessing semaphores for the processes it spawns; until one of
    them opens it, only its creator maps it, under glibc's temporary name. A neighbour's cleanup in that
    window deleted it, and the spawned process died (SemLock._rebuild, FileNotFoundError)."""
    holder, name = _made_by_another_process(
        "import multiprocessing as mp; lock = mp.get_context('spawn').Lock(); "
        "print('sem.' + lock._semlock.name.lstrip('/'), flush=True)"
    )
    try:
        assert name.startswith("sem.mp-") and (shm.SHM_DIR / name).exists()
    finally:
        holder.kill()
        holder.wait()
        (shm.SHM_DIR / name).unlink(missing_ok=True)


def _made_by_another_process(code: str) -> tuple[subprocess.Popen, str]:
    """Another run on the machine: a process that runs ``code`` (which prints the /dev/shm name it made)
    while our cleanup block runs, then keeps what it made for a minute. Returns it and the name."""
    holder = subprocess.Popen(
        [sys.executable, "-c", f"import time; {code}; time.sleep(60)"], stdout=subprocess.PIPE, text=True
    )
    with shm.cleanup_new_shm_segments(grace_seconds=1.0):
        name = holder.stdout.readline().strip()
        time.sleep(0.1)
    return holder, name


# A launch as the launcher runs one: its ledger watches while a process below it (vLLM's engine, say) makes
# a shared-memory block and a semaphore and keeps them, as a SIGKILLed run's processes leave them.
_LAUNCH = """
import subprocess, sys, time
from pathlib import Path
from verl_oel.platform.shm import SegmentLedger
ledger_path = Path(sys.argv[1])
with SegmentLedger(ledger_path, poll_seconds=0.1):
    engine = subprocess.Popen([sys.executable, "-c", sys.argv[2]], stdout=subprocess.PIPE, text=True)
    names = [engine.stdout.readline().strip() for _ in range(2)]
    while not ledger_path.exists() or not all(name in ledger_path.read_text() for name in names):
        time.sleep(0.05)
    print(" ".join(names), flush=True)
    time.sleep(120)
"""
_ENGINE = (
    "import multiprocessing as mp, time; from multiprocessing import shared_memory; "
    "block = shared_memory.SharedMemory(create=True, size=64); lock = mp.get_context('spawn').Lock(); "
    "print(block.name, flush=True); print('sem.' + lock._semlock.name.lstrip('/'), flush=True); "
    "time.sleep(120)"
)


def test_what_a_killed_launch_left_is_removed_at_the_next_start_and_nothing_else(tmp_path):
    """The launch is SIGKILLed with every process of its session (as ``kill -9`` of a run's process group
    does): its block and semaphore stay in /dev/shm, since nothing of it is left to clean up. The next
    start (``remove_leftovers`` over the run's ledgers) removes exactly those: not a neighbour's segment
    made while the launch ran (still in use), nor one an unrelated process left without a ledger."""
    import os
    import signal

    from oel_testing import REPO_ROOT
    from run_sockets import session_members

    ledger = tmp_path / "logs" / "shm_1.txt"
    stray = shared_memory.SharedMemory(create=True, size=64)  # left by someone else: no ledger names it
    stray.close()
    launch = subprocess.Popen(
        [sys.executable, "-c", _LAUNCH, str(ledger), _ENGINE],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        start_new_session=True,
    )
    neighbour, neighbours = _made_by_another_process(
        "from multiprocessing import shared_memory; m = shared_memory.SharedMemory(create=True, size=64); "
        "print(m.name, flush=True)"
    )
    try:
        left = launch.stdout.readline().split()
        assert len(left) == 2 and left[1].startswith("sem.mp-"), left
        os.killpg(launch.pid, signal.SIGKILL)
        launch.wait()
        deadline = time.monotonic() + 30
        while session_members(launch.pid):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert all((shm.SHM_DIR / name).exists() for name in left)  # the kill left them
        assert set(ledger.read_text().split()) == set(left)  # the neighbour's is not the launch's

        assert sorted(shm.remove_leftovers(ledger.parent)) == sorted(left)
        assert not any((shm.SHM_DIR / name).exists() for name in left) and not ledger.exists()
        assert (shm.SHM_DIR / neighbours).exists() and (shm.SHM_DIR / stray.name).exists()
        assert shm.remove_leftovers(ledger.parent) == []  # nothing more, however often it runs
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launch.pid, signal.SIGKILL)
        neighbour.kill()
        neighbour.wait()
        for name in [neighbours, stray.name]:
            (shm.SHM_DIR / name).unlink(missing_ok=True)
