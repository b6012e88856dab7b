"""Game datasets in verl's parquet format: one row per (game, seed) episode.

Train, validation and test seeds are disjoint ranges derived from one base seed; the test set
is fixed (128 seeds by default, as in the paper) so every evaluation of a run, and every run
with the same base seed, plays the same held-out games.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from verl_oel.atomic_io import write_json_atomic, write_parquet_atomic
from verl_oel.seeds import game_seeds

from .episode_spec import EpisodeSpec


@dataclass(frozen=True)
class GameDataSpec:
    game: str
    settings: dict[str, Any] = field(default_factory=dict)
    base_seed: int = 0
    sizes: dict[str, int] = field(default_factory=lambda: {"train": 256, "val": 32, "test": 128})
    mode: str = "conversation"
    knowledge: str = ""
    max_turn_tokens: int | None = None


def game_rows(spec: GameDataSpec, split: str) -> list[dict[str, Any]]:
    from verl_oel.envs import make_game

    game = make_game(spec.game, **spec.settings)  # fails here, naming a bad name or setting
    instruction = game.instruction
    rows = []
    for index, seed in enumerate(game_seeds(split, spec.sizes[split], spec.base_seed)):
        episode = EpisodeSpec(
            game=spec.game,
            seed=seed,
            settings=dict(spec.settings),
            mode=spec.mode,
            knowledge=spec.knowledge,
            max_turn_tokens=spec.max_turn_tokens,
        )
        rows.append(
            {
                "data_source": f"verl_oel/{spec.game}",
                "agent_name": "oel_game",
                # verl's dataset needs a chat prompt; the agent loop builds the real one from
                # the game, so this only names the episode (and sizes prompt filtering).
                "prompt": [
                    {"role": "system", "content": instruction},
                    {"role": "user", "content": f"seed {seed}"},
                ],
                "ability": "game",
                "reward_model": {"style": "rule", "ground_truth": ""},
                "extra_info": {"split": split, "index": index, "oel_game": episode.to_json()},
            }
        )
    return rows


def write_game_data(spec: GameDataSpec, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    written = {}
    for split, n in spec.sizes.items():
        if n > 0:
            written[split] = write_parquet_atomic(game_rows(spec, split), out_dir / f"{split}.parquet")
    write_json_atomic(
        out_dir / "dataset.json",
        {"game": spec.game, "settings": spec.settings, "base_seed": spec.base_seed, "sizes": spec.sizes},
        indent=None,
    )
    return written
