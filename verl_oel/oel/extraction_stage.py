"""The extraction stage of an OEL round, run through verl's real rollout stack.

The stage is a validation-only launch of verl (``trainer.val_only=True``) whose dataset rows
are knowledge streams played by the ``oel_extract_stream`` agent loop. With one stream per
row the streams run concurrently against the same vLLM server; with ``concurrent=False``
one row holds every stream and builds them one after another (the benchmark's baseline).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_oel.agent_loop.extraction_loop import KNOWLEDGE_SOURCES, StreamSpec
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.knowledge import DEFAULT_MARKER, load_stream, stream_path
from verl_oel.seeds import extraction_game_seeds, extraction_stream_seed, in_context_probe_seeds


@dataclass(frozen=True)
class ExtractionConfig:
    """How a round builds its knowledge (docs/method.md, extraction)."""

    game: str
    settings: dict[str, Any] = field(default_factory=dict)
    num_streams: int = 10
    games_per_stream: int = 16
    # Knowledge used for training is the snapshot after this many games (None: after all).
    cut_after: int | None = None
    budget_tokens: int = 8192
    show_previous_knowledge: bool = True
    marker: str = DEFAULT_MARKER
    max_turn_tokens: int | None = None
    max_item_tokens: int = 256
    # Games played WITH the knowledge so far after each game, for the in-context curve.
    in_context_games: int = 0
    base_seed: int = 0
    concurrent: bool = True
    # "items" (OEL) or "trajectories" (ablation: the raw game records are the knowledge).
    knowledge_source: str = "items"

    def __post_init__(self) -> None:
        def not_an_integer_from(key: str, least: int) -> bool:  # bools are ints to Python, not here
            value = getattr(self, key)
            return isinstance(value, bool) or not isinstance(value, int) or value < least

        problems = [
            f"oel.extraction.{key}={getattr(self, key)!r} must be a positive integer"
            for key in ("num_streams", "games_per_stream", "budget_tokens", "max_item_tokens")
            if not_an_integer_from(key, 1)
        ]
        if self.max_turn_tokens is not None and not_an_integer_from("max_turn_tokens", 1):
            problems.append(
                f"oel.extraction.max_turn_tokens={self.max_turn_tokens!r} must be a positive integer or null"
            )
        if not_an_integer_from("in_context_games", 0):
            problems.append(
                f"oel.extraction.in_context_games={self.in_context_games!r} must be a non-negative integer"
            )
        if not problems and self.cut_after is not None and not 1 <= self.cut_after <= self.games_per_stream:
            problems.append(
                f"oel.extraction.cut_after={self.cut_after} must be between 1 and "
                f"oel.extraction.games_per_stream={self.games_per_stream}"
            )
        if self.knowledge_source not in KNOWLEDGE_SOURCES:
            problems.append(
                f"oel.extraction.knowledge_source={self.knowledge_source!r}; "
                f"expected one of {list(KNOWLEDGE_SOURCES)}"
            )
        if problems:
            raise ValueError("; ".join(problems))


@dataclass(frozen=True)
class ExtractionResult:
    knowledge_dir: Path
    streams: list[Path]
    pass_rate: float
    in_context_curve: list[float]
    items: list[int]
    wall_seconds: float
    # Each stream's (start, end) in seconds from the first stream's start: overlapping spans
    # show the streams were built concurrently.
    stream_spans: list[tuple[float, float]]


def stream_specs(config: ExtractionConfig, round: int, out_dir: Path) -> list[StreamSpec]:
    """Every stream plays the same games (different sampling seeds), fresh for each round."""
    seeds = extraction_game_seeds(config.base_seed, round, config.games_per_stream)
    probe_seeds = in_context_probe_seeds(config.base_seed, round, config.in_context_games)

    def episode(seed: int) -> EpisodeSpec:
        return EpisodeSpec(
            game=config.game,
            seed=seed,
            settings=dict(config.settings),
            mode="per_turn",
            max_turn_tokens=config.max_turn_tokens,
        )

    return [
        StreamSpec(
            round=round,
            stream=stream,
            games=[episode(s) for s in seeds],
            out_dir=str(out_dir),
            budget_tokens=config.budget_tokens,
            cut_after=config.cut_after,
            show_previous_knowledge=config.show_previous_knowledge,
            marker=config.marker,
            max_item_tokens=config.max_item_tokens,
            in_context_games=[episode(s) for s in probe_seeds],
            sampling_seed=extraction_stream_seed(config.base_seed, round),
            knowledge_source=config.knowledge_source,
        )
        for stream in range(config.num_streams)
    ]


def extraction_rows(specs: list[StreamSpec], concurrent: bool) -> list[dict[str, Any]]:
    groups = [[spec] for spec in specs] if concurrent else [specs]
    return [
        {
            "data_source": "verl_oel/extract",
            "agent_name": "oel_extract_stream",
            "prompt": [{"role": "user", "content": f"knowledge streams {[s.stream for s in group]}"}],
            "ability": "extract",
            "reward_model": {"style": "rule", "ground_truth": ""},
            "extra_info": {"index": i, "oel_streams": json.dumps([s.to_json() for s in group])},
        }
        for i, group in enumerate(groups)
    ]


def collect_extraction(out_dir: Path, config: ExtractionConfig, round: int) -> ExtractionResult:
    """Everything from disk: the stream files and each stream's per-game log."""
    streams, logs = [], []
    for index in range(config.num_streams):
        path = stream_path(out_dir, round, index)
        if not path.is_file():
            raise FileNotFoundError(f"extraction wrote no knowledge for stream {index}: {path} is missing")
        streams.append(path)
        log_path = stream_path(out_dir / "accumulated", round, index).with_suffix(".log.jsonl")
        logs.append([json.loads(line) for line in log_path.read_text().splitlines()])
    passes = [entry["won"] for log in logs for entry in log]
    curve = []
    for game_index in range(config.games_per_stream):
        probes = [log[game_index]["in_context_won"] for log in logs if game_index < len(log)]
        probes = [p for p in probes if p is not None]
        if probes:
            curve.append(sum(probes) / len(probes))
    timings = [json.loads(p.read_text()) for p in sorted((out_dir / "accumulated").rglob("*.timing.json"))]
    origin = min((t["start"] for t in timings), default=0.0)
    spans = [(t["start"] - origin, t["end"] - origin) for t in timings]
    wall = max((end for _, end in spans), default=0.0)
    return ExtractionResult(
        knowledge_dir=out_dir,
        streams=streams,
        pass_rate=sum(passes) / len(passes) if passes else 0.0,
        in_context_curve=curve,
        items=[len(load_stream(p).items) for p in streams],
        wall_seconds=wall,
        stream_spans=spans,
    )
