"""The rows each OEL stage plays or trains on: pure functions of the loop's config and what is on disk.

Kept apart from the trainer (which needs verl, Ray and a model) so that the seeds, splits and prompt
formats every stage uses are testable in milliseconds. Every row that samples carries its own vLLM seed
(``EpisodeSpec.sampling_seed``, ``oel_sampling_seed``), derived from the run's seed, the round and the
row (``verl_oel.seeds``): a stage rerun after a kill samples exactly what the killed attempt would have.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from verl_oel.agent_loop.replay_loop import AGENT_NAME as REPLAY_AGENT
from verl_oel.agent_loop.replay_loop import SEED_KEY
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.data.games import GameDataSpec, game_rows
from verl_oel.oel.config import OELConfig
from verl_oel.seeds import consolidation_stream_rng, stage_sampling_seed


def _seeded(rows: list[dict[str, Any]], seed_of_row: Any, **changes: Any) -> list[dict[str, Any]]:
    """Rewrite each game row's episode spec with its sampling seed and ``changes``."""
    for index, row in enumerate(rows):
        spec = EpisodeSpec.from_json(row["extra_info"]["oel_game"])
        spec = replace(spec, sampling_seed=seed_of_row(index), **changes)
        row["extra_info"]["oel_game"] = spec.to_json()
    return rows


def evaluation_rows(loop: OELConfig, knowledge: list[str] | None = None) -> list[dict[str, Any]]:
    """The fixed held-out games (the test split), the same seeds and sampling seeds every round, so rounds
    differ only by the model. With ``knowledge`` (one text per stream), game i reads stream i mod S, as
    the teacher's rows do."""
    data_spec = GameDataSpec(
        game=loop.game,
        settings=loop.game_settings,
        base_seed=loop.evaluation.seed,
        sizes={"test": loop.evaluation.games},
        mode="per_turn",
        max_turn_tokens=loop.deployment.max_turn_tokens,
    )
    rows = game_rows(data_spec, "test")
    for index, row in enumerate(rows):
        spec = EpisodeSpec.from_json(row["extra_info"]["oel_game"])
        text = knowledge[index % len(knowledge)] if knowledge else ""
        spec = replace(
            spec, sampling_seed=stage_sampling_seed(loop.seed, "evaluation", 0, index), knowledge=text
        )
        row["extra_info"]["oel_game"] = spec.to_json()
    return rows


def deployment_rows(loop: OELConfig, round: int, record_dir: Path) -> list[dict[str, Any]]:
    """Fresh deployment games each round (their own seed block), played without knowledge in the per-turn
    mode; the agent loop saves every episode's turn prompts under ``record_dir``."""
    games = loop.deployment.games
    data_spec = GameDataSpec(
        game=loop.game,
        settings=loop.game_settings,
        base_seed=loop.seed,
        sizes={"deploy": games * round},
        mode="per_turn",
        max_turn_tokens=loop.deployment.max_turn_tokens,
    )
    rows = game_rows(data_spec, "deploy")[games * (round - 1) :]
    return _seeded(
        rows,
        lambda index: stage_sampling_seed(loop.seed, "deployment", round, index),
        record_dir=str(record_dir),
    )


def consolidation_rows(
    loop: OELConfig, round: int, episodes: list[dict[str, Any]], knowledge: list[str]
) -> list[dict[str, Any]]:
    """One row per saved deployment turn prompt, which the student answers again (the paper's replay
    mode; ``oel_replay`` agent loop) and the teacher reads with one knowledge stream, sampled per row."""
    rng = consolidation_stream_rng(loop.seed, round)
    rows = []
    for episode in episodes:
        for turn, messages in enumerate(episode["turn_prompts"]):
            stream = rng.randrange(len(knowledge))
            index = len(rows)
            rows.append(
                {
                    "data_source": f"verl_oel/{episode['game']}",
                    "agent_name": REPLAY_AGENT,
                    "prompt": messages,
                    "ability": "consolidation",
                    "reward_model": {"style": "rule", "ground_truth": ""},
                    "extra_info": {
                        "index": index,
                        "oel_seed": episode["seed"],
                        "oel_deployment_turn": turn,
                        "oel_stream": stream,
                        SEED_KEY: stage_sampling_seed(loop.seed, "consolidation", round, index),
                    },
                    "oel_knowledge": knowledge[stream],
                }
            )
    return rows
