"""What a run learned, where a person looks: each round's knowledge in the report, and a diff of two rounds.

A round's knowledge is the streams its extraction left for training (``RUN_DIR/rounds/round_RRR/
extraction/round_RRR/stream_NN.json``): each stream is what one teacher prompt holds, its items in the
order the teacher reads them. ``round_knowledge`` reads them back for ``report.json`` and ``report.md``
(each item with its provenance: the round, stream and game it was written after, and whether that game
was won; each stream with its drop counts by cause), and ``knowledge_diff`` compares two rounds' items
(``verl-oel report RUN_DIR --diff A B``), matched as the parser matches duplicates (``normalise_item``:
case, spacing and trailing punctuation ignored).
"""

from __future__ import annotations

import os
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from verl_oel.knowledge import KnowledgeCounts, KnowledgeFormatError, load_stream, normalise_item, round_dir
from verl_oel.oel.run_state import EXTRACTION, RunLayout, read_stage_markers

STREAM_GLOB = "stream_[0-9][0-9].json"


class KnowledgeNotReadyError(ValueError):
    """A round whose knowledge cannot be shown: its extraction is not finished, or a stream is unreadable."""


def round_knowledge(layout: RunLayout, round: int) -> list[dict[str, Any]] | None:
    """The round's streams as JSON data, or None while its extraction is not finished (round 0 has none).
    An unreadable stream raises ``KnowledgeNotReadyError`` naming its file."""
    if round < 1 or EXTRACTION not in read_stage_markers(layout, round):
        return None
    streams = []
    for path in sorted(round_dir(layout.knowledge_root(round), round).glob(STREAM_GLOB)):
        try:
            stream = load_stream(path)
        except (KnowledgeFormatError, OSError) as error:
            raise KnowledgeNotReadyError(f"round {round}: {error}") from error
        streams.append(
            {
                "index": stream.index,
                # Characters of the rendered stream, exact (tokens need the model's tokenizer).
                "characters": len(stream.render()),
                "items": [asdict(item) for item in stream.items],
                "counts": asdict(stream.counts),
            }
        )
    return streams


def _drops(counts: dict[str, int]) -> str:
    """'3 no marker, 1 duplicate', from the counts' non-zero causes (``KnowledgeCounts`` fields)."""
    causes = [f.name for f in fields(KnowledgeCounts) if f.name != "items_kept"]
    named = [
        f"{counts[cause]} {cause.removeprefix('dropped_').replace('_', ' ')}"
        for cause in causes
        if counts.get(cause)
    ]
    return ", ".join(named) or "none"


def _provenance(item: dict[str, Any]) -> str:
    game = f"`{item['game']}` " if item.get("game") else ""
    outcome = "won" if item["won"] else "lost"
    return f"round {item['round']}, stream {item['stream']}, after {game}game seed {item['seed']} ({outcome})"


def render_knowledge_markdown(rounds: list[dict[str, Any]]) -> list[str]:
    """report.md's "Knowledge" section: every round's streams, items in the teacher's order."""
    shown = [entry for entry in rounds if entry.get("knowledge") is not None]
    problems = [entry for entry in rounds if entry.get("knowledge_problem")]
    if not shown and not problems:
        return []
    lines = [
        "## Knowledge",
        "",
        "Each round's streams as its teacher read them (one stream per teacher prompt, items in order), "
        "each item with the game it was written after; drops are the extraction parser's, by cause.",
        "",
    ]
    for entry in problems:
        lines += [f"- round {entry['round']}: {entry['knowledge_problem']}", ""]
    for entry in shown:
        streams = entry["knowledge"]
        total = sum(len(stream["items"]) for stream in streams)
        lines += [f"### Round {entry['round']}: {total} items in {len(streams)} streams", ""]
        for stream in streams:
            items = stream["items"]
            lines.append(
                f"Stream {stream['index']}: {len(items)} items, {stream['characters']} characters; "
                f"dropped: {_drops(stream['counts'])}."
            )
            lines.append("")
            lines += [f"{n}. {item['text']} ({_provenance(item)})" for n, item in enumerate(items, 1)]
            if items:
                lines.append("")
    return lines


def knowledge_diff(run_dir: str | os.PathLike[str], before: int, after: int) -> dict[str, Any]:
    """Round ``after``'s items against round ``before``'s, over all streams of each: ``added`` (only in
    ``after``), ``removed`` (only in ``before``) and ``kept``, each a list of texts in first-seen order."""
    layout = RunLayout(Path(run_dir).resolve())
    texts = {}
    for round in (before, after):
        streams = round_knowledge(layout, round)
        if streams is None:
            raise KnowledgeNotReadyError(
                f"round {round} has no knowledge to compare: its extraction is not finished in "
                f"{layout.run_dir} (rounds with knowledge are 1..R, once their extraction stage is done)"
            )
        by_key: dict[str, str] = {}
        for stream in streams:
            for item in stream["items"]:
                by_key.setdefault(normalise_item(item["text"]), item["text"])
        texts[round] = by_key
    old, new = texts[before], texts[after]
    return {
        "before": before,
        "after": after,
        "added": [text for key, text in new.items() if key not in old],
        "removed": [text for key, text in old.items() if key not in new],
        "kept": [text for key, text in new.items() if key in old],
    }


def render_diff(diff: dict[str, Any]) -> str:
    """The diff as ``verl-oel report --diff`` prints it: a count line, then ``+``/``-`` lines."""
    lines = [
        f"knowledge, round {diff['before']} -> round {diff['after']}: {len(diff['kept'])} kept, "
        f"{len(diff['added'])} added, {len(diff['removed'])} removed"
    ]
    lines += [f"+ {text}" for text in diff["added"]]
    lines += [f"- {text}" for text in diff["removed"]]
    return "\n".join(lines) + "\n"
