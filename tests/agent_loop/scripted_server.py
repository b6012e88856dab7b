"""A scripted stand-in for verl's rollout server, and agent loops built around it.

The server is the one thing mocked in agent-loop tests (it needs vLLM); the loops, verl's
continuous-token builder, the tokenizer and the games are real.
"""

from __future__ import annotations

from collections.abc import Iterator

from omegaconf import OmegaConf
from verl.experimental.agent_loop.agent_loop import DictConfigWrap
from verl.workers.rollout.replica import TokenOutput


class ScriptedServer:
    """Answers each generate call with the next scripted reply, honouring ``max_tokens``."""

    def __init__(self, tokenizer, replies: Iterator[str]) -> None:
        self.tokenizer = tokenizer
        self.global_steps = 7
        self.replies = replies
        self.calls: list[dict] = []
        self.outputs: list[list[int]] = []

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs) -> TokenOutput:
        reply = next(self.replies)
        ids = self.tokenizer.encode(reply, add_special_tokens=False) + [self.tokenizer.eos_token_id]
        ids = ids[: sampling_params["max_tokens"]]
        self.calls.append({"prompt_ids": list(prompt_ids), **sampling_params})
        self.outputs.append(ids)
        # Like vLLM, report a log-prob per sampled token (distinct values, to check alignment).
        # verl's server manager tags each output with the weight version that produced it.
        version = {"global_steps": self.global_steps, "min_global_steps": self.global_steps}
        self.global_steps += 1
        return TokenOutput(
            token_ids=ids,
            log_probs=[-(i + 1) / 100 for i in range(len(ids))],
            extra_fields={**version, "max_global_steps": version["global_steps"]},
        )


def make_loop(
    loop_cls,
    tokenizer,
    server,
    response_length: int = 2048,
    prompt_length: int = 4096,
    student_prompt_length: int | None = None,
):
    """``prompt_length`` is verl's ``rollout.prompt_length``; ``student_prompt_length`` the recipe's
    ``data.max_prompt_length`` (the limit of a turn prompt without knowledge), by default the same."""
    config = OmegaConf.create(
        {
            "actor_rollout_ref": {
                "rollout": {
                    "prompt_length": prompt_length,
                    "response_length": response_length,
                    "multi_turn": {},
                }
            },
            "data": {"max_prompt_length": student_prompt_length or prompt_length},
        }
    )
    return loop_cls(
        trainer_config=DictConfigWrap(config),
        server_manager=server,
        tokenizer=tokenizer,
        processor=None,
        dataset_cls=None,
        data_config=DictConfigWrap(config.data),
        hf_model_type="qwen3",
    )


def run_loop(loop, **row):
    """verl's agent loops keep the event loop they were built on (as in an agent-loop worker)."""
    return loop.loop.run_until_complete(loop.run({"temperature": 1.0}, **row))


def segments(ids: list[int], mask: list[int]) -> list[tuple[int, list[int]]]:
    """Runs of equal mask value: [(mask, token ids), ...]."""
    runs: list[tuple[int, list[int]]] = []
    for token, m in zip(ids, mask, strict=True):
        if runs and runs[-1][0] == m:
            runs[-1][1].append(token)
        else:
            runs.append((m, [token]))
    return runs
