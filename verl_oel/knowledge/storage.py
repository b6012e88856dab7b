"""On-disk knowledge: ``round_{r:03d}/stream_{s:02d}.json`` with a readable ``.md`` beside it.

The JSON file is the source of truth and carries ``format_version``; the markdown file is a
view for people reading a run. Both are replaced atomically, so a crash mid-save (which a
resumable multi-round run will meet sooner or later) leaves the previous version whole.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from verl_oel.atomic_io import write_text_atomic
from verl_oel.knowledge.counts import KnowledgeCounts
from verl_oel.knowledge.parsing import check_marker, normalise_item, parse_items, render_items
from verl_oel.knowledge.stream import (
    KnowledgeItem,
    KnowledgeStore,
    KnowledgeStream,
    TokenCounter,
    approx_token_count,
)

FORMAT_VERSION = 1
_STREAM_FILE = re.compile(r"stream_(\d{2,})\.json")


class KnowledgeFormatError(ValueError):
    """A knowledge file that cannot be loaded; the message names the file and the field."""


def round_dir(root: str | os.PathLike[str], round: int) -> Path:
    return Path(root) / f"round_{round:03d}"


def stream_path(root: str | os.PathLike[str], round: int, index: int) -> Path:
    return round_dir(root, round) / f"stream_{index:02d}.json"


def save_stream(stream: KnowledgeStream, root: str | os.PathLike[str]) -> Path:
    """Write one stream's JSON and markdown atomically; returns the JSON path.

    Both texts are built before anything is written, so a serialisation error changes
    nothing on disk. The markdown goes first: the JSON replace is the commit point.
    """
    path = stream_path(root, stream.round, stream.index)
    document = {
        "format_version": FORMAT_VERSION,
        "round": stream.round,
        "stream": stream.index,
        "marker": stream.marker,
        "budget_tokens": stream.budget_tokens,
        "rendered_tokens": stream.tokens(),  # for readers only; not read back
        "counts": asdict(stream.counts),
        "items": [asdict(item) for item in stream.items],
    }
    json_text = json.dumps(document, indent=2, ensure_ascii=False) + "\n"
    markdown = _markdown(stream, document["rendered_tokens"])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path.with_suffix(".md"), markdown)
    write_text_atomic(path, json_text)
    return path


def save_store(store: KnowledgeStore, root: str | os.PathLike[str]) -> list[Path]:
    """Write every stream of the round; returns the JSON paths."""
    return [save_stream(stream, root) for stream in store.streams]


def load_stream(
    path: str | os.PathLike[str], count_tokens: TokenCounter = approx_token_count
) -> KnowledgeStream:
    """Read and validate one stream file.

    Loading is faithful, not re-trimmed: the budget was enforced with the counter used when
    the stream was built, so load with that same counter.
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise KnowledgeFormatError(f"{path}: not a JSON knowledge file ({error})") from error
    if not isinstance(document, dict):
        raise KnowledgeFormatError(f"{path}: top level must be a JSON object")
    top = _Fields(path, document, "")
    version = top.get("format_version", int)
    if version != FORMAT_VERSION:
        raise KnowledgeFormatError(
            f"{path}: field 'format_version' is {version!r}; this version of verl-oel reads {FORMAT_VERSION}"
        )
    marker = top.get("marker", str)
    try:
        check_marker(marker)
    except ValueError as error:
        raise KnowledgeFormatError(f"{path}: field 'marker': {error}") from error
    budget_tokens = top.get("budget_tokens", int)
    if budget_tokens <= 0:
        raise KnowledgeFormatError(f"{path}: field 'budget_tokens' must be positive, got {budget_tokens}")
    counts = _load_counts(path, top.get("counts", dict))
    items = _load_items(path, top.get("items", list), marker)
    return KnowledgeStream(
        round=top.get("round", int),
        index=top.get("stream", int),
        budget_tokens=budget_tokens,
        marker=marker,
        count_tokens=count_tokens,
        items=items,
        counts=counts,
    )


def load_store(
    root: str | os.PathLike[str], round: int, count_tokens: TokenCounter = approx_token_count
) -> KnowledgeStore:
    """Read all streams of one round; they must be numbered 0..n-1 and say so inside."""
    directory = round_dir(root, round)
    if not directory.is_dir():
        raise FileNotFoundError(f"no knowledge for round {round}: {directory} is not a directory")
    by_index = {
        int(match.group(1)): entry
        for entry in directory.iterdir()
        if (match := _STREAM_FILE.fullmatch(entry.name))
    }
    if not by_index:
        raise KnowledgeFormatError(f"{directory}: no stream_*.json files")
    missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
    if missing:
        raise KnowledgeFormatError(f"{directory}: streams {missing} are missing")
    streams = []
    for index in range(len(by_index)):
        path = by_index[index]
        stream = load_stream(path, count_tokens)
        if stream.round != round:
            raise KnowledgeFormatError(f"{path}: field 'round' is {stream.round}, but the path says {round}")
        if stream.index != index:
            raise KnowledgeFormatError(f"{path}: field 'stream' is {stream.index}, but the path says {index}")
        streams.append(stream)
    return KnowledgeStore(round, streams)


class _Fields:
    """Typed access to a JSON object whose errors name the file and the field path."""

    def __init__(self, path: Path, mapping: dict[str, Any], where: str) -> None:
        self.path, self.mapping, self.where = path, mapping, where

    def get(self, name: str, kind: type | tuple[type, ...]) -> Any:
        label = f"{self.where}{name}"
        if name not in self.mapping:
            raise KnowledgeFormatError(f"{self.path}: missing field '{label}'")
        value = self.mapping[name]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # JSON true/false load as bool, which Python also counts as int.
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            expected = " or ".join("null" if k is type(None) else k.__name__ for k in kinds)
            raise KnowledgeFormatError(f"{self.path}: field '{label}' is {value!r}; expected {expected}")
        return value


def _load_counts(path: Path, mapping: dict[str, Any]) -> KnowledgeCounts:
    names = [f.name for f in fields(KnowledgeCounts)]
    unknown = sorted(set(mapping) - set(names))
    if unknown:
        raise KnowledgeFormatError(f"{path}: field 'counts.{unknown[0]}' is not a known count")
    counts = _Fields(path, mapping, "counts.")
    return KnowledgeCounts(**{name: counts.get(name, int) for name in names})


def _load_items(path: Path, entries: list[Any], marker: str) -> list[KnowledgeItem]:
    items = []
    seen: set[str] = set()
    for position, entry in enumerate(entries):
        where = f"items[{position}]"
        if not isinstance(entry, dict):
            raise KnowledgeFormatError(f"{path}: field '{where}' must be an object")
        item_fields = _Fields(path, entry, f"{where}.")
        text = item_fields.get("text", str)
        # Only what the parser would read back is an item; anything else would change the
        # knowledge on its next render/parse cycle.
        if parse_items(render_items([text], marker), marker=marker).items != (text,):
            raise KnowledgeFormatError(f"{path}: field '{where}.text' is not a single valid item: {text!r}")
        if normalise_item(text) in seen:
            raise KnowledgeFormatError(f"{path}: field '{where}.text' duplicates an earlier item: {text!r}")
        seen.add(normalise_item(text))
        items.append(
            KnowledgeItem(
                text=text,
                round=item_fields.get("round", int),
                stream=item_fields.get("stream", int),
                seed=item_fields.get("seed", int),
                won=item_fields.get("won", bool),
                game=item_fields.get("game", (str, type(None))),
            )
        )
    return items


def _markdown(stream: KnowledgeStream, rendered_tokens: int) -> str:
    lines = [
        f"# Knowledge: round {stream.round}, stream {stream.index}",
        "",
        f"{len(stream.items)} items, {rendered_tokens} of {stream.budget_tokens} tokens, oldest first. "
        f"The teacher sees each item as one line `{stream.marker} <item>`. "
        f"The JSON file beside this one (format_version {FORMAT_VERSION}) is the source of truth.",
        "",
    ]
    for number, item in enumerate(stream.items, start=1):
        game = f"{item.game} " if item.game else ""
        outcome = "won" if item.won else "lost"
        lines.append(f"{number}. {item.text}  ")
        lines.append(f"   _round {item.round}, stream {item.stream}, {game}seed {item.seed}, {outcome}_")
    return "\n".join(lines) + "\n"
