"""A stage's games generated ahead of play, in parallel worker processes, so no GPU waits on them.

A family whose games are generated on first play (`TextGame.generates_games`: TextWorld compiles each
game with Inform7, about a second) would otherwise build them one by one inside the rollout while the
GPUs idle. `GameGenerator` builds them beforehand in a pool of processes, through the game's own
`game_file(seed)`, so every file lands exactly where the game will open it (same cache key, same
cache folder: `settings.cache_dir`, else `$VERL_OEL_CACHE`, read in the worker from the environment
it inherits) and is written the same atomic way (`cached_game_file`: a game built twice at once is
published once, whole). Games are deterministic from (family, settings, seed), so generating them
early, twice or after a resume changes nothing a stage computes.

The workers are started with ``spawn``, never ``fork``: the caller (verl's trainer) holds Ray's and
torch's threads, which a forked child would inherit mid-state. As with any spawned pool, each worker
imports the caller's main module, which must not act on import (``if __name__ == "__main__":``; Ray's
worker and verl's ``main_ppo`` are such modules).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import multiprocessing
import os
import signal
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from verl_oel.envs.base import TextGame, make_game

_PR_SET_PDEATHSIG = 1  # linux/prctl.h

DEFAULT_MAX_WORKERS = 8
"""The default pool size is this many workers, or fewer on a machine with fewer cores."""


def default_workers() -> int:
    """``min(8, the cores this process may run on)``."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return min(DEFAULT_MAX_WORKERS, cores)


class PlayedGame(Protocol):
    """What names one game: an `EpisodeSpec` (a stage's row) has these fields."""

    game: str
    settings: Mapping[str, Any]
    seed: int


class GameGenerationError(RuntimeError):
    """A game that could not be generated; the message names its family, settings and seed."""


@dataclass(frozen=True)
class GameToGenerate:
    """One distinct game to generate, and where its family caches it."""

    game: str
    settings: dict[str, Any]
    seed: int
    path: Path

    def describe(self) -> str:
        return _describe(self)


def _describe(game: PlayedGame) -> str:
    settings = json.dumps(dict(game.settings), sort_keys=True)
    return f"game {game.game!r} with settings {settings} and seed {game.seed}"


def games_to_generate(games: Iterable[PlayedGame]) -> list[GameToGenerate]:
    """The distinct games among ``games`` whose family generates them (`TextGame.generates_games`), in
    first-seen order. Two entries are one game when their family caches them at the same path (settings
    that only change how a game is played, like the turn limit, are not part of the game)."""
    families: dict[tuple[str, str], TextGame] = {}
    distinct: dict[Path, GameToGenerate] = {}
    for played in games:
        settings = dict(played.settings)
        family_key = (played.game, json.dumps(settings, sort_keys=True))
        if family_key not in families:
            try:
                families[family_key] = make_game(played.game, **settings)
            except (TypeError, ValueError) as error:
                raise GameGenerationError(f"cannot generate {_describe(played)}: {error}") from error
        family = families[family_key]
        if not family.generates_games:
            continue
        path = family.cached_game_path(played.seed)
        if path not in distinct:
            distinct[path] = GameToGenerate(played.game, settings, played.seed, path)
    return list(distinct.values())


def _exit_with_the_parent(parent: int) -> None:
    """In a worker: be killed when the process that started the pool dies (Linux), so a run killed with
    ``kill -9`` leaves no worker behind; a game cut off mid-build was never published."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: an orphaned worker idles once its game is done
        pass
    if os.getppid() != parent:  # the parent died before the signal was asked for
        os._exit(1)


def _generate(game: str, settings: dict[str, Any], seed: int) -> tuple[bool, float]:
    """In a worker: generate one game through the family's own cache; returns (built here, seconds)."""
    instance = make_game(game, **settings)
    started = time.monotonic()
    # Another process (the rollout, another pool) may have published it since it was submitted.
    built = not instance.cached_game_path(seed).is_file()
    instance.game_file(seed)
    return built, time.monotonic() - started


@dataclass(frozen=True)
class GenerationReport:
    """What getting one stage's games ready took.

    ``generated``: games this stage's batch built; ``cached``: the others, already on disk or built for
    an earlier batch (``generated + cached`` is the stage's distinct generated-ahead games);
    ``generation_s``: the workers' seconds spent building this batch's games, summed over workers (the
    rollout would have spent them); ``wait_s``: how long the stage waited for its games.
    """

    generated: int
    cached: int
    generation_s: float
    wait_s: float

    def summary(self) -> dict[str, int | float]:
        """The figures a stage summary carries."""
        return {
            "games_generated": self.generated,
            "games_cached": self.cached,
            "game_generation_s": round(self.generation_s, 1),
            "game_generation_wait_s": round(self.wait_s, 1),
        }


@dataclass
class GenerationBatch:
    """One stage's games as submitted: the futures it owns and the games it waits for on others' behalf."""

    owned: list[tuple[GameToGenerate, Future]] = field(default_factory=list)
    shared: list[tuple[GameToGenerate, Future]] = field(default_factory=list)
    cached: int = 0

    def __len__(self) -> int:
        return len(self.owned) + len(self.shared) + self.cached


class GameGenerator:
    """A pool of ``workers`` processes generating games ahead of play.

    `submit` a stage's games as early as possible (it returns at once; the pool works in submission
    order), `wait` for them when the stage starts. The pool starts with the first game to build, so a
    run of games that generate nothing starts no process. Use as a context manager, or `close`.
    """

    def __init__(self, workers: int) -> None:
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"workers={workers!r} must be a positive integer")
        self.workers = workers
        self._executor: ProcessPoolExecutor | None = None
        self._submitted: dict[Path, Future] = {}

    def submit(self, games: Iterable[PlayedGame]) -> GenerationBatch:
        """Queue the distinct games among ``games`` that are not cached yet; returns at once."""
        batch = GenerationBatch()
        for game in games_to_generate(games):
            if game.path in self._submitted:
                batch.shared.append((game, self._submitted[game.path]))
            elif game.path.is_file():
                batch.cached += 1
            else:
                future = self._pool().submit(_generate, game.game, game.settings, game.seed)
                self._submitted[game.path] = future
                batch.owned.append((game, future))
        return batch

    def wait(self, batch: GenerationBatch) -> GenerationReport:
        """Block until every game of ``batch`` is on disk; a failed one raises `GameGenerationError`."""
        started = time.monotonic()
        generated, cached, seconds = 0, batch.cached, 0.0
        for game, future in batch.owned:
            built, spent = self._result(game, future)
            generated += built
            cached += not built
            seconds += spent if built else 0.0
        for game, future in batch.shared:
            self._result(game, future)
            cached += 1
        return GenerationReport(generated, cached, seconds, time.monotonic() - started)

    def close(self) -> None:
        """Stop the pool: queued games are dropped, running ones finish (about a second)."""
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None
        self._submitted.clear()  # dropped games are queued again by a later submit

    def __enter__(self) -> GameGenerator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _pool(self) -> ProcessPoolExecutor:
        if self._executor is None:
            self._executor = ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_the_parent,
                initargs=(os.getpid(),),
            )
        return self._executor

    @staticmethod
    def _result(game: GameToGenerate, future: Future) -> tuple[bool, float]:
        try:
            return future.result()
        except Exception as error:  # the worker's own error (its traceback is chained), or a dead pool
            raise GameGenerationError(
                f"generating {game.describe()} failed: {type(error).__name__}: {error}"
            ) from error


def generate_games(games: Iterable[PlayedGame], workers: int) -> GenerationReport | None:
    """Generate now, in ``workers`` processes, the games among ``games`` that are generated on first play
    and not cached yet; None (nothing done) when ``workers`` is 0."""
    if workers == 0:
        return None
    with GameGenerator(workers) as generator:
        return generator.wait(generator.submit(games))
