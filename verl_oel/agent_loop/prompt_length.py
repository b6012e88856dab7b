"""No prompt of an OEL stage is ever cut: a prompt over its limit is an error naming the keys.

verl's agent loops cut a prompt longer than ``rollout.prompt_length`` to its LAST ``prompt_length`` tokens
with only a log warning (``AgentLoopBase._cap_text_prompt_length``, reached through
``ct_build_initial_tokens``). For OEL that cut drops the game's instructions and the head of the knowledge
from extraction, evaluation and probe prompts, and the run goes on measuring something else. Every agent
loop of the plugin overrides that one method.

A game turn WITHOUT knowledge has the tighter limit ``data.max_prompt_length``: it is the student's prompt,
which consolidation's length budgets rest on, and the launch check's bounds on the knowledge-bearing prompts
(``verl_oel/oel/prompt_bounds.py``) count on it; ``rollout.prompt_length`` is derived from those bounds.
"""

from __future__ import annotations

ROLLOUT_PROMPT_LENGTH_KEY = "actor_rollout_ref.rollout.prompt_length"

_HOW_TO_FIX = (
    "raise data.max_prompt_length (actor_rollout_ref.rollout.max_model_len must hold the longest prompt plus "
    "data.max_response_length; `verl-oel train --dry-run` prints both) or shorten what the prompt holds "
    "(oel.extraction.budget_tokens, oel.game_settings.max_turns, the max_turn_tokens caps)"
)


class PromptTooLongError(ValueError):
    """A prompt that verl would left-truncate, or a turn prompt over the student's length; the message
    names the keys to change."""


class RefusesPromptCuts:
    """Mixin for verl agent loops (before the verl base in the class's bases)."""

    def _cap_text_prompt_length(self, prompt_ids: list[int]) -> list[int]:
        limit = self.rollout_config.prompt_length
        if len(prompt_ids) > limit:
            raise PromptTooLongError(
                f"{ROLLOUT_PROMPT_LENGTH_KEY}={limit}: a prompt of {len(prompt_ids)} tokens would be cut to "
                f"its last {limit} (losing its instructions and the head of any knowledge); {_HOW_TO_FIX}"
            )
        return prompt_ids

    def check_turn_prompt(self, prompt_ids: list[int], knowledge: str) -> None:
        """A game turn's prompt without knowledge must fit the student's, ``data.max_prompt_length``."""
        limit = int(self.config.data.max_prompt_length)
        if not knowledge.strip() and len(prompt_ids) > limit:
            raise PromptTooLongError(
                f"data.max_prompt_length={limit}: a game turn's prompt (without knowledge) of "
                f"{len(prompt_ids)} tokens is longer than the student's prompt length; {_HOW_TO_FIX}"
            )
