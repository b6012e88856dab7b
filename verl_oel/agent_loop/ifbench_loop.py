"""``oel_ifbench``: one IFBench prompt answered in one turn, non-thinking, and the reply saved for scoring.

The evaluation stage plays IFBench rows (``verl_oel.oel.stage_data.ifbench_rows``) through verl's
validation pass like its games. This loop is the replay loop (verl's single turn with the row's own
sampling seed) with three changes:

- the prompt is rendered with the recipe's ``data.apply_chat_template_kwargs`` plus ``enable_thinking:
  false``: OPCD measures instruction following non-thinking, and a thinking template (Qwen3's) then opens
  the reply with an empty thinking block; a template without that switch ignores it;
- the reply is capped at the row's ``oel_max_tokens`` (``oel.ood.ifbench_max_tokens``);
- the decoded reply (special tokens skipped, as verl's reward managers decode it) is written to
  ``oel_record_dir/prompt_<key>.json``, whole or not at all, for the trainer to score and keep.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

from verl_oel.agent_loop.replay_loop import ReplayTurnAgentLoop
from verl_oel.atomic_io import write_json_atomic

AGENT_NAME = "oel_ifbench"
KEY = "oel_ifbench_key"
MAX_TOKENS_KEY = "oel_max_tokens"
RECORD_DIR_KEY = "oel_record_dir"


def reply_path(record_dir: Path, key: str) -> Path:
    """Where the loop saves the reply to IFBench prompt ``key``."""
    return Path(record_dir) / f"prompt_{key}.json"


@register(AGENT_NAME)
class IFBenchAgentLoop(ReplayTurnAgentLoop):
    """The replay loop, non-thinking, with a per-row reply cap, saving each reply (module docstring)."""

    def __init__(self, *args: Any, hf_model_type: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, hf_model_type=hf_model_type, **kwargs)
        self.apply_chat_template_kwargs = {**self.apply_chat_template_kwargs, "enable_thinking": False}
        self.continuous_token_builder = create_continuous_token_builder(
            self.tokenizer,
            hf_model_type=hf_model_type,
            chat_template_kwargs=self.apply_chat_template_kwargs,
            mm_processor_kwargs=self.mm_processor_kwargs,
            processor=self.processor,
        )

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        extra_info = kwargs.get("extra_info") or {}
        sampling_params = {**sampling_params, "max_tokens": int(extra_info[MAX_TOKENS_KEY])}
        output = await super().run(sampling_params, **kwargs)
        record = {
            "key": str(extra_info[KEY]),
            "response": self.tokenizer.decode(output.response_ids, skip_special_tokens=True),
            "response_tokens": len(output.response_ids),
        }
        path = reply_path(extra_info[RECORD_DIR_KEY], record["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, record)
        return output
