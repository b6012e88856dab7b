"""Files and folders that appear whole or not at all, and survive a crash once written.

A run can be killed at any instant and resumed (``oel/run_state.py``), so every file it writes is written
to a temporary beside its target (``os.replace`` is atomic only within one file system), fsynced, renamed
into place, and the rename made durable by fsyncing the directory. Readers see the old file or the new,
never a part. Temporaries are named ``.{name}.*.tmp`` so that a killed attempt's leftovers can be found.

A folder (a model, a checkpoint, a compiled game) is staged in a hidden sibling the same way and
published with one rename (:func:`staged_folder`, :func:`publish_folder`).

Files get the mode a plain ``open()`` would give them (``0o666`` less the umask), not ``mkstemp``'s
``0o600``: runs, reports and models are meant to be read by others.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def leftover_temporaries(target: Path) -> list[Path]:
    """The temporaries a killed write or staged build of ``target`` left beside it (``.{name}.*.tmp``)."""
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_directory(directory: Path) -> None:
    """Make the renames done in ``directory`` durable."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _write_file_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Create a temporary beside ``path``, let ``write`` fill it, fsync it, rename it onto ``path``."""
    path = Path(path)
    descriptor, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    temporary = Path(name)
    try:
        os.fchmod(descriptor, 0o666 & ~_UMASK)
        os.close(descriptor)
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    _write_file_atomic(path, lambda temporary: temporary.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8, ``\\n`` line ends on every platform) atomically and durably."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Path, value: Any, indent: int | None = 2) -> None:
    """Replace ``path`` with ``value`` as JSON (non-ASCII kept as is, a final newline)."""
    write_text_atomic(path, json.dumps(value, indent=indent, ensure_ascii=False) + "\n")


def write_parquet_atomic(rows: list[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Write ``rows`` as a parquet file (creating its folder), atomically and durably; returns the path.

    A killed run never leaves a truncated dataset that verl would read at the next launch.
    """
    import pandas as pd  # pandas is heavy; the knowledge and run-state writers never need it

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_file_atomic(path, lambda temporary: pd.DataFrame(rows).to_parquet(temporary, index=False))
    return path


@contextlib.contextmanager
def staged_folder(target: Path) -> Iterator[Path]:
    """A fresh hidden folder beside ``target`` to build into; removed if the build raises.

    Publish it with :func:`publish_folder` inside the ``with`` block; whatever is left of it at the end of
    the block (a build that was not published) is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        staging.chmod(0o777 & ~_UMASK)  # mkdtemp makes it private; what it becomes is meant to be shared
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*"), reverse=True):  # files before the folders that hold them
        if path.is_file() and not path.is_symlink():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir() and not path.is_symlink():
            fsync_directory(path)
    fsync_directory(folder)


def publish_folder(staging: Path, target: Path, replace: bool = True) -> bool:
    """Rename the finished ``staging`` folder to ``target``, durably; returns whether it was published.

    Each rename is atomic, so ``target`` is at every moment absent, the old folder or the complete new
    one. ``replace=True``: a previous ``target`` is moved aside first, then deleted (concurrent publishers
    of one target are not coordinated: the last wins, and a rename that races another fails loudly
    instead of mixing their files). ``replace=False``: an existing non-empty ``target`` wins and
    ``staging`` is left for :func:`staged_folder` to remove (for caches whose key fixes the content).
    """
    _fsync_tree(staging)
    if not replace:
        try:
            os.rename(staging, target)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            return False
    elif not target.exists():
        staging.rename(target)
    else:
        retired = staging.with_name(staging.name.replace(".tmp", ".retired.tmp"))
        target.rename(retired)
        staging.rename(target)
        shutil.rmtree(retired)
    fsync_directory(target.parent)
    return True
