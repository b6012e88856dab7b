"""What one dataset row asks the game agent loop to play, and how it is stored in parquet.

The spec travels in the row's ``extra_info["oel_game"]`` as a JSON string: parquet keeps one
schema per column, and game settings differ between families.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

MODES = ("conversation", "per_turn")


@dataclass(frozen=True)
class EpisodeSpec:
    """One episode: which game, which seed, how the model sees it.

    ``mode``: ``conversation`` keeps one growing token sequence (model tokens mask 1,
    observations mask 0) and is what RL trains on; ``per_turn`` is the paper's deployment
    mode, where every turn is a fresh prompt holding the game log so far and each turn's
    prompt is recorded for consolidation. ``knowledge`` (may be empty) is put into the first
    user message (``verl_oel.knowledge.injection.with_knowledge``, where the consolidation
    teacher reads it too), for evaluation with knowledge in context. ``record_dir`` (per-turn
    mode only): the loop also writes the episode's turn prompts and outcome to
    ``record_dir/episode_{seed}.json``, the way deployment data leaves verl's validation
    pass, whose outputs the driver never sees. ``sampling_seed``: every generate call of the
    episode samples with this vLLM seed (turn t with ``sampling_seed + t``), so the same model
    plays the same episode whatever else the server is doing: what makes a resumed OEL run
    reproduce an uninterrupted one. None: the server's own random stream.
    """

    game: str
    seed: int
    settings: dict[str, Any] = field(default_factory=dict)
    mode: str = "conversation"
    knowledge: str = ""
    max_turn_tokens: int | None = None
    record_dir: str | None = None
    sampling_seed: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"oel_game.mode={self.mode!r}; expected one of {', '.join(MODES)}")
        if self.max_turn_tokens is not None and self.max_turn_tokens < 1:
            raise ValueError(f"oel_game.max_turn_tokens must be positive, got {self.max_turn_tokens}")
        if self.record_dir is not None and self.mode != "per_turn":
            raise ValueError("oel_game.record_dir records per-turn prompts: it needs mode='per_turn'")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EpisodeSpec:
        data = json.loads(text)
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"oel_game: unknown key(s) {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> EpisodeSpec:
        extra_info = row.get("extra_info") or {}
        if "oel_game" not in extra_info:
            raise KeyError(
                "dataset row has no extra_info['oel_game']: write game data with `verl-oel make-data`"
            )
        return cls.from_json(extra_info["oel_game"])
