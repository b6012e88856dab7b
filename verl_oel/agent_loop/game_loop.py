"""``oel_game``: one text-game episode played through verl's rollout server.

Token-in/token-out: the model's sampled token ids are appended as they are (never decoded and
re-tokenized), observations are rendered by verl's continuous-token builder from chat
messages, model tokens get mask 1 and environment tokens mask 0, and the episode stops at
``rollout.response_length``. The game, not this loop, turns a reply into an action.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.experimental.agent_loop.tool_agent_loop import SPEC_DECODE_EXTRA_KEYS

from verl_oel.agent_loop.prompt_length import RefusesPromptCuts
from verl_oel.atomic_io import write_text_atomic
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.envs import TextGame, make_game
from verl_oel.knowledge.injection import with_knowledge
from verl_oel.seeds import turn_seed

AGENT_NAME = "oel_game"

# Game calls run in executor threads (TextWorld compiles Inform7, which blocks), but the game
# libraries reseed and use Python's global `random`: concurrent episodes would draw from each
# other's streams and the same seed would stop giving the same game. Steps take milliseconds,
# so one lock costs nothing that matters.
_GAME_LOCK = threading.Lock()


async def _call_game(function: Callable, *args: Any) -> Any:
    def locked() -> Any:
        with _GAME_LOCK:
            return function(*args)

    return await asyncio.get_running_loop().run_in_executor(None, locked)


def merge_rollout_fields(collected: dict[str, Any], output_fields: dict[str, Any]) -> None:
    """Fold one generate call's bookkeeping into the episode's, as verl's tool agent loop does.

    verl's trainer reads each sample's rollout bookkeeping from its extra fields (the weight
    versions that produced it as ``min_global_steps``/``max_global_steps``, speculative-decoding
    counts) and fails without them. An episode spans several calls: the first call's fields are
    kept, the newest weight version wins, and the counts add up.
    """
    if not collected:
        collected.update(output_fields)
        return
    if output_fields.get("max_global_steps") is not None:
        collected["max_global_steps"] = output_fields["max_global_steps"]
    for key in SPEC_DECODE_EXTRA_KEYS:
        if key in output_fields and key in collected:
            collected[key] = int(collected[key]) + int(output_fields[key])


def opening_messages(instruction: str, observation: str, knowledge: str) -> list[dict[str, str]]:
    """The first prompt of an episode: the game's instruction as the system message, the observation as
    the user message, with the knowledge (if any) where the consolidation teacher reads it."""
    messages = [{"role": "system", "content": instruction}, {"role": "user", "content": observation}]
    return with_knowledge(messages, knowledge)


@dataclass
class EpisodeRecord:
    """What the loop learned about one episode; goes to the reward function and the logs."""

    won: bool = False
    reason: str = ""
    turns: int = 0
    invalid_actions: int = 0
    response_tokens: list[int] = field(default_factory=list)
    truncated: bool = False
    turn_prompts: list[list[dict[str, str]]] = field(default_factory=list)
    replies: list[str] = field(default_factory=list)
    # What the game showed before each reply (the first observation, then each answer).
    observations: list[str] = field(default_factory=list)
    # verl's rollout bookkeeping over the episode's generate calls (see merge_rollout_fields).
    rollout_fields: dict[str, Any] = field(default_factory=dict)

    def extra_fields(self, spec: EpisodeSpec) -> dict[str, Any]:
        tokens = self.response_tokens
        return {
            **self.rollout_fields,
            "oel_game": spec.game,
            "oel_seed": spec.seed,
            "oel_won": self.won,
            "oel_reason": self.reason,
            "oel_turns": self.turns,
            "oel_invalid_actions": self.invalid_actions,
            "oel_tokens_per_turn": sum(tokens) / len(tokens) if tokens else 0.0,
            "oel_response_tokens": sum(tokens),
            "oel_truncated": self.truncated,
            "oel_turn_prompts": self.turn_prompts,
            "oel_replies": self.replies,
        }

    def save(self, spec: EpisodeSpec) -> Path:
        """Write the episode to ``spec.record_dir`` atomically: a killed run leaves whole files only."""
        path = Path(spec.record_dir) / f"episode_{spec.seed}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {
            "game": spec.game,
            "seed": spec.seed,
            "won": self.won,
            "reason": self.reason,
            "turns": self.turns,
            "turn_prompts": self.turn_prompts,
            "replies": self.replies,
        }
        write_text_atomic(path, json.dumps(document, ensure_ascii=False))
        return path


@register(AGENT_NAME)
class GameAgentLoop(RefusesPromptCuts, AgentLoopBase):
    """Plays the episode described by the row's ``extra_info["oel_game"]`` (see EpisodeSpec)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.response_length = self.rollout_config.response_length

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        spec = EpisodeSpec.from_row(kwargs)
        if spec.sampling_seed is not None:
            sampling_params = {**sampling_params, "seed": spec.sampling_seed}
        game = await _call_game(lambda: make_game(spec.game, **spec.settings))
        try:
            first_observation = await _call_game(game.reset, spec.seed)
            if spec.mode == "per_turn":
                return await self._last_turn_output(game, spec, sampling_params, first_observation)
            return await self._play_conversation(game, spec, sampling_params, first_observation)
        finally:
            await _call_game(game.close)

    def _max_tokens(self, spent: int, spec: EpisodeSpec) -> int:
        budget = self.response_length - spent
        return min(budget, spec.max_turn_tokens) if spec.max_turn_tokens else budget

    async def _generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        max_tokens: int,
        fields: dict[str, Any],
        turn: int = 0,
    ):
        if "seed" in sampling_params:
            # A seeded episode's turns draw different noise: one seed for all would correlate them.
            sampling_params = {**sampling_params, "seed": turn_seed(int(sampling_params["seed"]), turn)}
        output = await self.server_manager.generate(
            request_id=uuid4().hex,
            prompt_ids=prompt_ids,
            sampling_params={**sampling_params, "max_tokens": max_tokens},
        )
        merge_rollout_fields(fields, output.extra_fields or {})
        return output

    async def _step(self, game: TextGame, token_ids: list[int], record: EpisodeRecord):
        reply = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        result = await _call_game(game.step, reply)
        record.turns += 1
        record.observations.append(result.observation)
        record.invalid_actions += int(result.invalid)
        record.response_tokens.append(len(token_ids))
        record.replies.append(reply)
        if result.done:
            record.won = bool(result.outcome and result.outcome.won)
            record.reason = result.outcome.reason if result.outcome else ""
        return reply, result

    async def _play_conversation(
        self, game: TextGame, spec: EpisodeSpec, sampling_params: dict[str, Any], first_observation: str
    ) -> AgentLoopOutput:
        record = EpisodeRecord(observations=[first_observation])
        messages = opening_messages(game.instruction, await _call_game(game.turn_prompt), spec.knowledge)
        record.turn_prompts.append([dict(m) for m in messages])
        token_ids = await self.ct_build_initial_tokens(messages)
        self.check_turn_prompt(token_ids, spec.knowledge)
        prompt_length = len(token_ids)
        response_mask: list[int] = []
        logprobs: list[float] = []
        while True:
            output = await self._generate(
                token_ids,
                sampling_params,
                self._max_tokens(len(response_mask), spec),
                record.rollout_fields,
                turn=record.turns,
            )
            merged, response_mask, logprobs = await self.ct_merge_assistant_token(
                token_ids,
                output.token_ids,
                response_mask,
                logprobs if (logprobs or output.log_probs) else None,
                assistant_logprobs=output.log_probs or None,
            )
            token_ids = merged.token_ids
            reply, result = await self._step(game, output.token_ids, record)
            if result.done:
                break
            if len(response_mask) >= self.response_length:
                record.truncated = True
                record.reason = "response length cap"
                break
            # The assistant turn is already in the token stream (its sampled ids); only the
            # new user message is rendered and appended, as environment tokens.
            previous = [*messages, {"role": "assistant", "content": reply}]
            messages = [*previous, {"role": "user", "content": await _call_game(game.next_message)}]
            record.turn_prompts.append([dict(m) for m in messages])
            merged, mask_after, logprobs_after = await self.ct_merge_context_msg(
                previous, messages, token_ids, response_mask, logprobs or None
            )
            if len(mask_after) >= self.response_length:
                record.truncated = True
                record.reason = "response length cap"
                break
            token_ids, response_mask, logprobs = merged.token_ids, mask_after, logprobs_after or []

        response_ids = token_ids[prompt_length:]
        return AgentLoopOutput(
            prompt_ids=token_ids[:prompt_length],
            response_ids=response_ids[: self.response_length],
            response_mask=response_mask[: self.response_length],
            response_logprobs=logprobs[: self.response_length] if logprobs else None,
            num_turns=2 * record.turns,
            metrics={},
            extra_fields=record.extra_fields(spec),
        )

    async def play_per_turn(
        self, game: TextGame, spec: EpisodeSpec, sampling_params: dict[str, Any], first_observation: str
    ) -> tuple[EpisodeRecord, list[int], Any]:
        """Play the paper's deployment mode: each turn is a fresh prompt (system + the game log
        so far). Returns the record, and the last turn's prompt ids and server output."""
        record = EpisodeRecord(observations=[first_observation])
        while True:
            messages = opening_messages(game.instruction, await _call_game(game.turn_prompt), spec.knowledge)
            record.turn_prompts.append(messages)
            prompt_ids = await self.ct_build_initial_tokens(messages)
            self.check_turn_prompt(prompt_ids, spec.knowledge)
            output = await self._generate(
                prompt_ids,
                sampling_params,
                self._max_tokens(0, spec),
                record.rollout_fields,
                turn=record.turns,
            )
            _, result = await self._step(game, output.token_ids, record)
            if result.done:
                return record, prompt_ids, output

    async def _last_turn_output(
        self, game: TextGame, spec: EpisodeSpec, sampling_params: dict[str, Any], first_observation: str
    ) -> AgentLoopOutput:
        """Play a per-turn episode (``play_per_turn``), save its record, and return its last turn (prompt
        and reply) as the sample; every turn's prompt is in ``oel_turn_prompts`` (the deployment data
        consolidation trains on)."""
        record, prompt_ids, output = await self.play_per_turn(game, spec, sampling_params, first_observation)
        if spec.record_dir is not None:
            await asyncio.get_running_loop().run_in_executor(None, record.save, spec)
        response_ids = list(output.token_ids)[: self.response_length]
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=[1] * len(response_ids),
            response_logprobs=list(output.log_probs)[: self.response_length] if output.log_probs else None,
            num_turns=2,
            metrics={},
            extra_fields=record.extra_fields(spec),
        )
