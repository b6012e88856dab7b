"""verl's real trainer plays text games through the ``oel_game`` agent loop on CPU.

One GRPO launch trains on both games at once (their rows interleaved, so every batch holds both) with
verl's v0 trainer, the one the GRPO baseline recipe uses; verl dumps every rollout, so each game's
episodes are checked on their own. (The random tiny model wins no game, so GRPO's advantages are 0 and
the weights do not move: the update and the weight sync are checked by ``test_verl_grpo_cpu.py``, whose
reward varies.) One ``verl-oel eval`` launch plays held-out games with knowledge
and its dumped prompts must show the knowledge where the agent loop puts it.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oel_testing import run_verl_oel, train_and_read_metrics

from verl_oel.atomic_io import write_parquet_atomic
from verl_oel.data.games import GameDataSpec, game_rows

pytestmark = pytest.mark.verl

GAMES = {
    "frozenlake": GameDataSpec(game="frozenlake", sizes={"train": 4}, max_turn_tokens=24),
    "tw-coin_collector": GameDataSpec(
        game="tw-coin_collector",
        settings={"level": 1, "max_turns": 4},
        sizes={"train": 4},
        max_turn_tokens=16,
    ),
}
STEPS = 2
BATCH = 4  # grpo_cpu_games' data.train_batch_size
ROLLOUTS_PER_PROMPT = 2  # its actor_rollout_ref.rollout.n


def _interleaved_rows() -> list[dict]:
    per_game = [game_rows(spec, "train") for spec in GAMES.values()]
    return [row for rows in zip(*per_game, strict=True) for row in rows]


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory, tiny_model_dir) -> tuple[dict[int, dict], list[dict]]:
    """Two GRPO steps over both games; returns verl's per-step metrics and its dumped rollouts."""
    tmp_path = tmp_path_factory.mktemp("grpo_games")
    train = write_parquet_atomic(_interleaved_rows(), tmp_path / "train.parquet")
    steps = train_and_read_metrics(
        tmp_path,
        "grpo_cpu_games",
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"data.train_files={train}",
            f"data.val_files={train}",
            f"trainer.total_training_steps={STEPS}",
            "trainer.use_v1=false",
            f"trainer.rollout_data_dir={tmp_path}/rollouts",
        ],
        env={"VERL_OEL_CACHE": str(tmp_path / "cache")},
    )
    rollouts = [
        json.loads(line)
        for path in sorted((tmp_path / "rollouts").glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return steps, rollouts


def _game_of(prompt: str) -> str:
    """Which game a dumped prompt belongs to, from its instruction text."""
    matches = [name for name, spec in GAMES.items() if _instruction(spec) in prompt]
    assert len(matches) == 1, (matches, prompt[:300])
    return matches[0]


def _instruction(spec: GameDataSpec) -> str:
    from verl_oel.envs import make_game

    return make_game(spec.game, **spec.settings).instruction.splitlines()[0]


def test_grpo_trains_on_both_games_through_the_game_agent_loop(grpo_run):
    steps, rollouts = grpo_run
    assert sorted(steps) == list(range(1, STEPS + 1))
    assert len(rollouts) == STEPS * BATCH * ROLLOUTS_PER_PROMPT
    by_game: dict[str, list[dict]] = {name: [] for name in GAMES}
    for rollout in rollouts:
        by_game[_game_of(rollout["input"])].append(rollout)
    for name, played in by_game.items():
        # Every batch holds both games, half each.
        assert len(played) == len(rollouts) // len(GAMES), name
        # Multi-turn episodes: some last more than one turn, and rewards are passes (0 or 1).
        assert max(r["turns"] for r in played) > 1, name
        assert {r["score"] for r in played} <= {0.0, 1.0}, name


def test_eval_with_knowledge_plays_prompts_that_hold_it(tmp_path, tiny_model_dir):
    item = "EXPERIENCE ITEM: move right first, then down."
    knowledge = tmp_path / "knowledge.md"
    knowledge.write_text(f"- {item}\n")
    out = tmp_path / "eval"
    proc = run_verl_oel(
        [
            "eval",
            "--model",
            str(tiny_model_dir),
            "--game",
            "frozenlake",
            "--num-games",
            "4",
            "--max-turn-tokens",
            "16",
            "--knowledge",
            str(knowledge),
            "--out",
            str(out),
            f"trainer.validation_data_dir={tmp_path}/played",
        ]
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    assert "pass rate" in proc.stdout
    result = json.loads((out / "eval.json").read_text())
    played = [
        json.loads(line)
        for path in Path(tmp_path, "played").glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert len(played) == result["num_games"] == 4
    # Every played prompt carries the knowledge, inside the first user message (after the system turn).
    for game in played:
        assert item in game["input"], game["input"][:500]
        assert game["input"].index(item) > game["input"].index(_instruction(GAMES["frozenlake"]))
    assert result["with_knowledge"] is True
    # The eval's figures are the played games' own: pass rate = mean score of the dumped games.
    assert result["pass_rate"] == pytest.approx(sum(g["score"] for g in played) / len(played))
    assert 0 < result["tokens_per_turn"] <= 16
