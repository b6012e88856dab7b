"""Every unfinished stage's games are generated ahead, and each stage waits only for its own."""

from __future__ import annotations

import pytest

from verl_oel.envs import make_game
from verl_oel.oel.config import OELConfig
from verl_oel.oel.run_state import (
    CHECKPOINT,
    CONSOLIDATION,
    DEPLOYMENT,
    EVALUATION,
    EXTRACTION,
    IN_CONTEXT,
    TEACHER_REFRESH,
    NextStage,
    RunSpec,
    RunState,
)
from verl_oel.oel.stage_data import stage_episodes
from verl_oel.oel.stage_games import StageGames

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:jericho")


def tiny_loop(game: str, **changes) -> OELConfig:
    """One round of one game per stage that plays: extraction, deployment and the held-out game."""
    return OELConfig.from_mapping(
        {
            "rounds": 1,
            "game": game,
            "extraction": {"num_streams": 1, "games_per_stream": 1},
            "deployment": {"games": 1},
            "evaluation": {"games": 1},
            "consolidation_steps": 1,
            "game_generation_workers": 2,
            **changes,
        }
    )


def open_run(run_dir, loop: OELConfig) -> RunState:
    spec = RunSpec("/models/base", rounds=loop.rounds, seed=loop.seed, skip_stages=loop.skip_stages)
    return RunState.open(run_dir, spec)


def test_the_unfinished_stages_games_are_generated_ahead_and_a_resume_finds_them(tmp_path):
    cache = tmp_path / "cache"
    loop = tiny_loop("tw-coin_collector", game_settings={"level": 1, "cache_dir": str(cache)})
    with open_run(tmp_path / "run", loop) as state:
        state.mark_done(0, EVALUATION, {"seconds": 1.0})  # a resumed run: round 0 is finished
        with StageGames(loop, state) as games:
            figures = {stage: games.wait_for(NextStage(1, stage)) for stage in state.spec.round_stages(1)}
            assert games.wait_for(NextStage(0, EVALUATION)) == {}  # done: nothing was queued for it
        for stage in (TEACHER_REFRESH, CONSOLIDATION, CHECKPOINT):
            assert figures[stage] == {}  # they play no game
        for stage in (EXTRACTION, IN_CONTEXT, DEPLOYMENT):
            assert (figures[stage]["games_generated"], figures[stage]["games_cached"]) == (1, 0), stage
            assert figures[stage]["game_generation_s"] > 0
        # The held-out game was generated for the teacher's evaluation, which runs first.
        assert (figures[EVALUATION]["games_generated"], figures[EVALUATION]["games_cached"]) == (0, 1)
        assert set(figures[EVALUATION]) == {
            "games_generated",
            "games_cached",
            "game_generation_s",
            "game_generation_wait_s",
        }

        # Exactly the games the stages will open are on disk.
        game = make_game("tw-coin_collector", level=1, cache_dir=str(cache))
        played = {
            game.cached_game_path(spec.seed)
            for stage in (EXTRACTION, IN_CONTEXT, DEPLOYMENT, EVALUATION)
            for spec in stage_episodes(loop, state.layout, 1, stage)
        }
        assert set(cache.rglob("*.z8")) == played and len(played) == 3

        # Started again (a resume), every game is found on disk and no process starts.
        with StageGames(loop, state) as again:
            assert again.wait_for(NextStage(1, DEPLOYMENT))["games_cached"] == 1
            assert again._generator._executor is None


def test_grid_games_and_zero_workers_generate_nothing(tmp_path):
    grid = tiny_loop("frozenlake")
    with open_run(tmp_path / "grid", grid) as state, StageGames(grid, state) as games:
        assert all(games.wait_for(step) == {} for step in state.plan())
        assert games._generator._executor is None
    cache = tmp_path / "cache"
    off = tiny_loop("tw-coin_collector", game_settings={"cache_dir": str(cache)}, game_generation_workers=0)
    with open_run(tmp_path / "off", off) as state, StageGames(off, state) as games:
        assert all(games.wait_for(step) == {} for step in state.plan())
    assert not cache.exists()
