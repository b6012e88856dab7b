"""The rows each OEL stage plays or trains on: pure functions of the loop's config and what is on disk.

Kept apart from the trainer (which needs verl, Ray and a model) so that the seeds, splits and prompt
formats every stage uses are testable in milliseconds. Every row that samples carries its own vLLM seed
(``EpisodeSpec.sampling_seed``, ``oel_sampling_seed``), derived from the run's seed, the round and the
row (``verl_oel.seeds``): a stage rerun after a kill samples exactly what the killed attempt would have.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from verl_oel.agent_loop import ifbench_loop
from verl_oel.agent_loop.extraction_loop import StreamSpec
from verl_oel.agent_loop.replay_loop import AGENT_NAME as REPLAY_AGENT
from verl_oel.agent_loop.replay_loop import SEED_KEY
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.data.games import GameDataSpec, game_rows
from verl_oel.ifbench import select_prompts
from verl_oel.oel.config import OELConfig
from verl_oel.oel.extraction_stage import extraction_rows, stream_specs
from verl_oel.oel.run_state import DEPLOYMENT, EVALUATION, EXTRACTION, IN_CONTEXT, RunLayout
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


def ood_rows(loop: OELConfig, index: int) -> list[dict[str, Any]]:
    """Entry ``index`` of ``oel.ood.games``: its test-split games, without knowledge, with the same seeds
    and sampling seeds every round (each entry its own block), so rounds differ only by the model."""
    entry = loop.ood.games[index]
    data_spec = GameDataSpec(
        game=entry.game,
        settings=entry.game_settings,
        base_seed=entry.seed,
        sizes={"test": entry.num_games},
        mode="per_turn",
        max_turn_tokens=loop.deployment.max_turn_tokens,
    )
    rows = game_rows(data_spec, "test")
    return _seeded(rows, lambda row: stage_sampling_seed(loop.seed, "ood", index, row))


IFBENCH_SOURCE = "verl_oel/ifbench"
"""The data source of IFBench rows: verl logs their validation metrics under it."""


def ifbench_rows(loop: OELConfig, max_tokens: int, record_dir: Path) -> list[dict[str, Any]]:
    """The ``oel.ood.ifbench_prompts`` IFBench prompts, one single-turn row each, answered non-thinking by
    the ``oel_ifbench`` loop (which saves each reply under ``record_dir``), with the same sampling seeds
    every round. The reward reads the prompt's instructions from ``ground_truth`` (verl's answer key)."""
    rows = []
    for index, prompt in enumerate(select_prompts(loop.ood.ifbench_prompts)):
        rows.append(
            {
                "data_source": IFBENCH_SOURCE,
                "agent_name": ifbench_loop.AGENT_NAME,
                "prompt": [{"role": "user", "content": prompt.prompt}],
                "ability": "instruction_following",
                "reward_model": {"style": "rule", "ground_truth": prompt.to_json()},
                "extra_info": {
                    "index": index,
                    ifbench_loop.KEY: prompt.key,
                    ifbench_loop.MAX_TOKENS_KEY: max_tokens,
                    ifbench_loop.RECORD_DIR_KEY: str(record_dir),
                    SEED_KEY: stage_sampling_seed(loop.seed, "ifbench", 0, index),
                },
            }
        )
    return rows


def _fresh_games(loop: OELConfig, round: int, mode: str) -> list[dict[str, Any]]:
    """The round's ``oel.deployment.games`` fresh games (each round its own block of the ``deploy``
    split's seeds), without knowledge, played in ``mode``."""
    games = loop.deployment.games
    data_spec = GameDataSpec(
        game=loop.game,
        settings=loop.game_settings,
        base_seed=loop.seed,
        sizes={"deploy": games * round},
        mode=mode,
        max_turn_tokens=loop.deployment.max_turn_tokens,
    )
    return game_rows(data_spec, "deploy")[games * (round - 1) :]


def deployment_rows(loop: OELConfig, round: int, record_dir: Path) -> list[dict[str, Any]]:
    """Fresh deployment games each round, played without knowledge in the per-turn mode; the agent loop
    saves every episode's turn prompts under ``record_dir``."""
    return _seeded(
        _fresh_games(loop, round, "per_turn"),
        lambda index: stage_sampling_seed(loop.seed, "deployment", round, index),
        record_dir=str(record_dir),
    )


def online_games(loop: OELConfig, round: int) -> list[dict[str, Any]]:
    """``oel.mode: online``: the round's ``oel.deployment.games`` fresh games, which its consolidation plays
    (each step ``data.train_batch_size`` rows, in order, starting over when the steps need more rows, as
    the replay mode does with its saved prompts), in the conversation mode (one sample is the whole
    episode: the model's turns with mask 1, the game's replies with mask 0), without knowledge, each row
    with its own sampling seed. Their game seeds are the replay mode's deployment games."""
    rows = _fresh_games(loop, round, "conversation")
    return _seeded(rows, lambda index: stage_sampling_seed(loop.seed, "consolidation", round, index))


def online_rows(loop: OELConfig, round: int, knowledge: list[str]) -> list[dict[str, Any]]:
    """``online_games`` as consolidation's training rows: each row's ``prompt`` is the episode's real
    opening prompt (the one the agent loop builds; the teacher's prompt is built from it) and its
    ``oel_knowledge`` the stream the teacher reads, picked per row as in the replay mode."""
    from verl_oel.agent_loop.game_loop import opening_messages
    from verl_oel.envs import make_game

    rng = consolidation_stream_rng(loop.seed, round)
    rows = online_games(loop, round)
    for row in rows:
        spec = EpisodeSpec.from_row(row)
        game = make_game(spec.game, **spec.settings)
        try:
            game.reset(spec.seed)
            row["prompt"] = opening_messages(game.instruction, game.turn_prompt(), spec.knowledge)
        finally:
            game.close()
        stream = rng.randrange(len(knowledge))
        row["extra_info"]["oel_stream"] = stream
        row["oel_knowledge"] = knowledge[stream]
    return rows


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


def played_episodes(rows: Iterable[dict[str, Any]]) -> list[EpisodeSpec]:
    """Every game episode the rows' agent loops open, in row order: a game row's ``oel_game``, an
    extraction row's streams' games and in-context probes. Consolidation rows replay prompts: none."""
    episodes = []
    for row in rows:
        extra_info = row.get("extra_info") or {}
        if "oel_game" in extra_info:
            episodes.append(EpisodeSpec.from_json(extra_info["oel_game"]))
        for text in json.loads(extra_info.get("oel_streams", "[]")):
            stream = StreamSpec.from_json(text)
            episodes += stream.games + stream.in_context_games
    return episodes


def stage_episodes(loop: OELConfig, layout: RunLayout, round: int, stage: str) -> list[EpisodeSpec]:
    """The game episodes a stage plays, read from the rows the trainer writes for it, so games can be
    generated before the stage starts (``verl_oel.envs.game_generation``). Knowledge changes no game, so
    the held-out rows are built without it; stages that play no game (teacher refresh, consolidation,
    checkpoint) give none."""
    if stage == IN_CONTEXT:
        rows = evaluation_rows(loop)
    elif stage == EVALUATION:
        rows = evaluation_rows(loop) + [row for i in range(len(loop.ood.games)) for row in ood_rows(loop, i)]
    elif stage == EXTRACTION:
        specs = stream_specs(loop.extraction, round, layout.knowledge_root(round))
        rows = extraction_rows(specs, loop.extraction.concurrent)
    elif stage == DEPLOYMENT and loop.mode == "online":  # written by deployment, played by consolidation
        rows = online_games(loop, round)
    elif stage == DEPLOYMENT:
        rows = deployment_rows(loop, round, layout.deployment_dir(round) / "episodes")
    else:
        rows = []
    return played_episodes(rows)
