"""``verl_oel.atomic_io``: every file and folder a run writes appears whole or not at all, durably."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from oel_testing import fail_os_call

from verl_oel.atomic_io import (
    leftover_temporaries,
    publish_folder,
    staged_folder,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

WRITERS = {
    "text": lambda path: write_text_atomic(path, "new"),
    "bytes": lambda path: write_bytes_atomic(path, b"new"),
    "json": lambda path: write_json_atomic(path, {"new": True}),
    "parquet": lambda path: write_parquet_atomic([{"new": 1}], path),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_atomic_files_get_the_mode_of_ordinary_files(tmp_path, kind):
    target = tmp_path / f"report.{kind}"
    WRITERS[kind](target)
    (tmp_path / "plain").write_text("hello")
    assert os.stat(target).st_mode & 0o777 == os.stat(tmp_path / "plain").st_mode & 0o777


def test_each_writer_writes_what_it_says(tmp_path):
    write_text_atomic(tmp_path / "a.txt", "line\nünïcode\n")
    write_bytes_atomic(tmp_path / "b.bin", b"\x00\xff")
    write_json_atomic(tmp_path / "c.json", {"ü": [1, 2]})
    path = write_parquet_atomic([{"x": 1}, {"x": 2}], tmp_path / "sub" / "d.parquet")
    assert (tmp_path / "a.txt").read_bytes() == "line\nünïcode\n".encode()
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    assert (tmp_path / "c.json").read_text(encoding="utf-8") == '{\n  "ü": [\n    1,\n    2\n  ]\n}\n'
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"ü": [1, 2]}
    assert path == tmp_path / "sub" / "d.parquet"
    assert pd.read_parquet(path)["x"].tolist() == [1, 2]


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_the_file_and_its_directory_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch, kind):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(
        os,
        "fsync",
        lambda fd: (events.append(("fsync", os.path.isdir(f"/proc/self/fd/{fd}"))), real_fsync(fd)),
    )
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", None)), real_replace(a, b)))
    WRITERS[kind](tmp_path / "target")
    assert events == [("fsync", False), ("replace", None), ("fsync", True)]


@pytest.mark.parametrize("failing, fail_on_call", [("replace", 1), ("fsync", 1), ("fsync", 2)])
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_write_failing_midway_leaves_the_old_file_or_the_new_and_no_temporary(
    tmp_path, monkeypatch, kind, failing, fail_on_call
):
    target = tmp_path / "target"
    target.write_bytes(b"old")
    fail_os_call(monkeypatch, failing, fail_on_call)
    with pytest.raises(OSError, match="disk on fire"):
        WRITERS[kind](target)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["target"]
    # Only the directory's fsync comes after the rename: the new file is in place, not yet durable.
    still_old = target.read_bytes() == b"old"
    assert still_old == ((failing, fail_on_call) != ("fsync", 2))


def test_a_failing_serialisation_writes_nothing(tmp_path):
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "c.json", {"not json": object()})
    assert os.listdir(tmp_path) == []


def test_a_published_folder_replaces_the_previous_one_whole(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with staged_folder(target) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".model.")
        (staging / "sub").mkdir()
        (staging / "sub" / "new.bin").write_text("new")
        assert publish_folder(staging, target)
    assert sorted(str(p.relative_to(target)) for p in target.rglob("*")) == ["sub", "sub/new.bin"]
    assert os.listdir(tmp_path) == ["model"]
    (tmp_path / "plain").mkdir()
    assert target.stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777


def test_without_replace_the_first_published_folder_wins(tmp_path):
    target = tmp_path / "game"
    for content in ("first", "second"):
        with staged_folder(target) as staging:
            (staging / "game.z8").write_text(content)
            published = publish_folder(staging, target, replace=False)
        assert published == (content == "first")
    assert (target / "game.z8").read_text() == "first"
    assert os.listdir(tmp_path) == ["game"]


def test_a_build_that_raises_leaves_no_staging_folder_and_the_old_target(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old.bin").write_text("old")
    with pytest.raises(RuntimeError, match="killed"), staged_folder(target) as staging:
        (staging / "half.bin").write_text("half")
        raise RuntimeError("killed")
    assert os.listdir(tmp_path) == ["model"] and os.listdir(target) == ["old.bin"]


def test_a_published_folder_is_fsynced_file_by_file(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    with staged_folder(tmp_path / "model") as staging:
        (staging / "weights.bin").write_text("w")
        staged = str(staging)
        publish_folder(staging, tmp_path / "model")
    assert synced == [f"{staged}/weights.bin", staged, str(tmp_path)]


def test_leftover_temporaries_are_what_a_killed_write_or_build_of_that_target_leaves(tmp_path, monkeypatch):
    target = tmp_path / "eval.json"
    # A write killed before its rename, with no chance to clean up (as after a SIGKILL).
    monkeypatch.setattr(os, "replace", lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    monkeypatch.setattr(Path, "unlink", lambda *_, **__: None)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(target, "half")
    monkeypatch.undo()
    folder = tmp_path / "model"
    building = staged_folder(folder)  # entered, never exited: a build killed midway
    staging = building.__enter__()
    (tmp_path / ".eval.json.other").write_text("not a temporary of ours")
    (tmp_path / ".evaluation.json.x.tmp").write_text("another target's")
    leftovers = leftover_temporaries(target)
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".eval.json.")
    assert leftover_temporaries(folder) == [staging]
