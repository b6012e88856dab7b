"""Every seed a run derives, in one place: which games are played and how each reply is sampled.

A resumed OEL run must reproduce the uninterrupted one (``oel/run_state.py``). It does because every seed
below is a pure function of values fixed when the run starts (the recipe's ``oel.seed`` and
``oel.evaluation.seed``, the round, a row's or a game's position) and of nothing a restart changes
(the time, the process, which stages already ran, what else the vLLM server is serving). Each purpose
owns a disjoint block of integers, so no two stages or splits ever share a game or a sampling stream.

These formulas fixed every measured result: changing one changes what every run plays and samples
(``tests/test_seeds.py`` pins values).

Two kinds of seed:

- a **game seed** picks one game of a family (``TextGame.reset(seed)``): :func:`game_seeds` and the
  extraction stage's :func:`extraction_game_seeds` and :func:`in_context_probe_seeds`;
- a **sampling seed** is the vLLM ``seed`` of one generate call, so the same model gives the same reply
  for the same request: :func:`stage_sampling_seed` (evaluation, deployment, consolidation rows),
  :func:`extraction_stream_seed` and :func:`extraction_request_seed` (knowledge streams), and
  :func:`turn_seed` (each turn of a multi-turn episode);
- :func:`consolidation_stream_rng` picks which knowledge stream each consolidation row's teacher reads;
  :func:`ifbench_prompt_rng` which IFBench prompts a subsample measures.
"""

from __future__ import annotations

import random

SPLIT_STRIDE = 1_000_000
"""Each split's game seeds live in their own block of this size, so splits never overlap."""

SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2, "extract": 3, "deploy": 4}
"""The game-seed block of each split. ``extract``/``deploy``: the games OEL plays to write knowledge and to
collect deployment prompts; disjoint from the held-out ``test`` games by construction."""

STAGE_PURPOSES = {"evaluation": 1, "deployment": 2, "consolidation": 3, "ood": 4, "ifbench": 5}
"""The sampling-seed block of each stage whose rows sample with a per-row seed (``ood``: the round slot holds
the entry's index in ``oel.ood.games``, whose games are the same every round; ``ifbench``: round slot 0, the
same prompts and seeds every round)."""

_SAMPLING_BLOCK = 1_000_000
_PROBE_BASE_STRIDE = 7919  # a prime: each round's probe games start from their own base seed
_STREAM_STRIDE = 10_007
_STREAM_SEED_STRIDE = 1_000_003


def game_seeds(split: str, n: int, base_seed: int) -> list[int]:
    """The first ``n`` game seeds of ``split`` for ``base_seed``: the same list on every call and machine."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLIT_OFFSETS)}")
    if n > SPLIT_STRIDE:
        raise ValueError(f"{split}: {n} seeds exceed the per-split block of {SPLIT_STRIDE}")
    start = (base_seed * len(SPLIT_OFFSETS) + SPLIT_OFFSETS[split]) * SPLIT_STRIDE
    return list(range(start, start + n))


def extraction_game_seeds(base_seed: int, round: int, games_per_stream: int) -> list[int]:
    """The games every knowledge stream of ``round`` plays: the ``round``-th run of ``games_per_stream``
    extract seeds, so each round plays fresh games, the same ones whichever rounds ran before."""
    n = games_per_stream
    return game_seeds("extract", n * round, base_seed)[n * (round - 1) :]


def in_context_probe_seeds(base_seed: int, round: int, n: int) -> list[int]:
    """The ``n`` games played with the knowledge so far after each extraction game (the in-context curve)."""
    return game_seeds("deploy", n, base_seed + _PROBE_BASE_STRIDE * round)


def extraction_stream_seed(base_seed: int, round: int) -> int:
    """The sampling seed of ``round``'s knowledge streams (each stream's requests derive from it)."""
    return base_seed + round


def extraction_request_seed(stream_seed: int, stream: int, game_index: int) -> int:
    """The sampling seed of a stream's requests for its ``game_index``-th game: the same stream seed gives
    the same games and the same knowledge, and the streams of a round sample apart."""
    return stream_seed * _STREAM_SEED_STRIDE + stream * _STREAM_STRIDE + game_index


def stage_sampling_seed(base_seed: int, purpose: str, round: int, index: int) -> int:
    """The sampling seed of row ``index`` of ``purpose``'s rows in ``round``; unique to (run seed,
    purpose, round, row), with room for 100 turns per row (:func:`turn_seed`)."""
    return ((base_seed * 8 + STAGE_PURPOSES[purpose]) * 1000 + round) * _SAMPLING_BLOCK + index * 100


def consolidation_stream_rng(base_seed: int, round: int) -> random.Random:
    """The generator that picks, row by row, which knowledge stream the teacher reads in ``round``."""
    return random.Random(f"{base_seed}/{round}")


def ifbench_prompt_rng() -> random.Random:
    """The generator of the one fixed shuffle ``oel.ood.ifbench_prompts: N`` takes its first N prompts from:
    independent of ``oel.seed``, so runs of different seeds measure the same prompts."""
    return random.Random("ifbench")


def turn_seed(episode_seed: int, turn: int) -> int:
    """The sampling seed of turn ``turn`` of an episode sampled with ``episode_seed``."""
    return episode_seed + turn
