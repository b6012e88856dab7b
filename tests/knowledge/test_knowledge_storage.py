"""Knowledge files survive crashes mid-save, load back equal, and refuse to load wrong."""

import json
import os

import pytest
from oel_testing import fail_os_call

from verl_oel.knowledge import (
    DEFAULT_MARKER,
    KnowledgeFormatError,
    KnowledgeItem,
    KnowledgeStore,
    load_store,
    load_stream,
    save_store,
    save_stream,
    stream_path,
)

M = DEFAULT_MARKER


def whitespace_token_count(text: str) -> int:
    return len(text.split())


def make_store() -> KnowledgeStore:
    store = KnowledgeStore.create(
        round=1, num_streams=2, budget_tokens=60, count_tokens=whitespace_token_count
    )
    store.streams[0].add_reply(
        f"<think>x</think>\n{M} Avoid holes.\nnoise", seed=3, won=False, game="frozenlake"
    )
    store.streams[0].add_reply(f"{M} Plan the whole path first | ünïcode ✓", seed=4, won=True)
    store.streams[1].add_reply(f"{M} Push boxes from behind.\n{M} Push boxes from behind!", seed=5, won=True)
    return store


def files_in(directory) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def test_save_then_load_gives_an_equal_store(tmp_path):
    store = make_store()
    paths = save_store(store, tmp_path)
    assert paths == [tmp_path / "round_001" / "stream_00.json", tmp_path / "round_001" / "stream_01.json"]
    loaded = load_store(tmp_path, 1, count_tokens=whitespace_token_count)
    assert loaded == store
    assert [stream.render() for stream in loaded.streams] == [stream.render() for stream in store.streams]
    assert loaded.streams[0].counts == store.streams[0].counts


def test_files_are_versioned_json_with_readable_markdown_beside(tmp_path):
    save_store(make_store(), tmp_path)
    assert files_in(tmp_path / "round_001") == [
        "stream_00.json",
        "stream_00.md",
        "stream_01.json",
        "stream_01.md",
    ]
    document = json.loads((tmp_path / "round_001" / "stream_00.json").read_text(encoding="utf-8"))
    assert document["format_version"] == 1
    assert document["items"][0] == {
        "text": "Avoid holes.",
        "round": 1,
        "stream": 0,
        "seed": 3,
        "won": False,
        "game": "frozenlake",
    }
    markdown = (tmp_path / "round_001" / "stream_00.md").read_text(encoding="utf-8")
    assert "Avoid holes." in markdown and "frozenlake seed 3, lost" in markdown


@pytest.mark.parametrize(
    "failing, fail_on_call", [("replace", 1), ("replace", 2), ("fsync", 1), ("fsync", 2)]
)
def test_a_save_failing_midway_keeps_the_previous_json_and_leaves_no_temp_files(
    tmp_path, monkeypatch, failing, fail_on_call
):
    store = make_store()
    save_store(store, tmp_path)
    directory = tmp_path / "round_001"
    before = {name: (directory / name).read_bytes() for name in files_in(directory)}
    store.streams[0].add_reply(f"{M} a new rule", seed=9, won=True)

    fail_os_call(monkeypatch, failing, fail_on_call)
    with pytest.raises(OSError, match="disk on fire"):
        save_stream(store.streams[0], tmp_path)
    monkeypatch.undo()

    # The markdown view is written first and may be new; the JSON, the source of truth, is not.
    assert files_in(directory) == sorted(before)
    assert (directory / "stream_00.json").read_bytes() == before["stream_00.json"]
    assert "a new rule" not in [item.text for item in load_stream(directory / "stream_00.json").items]


def test_a_serialisation_error_writes_nothing(tmp_path):
    store = make_store()
    save_store(store, tmp_path)
    directory = tmp_path / "round_001"
    before = {name: (directory / name).read_bytes() for name in files_in(directory)}
    store.streams[1].items.append(KnowledgeItem("unserialisable", 1, 1, seed=0, won=True, game=object()))
    with pytest.raises(TypeError):
        save_stream(store.streams[1], tmp_path)
    assert {name: (directory / name).read_bytes() for name in files_in(directory)} == before


def edit_saved(tmp_path, edit) -> os.PathLike:
    save_store(make_store(), tmp_path)
    path = stream_path(tmp_path, 1, 0)
    document = json.loads(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(json.dumps(document), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda doc: doc.update(format_version=2), "format_version"),
        (lambda doc: doc.update(format_version="1"), "format_version"),
        (lambda doc: doc.pop("format_version"), "format_version"),
        (lambda doc: doc.update(budget_tokens=0), "budget_tokens"),
        (lambda doc: doc.update(marker=""), "marker"),
        (lambda doc: doc["items"][1].update(won="yes"), "items[1].won"),
        (lambda doc: doc["items"][0].update(seed=True), "items[0].seed"),
        (lambda doc: doc["items"][0].pop("text"), "items[0].text"),
        (lambda doc: doc["items"][0].update(text=f"two {M} items"), "items[0].text"),
        (lambda doc: doc["items"][0].update(text="line\nbreak"), "items[0].text"),
        (lambda doc: doc["items"][1].update(text="avoid holes"), "items[1].text"),
        (lambda doc: doc["counts"].update(dropped_typo=1), "counts.dropped_typo"),
        (lambda doc: doc["counts"].pop("items_kept"), "counts.items_kept"),
    ],
)
def test_a_bad_field_fails_with_an_error_naming_file_and_field(tmp_path, edit, field):
    path = edit_saved(tmp_path, edit)
    with pytest.raises(KnowledgeFormatError) as error:
        load_stream(path)
    assert str(path) in str(error.value)
    assert f"'{field}'" in str(error.value)


def test_a_stream_file_in_the_wrong_place_is_refused(tmp_path):
    path = edit_saved(tmp_path, lambda doc: doc.update(stream=1))
    with pytest.raises(KnowledgeFormatError, match="'stream' is 1, but the path says 0"):
        load_store(tmp_path, 1)
    assert load_stream(path).index == 1  # the file alone is well formed


def test_a_file_that_is_not_json_is_refused_by_name(tmp_path):
    save_store(make_store(), tmp_path)
    path = stream_path(tmp_path, 1, 1)
    path.write_bytes(b"\xff\xfe not json")
    with pytest.raises(KnowledgeFormatError, match="stream_01.json"):
        load_store(tmp_path, 1)


def test_a_missing_stream_or_round_is_reported(tmp_path):
    save_store(make_store(), tmp_path)
    stream_path(tmp_path, 1, 0).unlink()
    with pytest.raises(KnowledgeFormatError, match=r"streams \[0\] are missing"):
        load_store(tmp_path, 1)
    with pytest.raises(FileNotFoundError, match="round 2"):
        load_store(tmp_path, 2)
