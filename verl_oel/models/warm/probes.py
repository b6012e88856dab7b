"""Measuring the warm model's skills with transformers (tests and reports): play games, extract rules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from verl_oel.envs import make_game
from verl_oel.models.warm.prompts import extraction_messages, game_messages, prompt_ids
from verl_oel.models.warm.spec import CORRIDOR_GAME, GAME

EVAL_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
GREEDY = {"do_sample": False}


def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    sampling: dict[str, Any],
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Replies to chat prompts with transformers' generate (left-padded batches), decoded as the loop does."""
    replies: list[str] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for first in range(0, len(prompts), batch_size):
            chunk = [prompt_ids(tokenizer, messages) for messages in prompts[first : first + batch_size]]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            replies += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return replies


def play_games(
    model: Any,
    tokenizer: Any,
    family: str,
    seeds: Sequence[int],
    knowledge: str = "",
    sampling: dict[str, Any] | None = None,
    num_doors: int = 4,
    max_new_tokens: int = 16,
) -> list[dict[str, Any]]:
    """One-turn hidden-rule games played by the model; each result holds what extraction needs."""
    games = []
    for seed in seeds:
        game = make_game(GAME, family=family, num_doors=num_doors)
        games.append((game, game.reset(seed)))
    prompts = [game_messages(game, knowledge) for game, _ in games]
    replies = generate_replies(model, tokenizer, prompts, sampling or EVAL_SAMPLING, max_new_tokens)
    results = []
    for (game, first), reply in zip(games, replies, strict=True):
        result = game.step(reply)
        results.append(
            {
                "instruction": game.instruction,
                "observations": [first, result.observation],
                "replies": [reply],
                "won": result.outcome.won,
                "reason": result.outcome.reason,
                "invalid": result.invalid,
            }
        )
        game.close()
    return results


def extract_replies(
    model: Any,
    tokenizer: Any,
    played: Sequence[dict[str, Any]],
    knowledge: str = "",
    sampling: dict[str, Any] | None = None,
    max_new_tokens: int = 24,
) -> list[str]:
    """The model's extraction replies for played games (see ``play_games``), with ``knowledge`` so far."""
    prompts = [
        extraction_messages(
            p["instruction"], p["observations"], p["replies"], p["won"], p["reason"], knowledge
        )
        for p in played
    ]
    return generate_replies(model, tokenizer, prompts, sampling or EVAL_SAMPLING, max_new_tokens)


def play_corridor_games(
    model: Any,
    tokenizer: Any,
    family: str,
    seeds: Sequence[int],
    knowledge: str = "",
    sampling: dict[str, Any] | None = None,
    max_new_tokens: int = 8,
    **settings: Any,
) -> list[dict[str, Any]]:
    """Whole ``hidden-rule-corridor`` games played turn by turn (the loop's per-turn prompts, every running
    game's turn in one batch; turn ``t`` samples with seed ``t``); each result as ``play_games``' plus
    ``turns`` and ``invalid_turns``."""
    games = [make_game(CORRIDOR_GAME, family=family, **settings) for _ in seeds]
    observations = [[game.reset(seed)] for game, seed in zip(games, seeds, strict=True)]
    replies: list[list[str]] = [[] for _ in games]
    invalid = [0 for _ in games]
    turn = 0
    while running := [i for i, game in enumerate(games) if game.outcome is None]:
        prompts = [game_messages(games[i], knowledge) for i in running]
        answers = generate_replies(model, tokenizer, prompts, sampling or EVAL_SAMPLING, max_new_tokens, turn)
        for i, reply in zip(running, answers, strict=True):
            result = games[i].step(reply)
            observations[i].append(result.observation)
            replies[i].append(reply)
            invalid[i] += result.invalid
        turn += 1
    results = []
    for game, seen, said, invalid_turns in zip(games, observations, replies, invalid, strict=True):
        results.append(
            {
                "instruction": game.instruction,
                "observations": seen,
                "replies": said,
                "won": game.outcome.won,
                "reason": game.outcome.reason,
                "turns": len(game.history),
                "invalid_turns": invalid_turns,
            }
        )
        game.close()
    return results
