"""The derived seeds, pinned to the values the code gave before they moved to ``verl_oel.seeds``.

Every measured result was played and sampled with these; a change here changes what every run does, and
a resumed run would no longer match the runs it is compared with.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.oel.config import OELConfig
from verl_oel.oel.extraction_stage import ExtractionConfig, stream_specs
from verl_oel.oel.stage_data import consolidation_rows, deployment_rows, evaluation_rows
from verl_oel.seeds import (
    STAGE_PURPOSES,
    extraction_request_seed,
    game_seeds,
    stage_sampling_seed,
    turn_seed,
)


def test_game_seeds_of_each_split():
    assert game_seeds("test", 3, 0) == [2_000_000, 2_000_001, 2_000_002]
    assert game_seeds("extract", 2, 5) == [28_000_000, 28_000_001]
    assert game_seeds("deploy", 2, 7) == [39_000_000, 39_000_001]


def test_stage_sampling_seeds():
    assert [
        stage_sampling_seed(0, *key)
        for key in [("evaluation", 0, 0), ("deployment", 2, 5), ("consolidation", 3, 17)]
    ] == [
        1_000_000_000,
        2_002_000_500,
        3_003_001_700,
    ]
    assert stage_sampling_seed(3, "evaluation", 0, 0) == 25_000_000_000
    assert stage_sampling_seed(3, "consolidation", 3, 17) == 27_003_001_700
    assert turn_seed(2_002_000_500, 3) == 2_002_000_503


def test_extraction_seeds_as_the_stage_derives_them():
    config = ExtractionConfig(
        game="frozenlake", num_streams=2, games_per_stream=3, in_context_games=2, base_seed=4
    )
    specs = stream_specs(config, 2, Path("/unused"))
    assert [spec.sampling_seed for spec in specs] == [6, 6]
    assert [game.seed for game in specs[1].games] == [23_000_003, 23_000_004, 23_000_005]
    assert [game.seed for game in specs[1].in_context_games] == [79_214_000_000, 79_214_000_001]
    assert [extraction_request_seed(6, stream, index) for stream in (0, 1) for index in (0, 2)] == [
        6_000_018,
        6_000_020,
        6_010_025,
        6_010_027,
    ]


def test_stage_rows_carry_the_pinned_seeds(tmp_path):
    loop = OELConfig.from_mapping(
        {
            "rounds": 2,
            "game": "frozenlake",
            "seed": 3,
            "deployment": {"games": 2},
            "evaluation": {"games": 2, "seed": 1},
        }
    )
    specs = [
        EpisodeSpec.from_json(row["extra_info"]["oel_game"]) for row in deployment_rows(loop, 2, tmp_path)
    ]
    assert [(spec.seed, spec.sampling_seed) for spec in specs] == [
        (19_000_002, 26_002_000_000),
        (19_000_003, 26_002_000_100),
    ]
    specs = [EpisodeSpec.from_json(row["extra_info"]["oel_game"]) for row in evaluation_rows(loop, "")]
    assert [(spec.seed, spec.sampling_seed) for spec in specs] == [
        (7_000_000, 25_000_000_000),
        (7_000_001, 25_000_000_100),
    ]
    episode = {"game": "frozenlake", "seed": 5, "turn_prompts": [[{"role": "user", "content": "a"}]] * 2}
    rows = consolidation_rows(loop, 2, [episode], ["k0", "k1", "k2"])
    assert [(row["extra_info"]["oel_sampling_seed"], row["extra_info"]["oel_stream"]) for row in rows] == [
        (27_002_000_000, 2),
        (27_002_000_100, 1),
    ]


@pytest.mark.parametrize("purpose", sorted(STAGE_PURPOSES))
def test_no_two_purposes_share_a_sampling_seed(purpose):
    others = {p for p in STAGE_PURPOSES if p != purpose}

    def seeds(purposes):
        grid = [(p, r, i, t) for p in purposes for r in range(3) for i in range(50) for t in range(10)]
        return {stage_sampling_seed(0, p, r, i) + t for p, r, i, t in grid}

    assert not seeds([purpose]) & seeds(others)


@pytest.mark.parametrize("base_seed", [0, 7])
def test_the_splits_never_share_a_game_at_their_largest(base_seed):
    """Held-out games are never trained, extracted or deployed on: every split's whole block is disjoint
    from every other's, for the same and for neighbouring base seeds (runs with seeds 0..2 side by side)."""
    from verl_oel.seeds import SPLIT_OFFSETS, SPLIT_STRIDE

    blocks = {
        (seed, split): set(game_seeds(split, SPLIT_STRIDE, seed))
        for seed in (base_seed, base_seed + 1)
        for split in SPLIT_OFFSETS
    }
    seen: set[int] = set()
    for block in blocks.values():
        assert len(block) == SPLIT_STRIDE and not block & seen
        seen |= block
    with pytest.raises(ValueError, match="exceed the per-split block"):
        game_seeds("test", SPLIT_STRIDE + 1, base_seed)


def test_every_extraction_request_of_a_paper_sized_round_samples_with_its_own_seed():
    """oel_frozenlake_qwen3_4b's extraction: 10 streams of 32 games, 3 rounds; no two requests of a run
    share a vLLM seed, within a round or across rounds, and none is a stage row's seed."""
    from verl_oel.seeds import extraction_stream_seed

    seeds = [
        extraction_request_seed(extraction_stream_seed(0, round), stream, game)
        for round in (1, 2, 3)
        for stream in range(10)
        for game in range(32)
    ]
    assert len(set(seeds)) == len(seeds) == 3 * 10 * 32
    stage_rows = {
        turn_seed(stage_sampling_seed(0, purpose, round, index), turn)
        for purpose in ("evaluation", "deployment", "consolidation")
        for round in (0, 1, 2, 3)
        for index in range(200)
        for turn in range(5)
    }
    assert not set(seeds) & stage_rows
