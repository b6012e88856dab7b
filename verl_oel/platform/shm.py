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
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from verl_oel.atomic_io import write_text_atomic

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
    return set(segment_users())


def segment_users() -> dict[str, set[int]]:
    """``{name: pids}`` of the /dev/shm entries of our kinds that live processes map or hold open
    (matched by name and by inode, see ``segments_in_use``)."""
    prefix = f"{SHM_DIR}/"
    by_name: dict[str, set[int]] = {}
    by_inode: dict[int, set[int]] = {}
    for pid_text in filter(str.isdigit, os.listdir("/proc")):
        pid = int(pid_text)
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/maps") as maps:
                for line in maps:
                    fields = line.rstrip("\n").split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith(prefix):
                        by_name.setdefault(fields[5][len(prefix) :].removesuffix(" (deleted)"), set()).add(
                            pid
                        )
                        by_inode.setdefault(int(fields[4]), set()).add(pid)
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if target.startswith(prefix):
                        by_name.setdefault(target[len(prefix) :], set()).add(pid)
    users = dict(by_name)
    for name in _segments() - set(by_name):
        with contextlib.suppress(OSError):
            if (pids := by_inode.get((SHM_DIR / name).stat().st_ino)) is not None:
                users[name] = pids
    return users


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


LEDGER_GLOB = "shm_*.txt"


def _descendants(root: int) -> set[int]:
    """``root`` and every live process below it (from /proc's parent pids)."""
    children: dict[int, list[int]] = {}
    for pid_text in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, ValueError, IndexError):
            with open(f"/proc/{pid_text}/stat") as stat:
                # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(pid_text))
    found, todo = {root}, [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


class SegmentLedger:
    """Writes down, while a launch runs, the /dev/shm segments its own processes make, so that what a
    SIGKILLed launch left can be removed later (``remove_leftovers``), and only that.

    A killed launch never runs its own cleanup (``cleanup_new_shm_segments``): measured, each kill of a
    CPU run left two ``psm_*`` segments (~420 MB together) and a ``sem.mp-*`` semaphore, and repeated
    preemptions fill /dev/shm. Once a second, a thread looks for new segments of our kinds; one that a
    process below this one (verl's driver, Ray's workers, vLLM's engine) maps or holds open is appended to
    the ledger file at once (flushed and synced), so the file is whole however the launch ends. A new
    segment that only other processes use is another run's and is never written down.
    """

    def __init__(self, path: Path, poll_seconds: float = 1.0) -> None:
        self.path = Path(path)
        self.poll_seconds = poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._before: set[str] = set()
        self._recorded: set[str] = set()

    def __enter__(self) -> SegmentLedger:
        self._before = _segments()
        self._thread = threading.Thread(target=self._watch, name="verl-oel-shm-ledger", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        # The launch ended on its own and cleaned up after itself; what is still there was in use by a
        # process that outlived it, and stays written down for the next start.
        left = sorted(name for name in self._recorded if (SHM_DIR / name).exists())
        if left:
            write_text_atomic(self.path, "".join(f"{name}\n" for name in left))
        else:
            self.path.unlink(missing_ok=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.record_new()

    def record_new(self) -> list[str]:
        """Append the new segments this launch's processes use; returns them."""
        new = _segments() - self._before - self._recorded
        if not new:
            return []
        ours = _descendants(os.getpid())
        mine = sorted(name for name, pids in segment_users().items() if name in new and pids & ours)
        if mine:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as ledger:
                ledger.write("".join(f"{name}\n" for name in mine))
                ledger.flush()
                os.fsync(ledger.fileno())
            self._recorded.update(mine)
        return mine


def remove_leftovers(ledger_dir: Path) -> list[str]:
    """Remove what earlier launches' ledgers in ``ledger_dir`` name and no live process uses; returns the
    names removed. A ledger is deleted once nothing it names is left (call it only while no other launch
    of the same run can be writing one: under the run's lock)."""
    removed: list[str] = []
    ledgers = sorted(Path(ledger_dir).glob(LEDGER_GLOB)) if Path(ledger_dir).is_dir() else []
    if not ledgers:
        return removed
    in_use = segments_in_use()
    for ledger in ledgers:
        names = [name for name in ledger.read_text().splitlines() if name.startswith(_OWNED_PREFIXES)]
        kept = []
        for name in names:
            path = SHM_DIR / name
            if not path.exists():
                continue
            if name in in_use:
                kept.append(name)
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(name)
        if kept:
            write_text_atomic(ledger, "".join(f"{name}\n" for name in kept))
        else:
            ledger.unlink(missing_ok=True)
    return removed
