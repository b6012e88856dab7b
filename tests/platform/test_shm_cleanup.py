from __future__ import annotations

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
