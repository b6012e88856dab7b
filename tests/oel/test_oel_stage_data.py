"""The rows OEL stages play and train on: seeds, splits, knowledge and the consolidation format."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from verl_oel.agent_loop.replay_loop import AGENT_NAME, SEED_KEY
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.oel.config import OELConfig
from verl_oel.oel.extraction_stage import extraction_rows, stream_specs
from verl_oel.oel.run_state import (
    CHECKPOINT,
    CONSOLIDATION,
    DEPLOYMENT,
    EVALUATION,
    EXTRACTION,
    IN_CONTEXT,
    TEACHER_REFRESH,
    RunLayout,
)
from verl_oel.oel.stage_data import (
    consolidation_rows,
    deployment_rows,
    evaluation_rows,
    online_rows,
    ood_rows,
    played_episodes,
    stage_episodes,
)

LOOP = OELConfig.from_mapping(
    {
        "rounds": 2,
        "game": "frozenlake",
        "game_settings": {"max_turns": 3},
        "deployment": {"games": 3, "max_turn_tokens": 16},
        "evaluation": {"games": 4},
    }
)
EPISODES = [
    {
        "game": "frozenlake",
        "seed": seed,
        "turn_prompts": [[{"role": "user", "content": f"{seed}/{t}"}] for t in range(3)],
    }
    for seed in (10, 11)
]


def specs(rows):
    return [EpisodeSpec.from_row(row) for row in rows]


def test_one_consolidation_row_per_turn_prompt_replayed_by_the_seeded_replay_loop():
    rows = consolidation_rows(LOOP, 1, EPISODES, ["A", "B"])
    assert [row["prompt"][0]["content"] for row in rows] == ["10/0", "10/1", "10/2", "11/0", "11/1", "11/2"]
    assert [row["extra_info"]["index"] for row in rows] == list(range(6))
    assert all(row["agent_name"] == AGENT_NAME for row in rows)
    assert all(row["oel_knowledge"] == "AB"[row["extra_info"]["oel_stream"]] for row in rows)
    seeds = [row["extra_info"][SEED_KEY] for row in rows]
    assert len(set(seeds)) == len(seeds)


def test_the_stream_and_seed_per_row_are_reproducible_and_change_with_the_round():
    first = consolidation_rows(LOOP, 1, EPISODES * 10, ["A", "B"])
    assert first == consolidation_rows(LOOP, 1, EPISODES * 10, ["A", "B"])
    assert {row["oel_knowledge"] for row in first} == {"A", "B"}
    second_round = consolidation_rows(LOOP, 2, EPISODES * 10, ["A", "B"])
    assert not {r["extra_info"][SEED_KEY] for r in first} & {r["extra_info"][SEED_KEY] for r in second_round}


def test_deployment_plays_fresh_games_each_round_and_records_them(tmp_path):
    round_1, round_2 = (specs(deployment_rows(LOOP, r, tmp_path / str(r))) for r in (1, 2))
    assert len(round_1) == len(round_2) == 3
    assert not {s.seed for s in round_1} & {s.seed for s in round_2}
    assert all(s.mode == "per_turn" and s.record_dir == str(tmp_path / "1") for s in round_1)
    assert all(s.knowledge == "" and s.max_turn_tokens == 16 for s in round_1)
    assert len({s.sampling_seed for s in round_1 + round_2}) == 6


def test_evaluation_plays_the_same_games_and_sampling_seeds_every_time_with_or_without_knowledge():
    plain, again = specs(evaluation_rows(LOOP)), specs(evaluation_rows(LOOP))
    assert plain == again and len(plain) == 4
    with_knowledge = specs(evaluation_rows(LOOP, ["K0", "K1"]))
    assert [s.knowledge for s in with_knowledge] == ["K0", "K1", "K0", "K1"]
    assert [replace(s, knowledge="") for s in with_knowledge] == plain
    deployed = {s.seed for r in (1, 2) for s in specs(deployment_rows(LOOP, r, Path("episodes")))}
    assert not deployed & {s.seed for s in plain}


def test_the_games_a_stage_plays_are_read_from_the_rows_it_writes(tmp_path):
    loop = OELConfig.from_mapping(
        {
            "rounds": 2,
            "game": "frozenlake",
            "game_settings": {"max_turns": 3},
            "deployment": {"games": 3},
            "evaluation": {"games": 4},
            "extraction": {"num_streams": 2, "games_per_stream": 3, "in_context_games": 2},
        }
    )
    layout = RunLayout(tmp_path)
    held_out = [spec.seed for spec in specs(evaluation_rows(loop))]
    for round, stage in ((0, EVALUATION), (1, IN_CONTEXT), (2, EVALUATION)):
        assert [spec.seed for spec in stage_episodes(loop, layout, round, stage)] == held_out
    deployed = stage_episodes(loop, layout, 2, DEPLOYMENT)
    rows = deployment_rows(loop, 2, layout.deployment_dir(2) / "episodes")
    assert deployed == specs(rows) and len(deployed) == 3
    streams = stream_specs(loop.extraction, 1, layout.knowledge_root(1))
    extracted = stage_episodes(loop, layout, 1, EXTRACTION)
    assert extracted == [game for s in streams for game in s.games + s.in_context_games]
    assert len(extracted) == 2 * (3 + 2)
    next_round = stage_episodes(loop, layout, 2, EXTRACTION)
    assert {spec.seed for spec in extracted} != {spec.seed for spec in next_round}
    assert all(spec.game == "frozenlake" and spec.settings == {"max_turns": 3} for spec in extracted)
    for stage in (TEACHER_REFRESH, CONSOLIDATION, CHECKPOINT):
        assert stage_episodes(loop, layout, 1, stage) == []
    assert not list(tmp_path.iterdir())  # nothing is written
    # Rows of either kind name their games; consolidation rows replay prompts and name none.
    one_row_per_all_streams = extraction_rows(streams, concurrent=False)
    assert played_episodes(one_row_per_all_streams) == extracted
    assert played_episodes(consolidation_rows(loop, 1, EPISODES, ["A"])) == []


def test_ood_games_are_the_same_every_round_and_share_no_seed_with_the_held_out_games(tmp_path):
    loop = OELConfig.from_mapping(
        {
            "rounds": 2,
            "game": "hidden-rule",
            "game_settings": {"family": "ship"},
            "evaluation": {"games": 4},
            "ood": {
                "games": [
                    {
                        "name": "river",
                        "game": "hidden-rule",
                        "game_settings": {"family": "river"},
                        "num_games": 3,
                    },
                    {"name": "lake", "game": "frozenlake", "num_games": 2, "seed": 5},
                ]
            },
        }
    )
    river, lake = specs(ood_rows(loop, 0)), specs(ood_rows(loop, 1))
    assert river == specs(ood_rows(loop, 0)) and len(river) == 3 and len(lake) == 2
    assert all(s.settings == {"family": "river"} and s.knowledge == "" for s in river)
    assert all(s.game == "frozenlake" for s in lake)
    held_out = specs(evaluation_rows(loop))
    sampling = [s.sampling_seed for s in held_out + river + lake]
    assert len(set(sampling)) == len(sampling)
    # Generated ahead with the evaluation stage's games (each round's and the base's), never the teacher's.
    layout = RunLayout(tmp_path)
    for round in (0, 2):
        assert stage_episodes(loop, layout, round, EVALUATION) == held_out + river + lake
    assert stage_episodes(loop, layout, 1, IN_CONTEXT) == held_out


def test_online_rows_carry_the_real_opening_prompt_and_one_stream_each(tmp_path):
    """The teacher's prompt is built from a row's prompt column: in the online mode it must be the prompt
    the game agent loop opens the episode with (game rows elsewhere carry a placeholder)."""
    from verl_oel.agent_loop.game_loop import opening_messages
    from verl_oel.envs import make_game

    loop = replace(LOOP, mode="online")
    rows = online_rows(loop, 2, ["A", "B"])
    assert len(rows) == loop.deployment.games == 3
    played = specs(rows)
    assert all(s.mode == "conversation" and s.knowledge == "" and s.max_turn_tokens == 16 for s in played)
    # The replay mode's deployment games of the round, with consolidation's sampling seeds.
    deployed = specs(deployment_rows(LOOP, 2, tmp_path))
    assert [s.seed for s in played] == [s.seed for s in deployed]
    assert not {s.sampling_seed for s in played} & {s.sampling_seed for s in deployed}
    assert [s.sampling_seed for s in played] == [
        r["extra_info"][SEED_KEY] for r in consolidation_rows(LOOP, 2, EPISODES, ["A", "B"])[:3]
    ]
    for row, spec in zip(rows, played, strict=True):
        game = make_game(spec.game, **spec.settings)
        game.reset(spec.seed)
        assert row["prompt"] == opening_messages(game.instruction, game.turn_prompt(), "")
        assert row["oel_knowledge"] == "AB"[row["extra_info"]["oel_stream"]]
    assert online_rows(loop, 2, ["A", "B"]) == rows
    assert stage_episodes(loop, RunLayout(tmp_path), 2, DEPLOYMENT) == played
