"""The prompts the warm-up trains on, built as the pipeline builds them, and their token ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import transformers

from verl_oel.envs.hidden_rule import (
    HiddenRuleGame,
)
from verl_oel.knowledge import GameRecord, GameTurn, build_extraction_messages
from verl_oel.knowledge.injection import with_knowledge


def game_messages(game: HiddenRuleGame, knowledge: str) -> list[dict[str, str]]:
    """The per-turn prompt of ``verl_oel.agent_loop.game_loop.opening_messages`` (copied here: that
    module imports verl): instruction as system, turn prompt as user, knowledge by ``with_knowledge``."""
    messages = [
        {"role": "system", "content": game.instruction},
        {"role": "user", "content": game.turn_prompt()},
    ]
    return with_knowledge(messages, knowledge)


def extraction_messages(
    instruction: str,
    observations: Sequence[str],
    replies: Sequence[str],
    won: bool,
    reason: str,
    knowledge: str,
) -> list[dict[str, str]]:
    """The extraction prompt as ``verl_oel.agent_loop.extraction_loop`` builds it: the record pairs each
    observation the game showed before a reply (the first observation, then each answer) with that reply."""
    turns = [GameTurn(observation=o, reply=r) for o, r in zip(observations, replies, strict=False)]
    record = GameRecord(instructions=instruction, turns=turns, won=won, reason=reason)
    return build_extraction_messages(record, knowledge)


def prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict | transformers.BatchEncoding) else ids)


def reply_ids(tokenizer: Any, reply: str) -> list[int]:
    return tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]
