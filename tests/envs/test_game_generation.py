"""Games generated ahead of play, in parallel processes: exactly the files each game opens, counted."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.envs import make_game
from verl_oel.envs.game_generation import (
    GameGenerationError,
    GameGenerator,
    games_to_generate,
    generate_games,
)

# TextWorld silences Jericho's warning that it does not know generated games; pytest re-enables it.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:jericho")

GAME = "tw-coin_collector"
SETTINGS = {"level": 1}  # the smallest TextWorld game: about a second to compile


def coin_games(cache: Path, seeds, **play_settings) -> list[EpisodeSpec]:
    settings = {**SETTINGS, "cache_dir": str(cache), **play_settings}
    return [EpisodeSpec(game=GAME, seed=seed, settings=settings) for seed in seeds]


def grid_games(seeds) -> list[EpisodeSpec]:
    return [EpisodeSpec(game="frozenlake", seed=seed) for seed in seeds] + [
        EpisodeSpec(game="hidden-rule", seed=seed) for seed in seeds
    ]


def tree(root: Path) -> dict[str, Any]:
    """Every file under ``root`` (hidden staging folders included) by relative path, with its bytes.

    TextWorld's game.json lists the names the generator excluded in a set's order, which is the hash
    order of the process that generated it (``PYTHONHASHSEED``), so that list is compared as a set; the
    compiled game and its Inform7 source must be byte for byte the same."""
    files: dict[str, Any] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.name == "game.json":
            document = json.loads(path.read_bytes())
            grammar = document["grammar"]
            grammar["names_to_exclude"] = sorted(grammar["names_to_exclude"], key=str)
            files[str(path.relative_to(root))] = document
        elif path.is_file():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


def test_parallel_generation_writes_exactly_the_files_each_game_opens_and_counts_them(tmp_path):
    parallel, sequential = tmp_path / "parallel", tmp_path / "sequential"
    with GameGenerator(workers=2) as generator:
        # Seed 1 twice (a turn limit is not part of the game), and grid games, which generate nothing.
        first = generator.submit(
            coin_games(parallel, [0, 1]) + coin_games(parallel, [1], max_turns=7) + grid_games([0, 1])
        )
        second = generator.submit(coin_games(parallel, [1, 2]))
        assert (len(first), len(second)) == (2, 2)
        # The later batch waits for seed 1 on the earlier one's behalf and counts it as not its own.
        later = generator.wait(second)
        assert (later.generated, later.cached) == (1, 1)
        earlier = generator.wait(first)
        assert (earlier.generated, earlier.cached) == (2, 0)
        assert earlier.generation_s > 0 and earlier.wait_s >= 0
    for seed in (0, 1, 2):
        make_game(GAME, cache_dir=str(sequential), **SETTINGS).game_file(seed)
    assert tree(parallel) == tree(sequential) and len(tree(parallel)) == 9  # game.z8, .ni, .json

    # Each game opens the file generated for it, without building it again.
    opened = make_game(GAME, cache_dir=str(parallel), **SETTINGS)
    mtimes = {path: path.stat().st_mtime_ns for path in parallel.rglob("*.z8")}
    assert [opened.game_file(seed) for seed in (0, 1, 2)] == [opened.cached_game_path(s) for s in (0, 1, 2)]
    assert set(mtimes) == {opened.cached_game_path(seed) for seed in (0, 1, 2)}
    assert opened.reset(2)
    opened.close()
    assert {path: path.stat().st_mtime_ns for path in parallel.rglob("*.z8")} == mtimes

    # Games already on disk are skipped and counted (no process is started for them).
    report = generate_games(coin_games(parallel, [0, 1, 2]) + grid_games([2]), workers=2)
    assert (report.generated, report.cached, report.generation_s) == (0, 3, 0.0)
    assert report.summary() == {
        "games_generated": 0,
        "games_cached": 3,
        "game_generation_s": 0.0,
        "game_generation_wait_s": 0.0,
    }
    assert not [name for name in os.listdir(parallel) if name.startswith(".")]  # no staging left over


def test_grid_games_need_no_generation_and_start_no_process(tmp_path):
    assert games_to_generate(grid_games([0, 1, 2])) == []
    with GameGenerator(workers=2) as generator:
        batch = generator.submit(grid_games([0, 1]))
        assert len(batch) == 0 and generator._executor is None
        report = generator.wait(batch)
    assert (report.generated, report.cached, report.generation_s) == (0, 0, 0.0)


def test_de_duplication_is_by_the_cache_entry_each_game_opens(tmp_path):
    games = coin_games(tmp_path, [4, 5, 4]) + coin_games(tmp_path, [5], max_turns=3, show_admissible=False)
    distinct = games_to_generate(games)
    assert [(game.seed, game.path) for game in distinct] == [
        (seed, make_game(GAME, cache_dir=str(tmp_path), **SETTINGS).cached_game_path(seed)) for seed in (4, 5)
    ]
    other_level = games_to_generate(coin_games(tmp_path, [4], level=2))
    assert other_level[0].path != distinct[0].path
    assert not tmp_path.joinpath("tw-coin_collector").exists() and not list(tmp_path.iterdir())


def test_a_game_that_cannot_be_generated_is_named(tmp_path):
    with pytest.raises(GameGenerationError, match=r"'tw-coin_collector' .*\"level\": 1.* seed -1 failed: "):
        generate_games(coin_games(tmp_path, [-1]), workers=1)
    # Bad settings fail before any process starts, naming the setting, the game and the seed.
    bad_level = r"'tw-coin_collector' .*\"level\": 0.* seed 3: level must be"
    with pytest.raises(GameGenerationError, match=bad_level):
        generate_games(coin_games(tmp_path, [3], level=0), workers=1)
    assert not list(tmp_path.rglob("*.z8"))


def test_no_workers_generate_nothing(tmp_path):
    assert generate_games(coin_games(tmp_path / "cache", [0, 1]), workers=0) is None
    assert not (tmp_path / "cache").exists()
    for workers in (-1, 1.5, True):
        with pytest.raises(ValueError, match=r"workers=.* must be a positive integer"):
            GameGenerator(workers)
