"""No prompt of an OEL stage is ever cut: a prompt longer than verl's ``rollout.prompt_length`` is an error.

verl's agent loops cut such a prompt to its LAST ``prompt_length`` tokens with only a log warning
(``AgentLoopBase._cap_text_prompt_length``, reached through ``ct_build_initial_tokens``). For OEL that cut
drops the game's instructions and the head of the knowledge from extraction, evaluation and probe prompts,
and the run goes on measuring something else. Every agent loop of the plugin overrides that one method.
"""

from __future__ import annotations

PROMPT_LENGTH_KEYS = (
    "actor_rollout_ref.rollout.prompt_length (data.max_prompt_length unless the recipe sets it)"
)


class PromptTooLongError(ValueError):
    """A prompt that verl would left-truncate; the message names the keys to change."""


class RefusesPromptCuts:
    """Mixin for verl agent loops (before the verl base in the class's bases)."""

    def _cap_text_prompt_length(self, prompt_ids: list[int]) -> list[int]:
        limit = self.rollout_config.prompt_length
        if len(prompt_ids) > limit:
            raise PromptTooLongError(
                f"{PROMPT_LENGTH_KEYS}={limit}: a prompt of {len(prompt_ids)} tokens would be cut to its "
                f"last {limit} (losing its instructions and the head of any knowledge); raise "
                "data.max_prompt_length (actor_rollout_ref.rollout.max_model_len must hold it plus "
                "data.max_response_length) or "
                "shorten what the prompt holds (oel.extraction.budget_tokens, oel.game_settings.max_turns, "
                "the max_turn_tokens caps)"
            )
        return prompt_ids
