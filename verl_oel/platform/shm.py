"""Remove the shared-memory segments a vLLM-CPU run leaves behind.

Each run that starts a vLLM engine on CPU leaves segments in /dev/shm (weight-sync buffers
and vLLM's message queues) when its processes are torn down by Ray. On a CI machine or a
laptop they add up; the run that created them removes them. Other runs may be going on at
the same time on the same machine, so a segment is removed only if no live process still
maps it or holds it open: at the end of a run its own processes are gone, another run's are not.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# Python's multiprocessing.shared_memory blocks (verl's weight-sync buffers) and
# multiprocessing semaphores (vLLM's queues): the only kinds a run was seen to leave.
_OWNED_PREFIXES = ("psm_", "sem.mp-")


def _segments() -> set[str]:
    if not SHM_DIR.is_dir():
        return set()
    return {entry.name for entry in os.scandir(SHM_DIR) if entry.name.startswith(_OWNED_PREFIXES)}


def segments_in_use() -> set[str]:
    """Names of /dev/shm entries some live process maps or has open (from /proc).

    A mapping is matched by inode as well as by name: glibc's ``sem_open`` builds a new semaphore in a
    temporary file (``sem.XXXXXX``), maps it, links it under its real name and unlinks the temporary, so
    the process that created ``sem.mp-...`` maps it as ``/dev/shm/sem.XXXXXX (deleted)``. Matched by name
    only, another run's just-created semaphore looked unused until the process it was made for opened
    it, and this cleanup deleted it: that process then died in ``SemLock._rebuild`` with
    FileNotFoundError (seen 2026-12-02, a resume test beside the ablation runs)."""
    prefix = f"{SHM_DIR}/"
    names: set[str] = set()
    inodes: set[int] = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.rstrip("\n").split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith(prefix):
                        names.add(fields[5][len(prefix) :].removesuffix(" (deleted)"))
                        inodes.add(int(fields[4]))
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        names.add(target[len(prefix) :])
    in_use = set(names)
    for name in _segments() - names:
        with contextlib.suppress(OSError):
            if (SHM_DIR / name).stat().st_ino in inodes:
                in_use.add(name)
    return in_use


@contextlib.contextmanager
def cleanup_new_shm_segments(grace_seconds: float = 15.0) -> Iterator[None]:
    """Delete, on exit, the segments of those kinds that appeared while the block ran and that
    no live process uses any more. Ray tears a run's processes down asynchronously, so a segment
    still in use is looked at again for ``grace_seconds`` before it is left to its user."""
    before = _segments()
    try:
        yield
    finally:
        pending = _segments() - before
        deadline = time.monotonic() + grace_seconds
        while pending:
            free = pending - segments_in_use()
            for name in sorted(free):
                with contextlib.suppress(OSError):
                    (SHM_DIR / name).unlink()
            pending -= free
            if not pending or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
