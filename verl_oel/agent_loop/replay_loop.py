"""``oel_replay``: the student's turn on one saved deployment prompt, sampled with the row's own seed.

Consolidation in the paper's replay mode regenerates one turn for each saved deployment prompt, without
the environment: that is verl's single-turn agent loop. This loop only adds the row's sampling seed
(``extra_info["oel_sampling_seed"]``), so the same model gives the same sample for the same row whatever
else the server is doing, and a resumed OEL run reproduces an uninterrupted one.
"""

from __future__ import annotations

from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register
from verl.experimental.agent_loop.single_turn_agent_loop import SingleTurnAgentLoop

from verl_oel.agent_loop.prompt_length import RefusesPromptCuts

AGENT_NAME = "oel_replay"
SEED_KEY = "oel_sampling_seed"


@register(AGENT_NAME)
class ReplayTurnAgentLoop(RefusesPromptCuts, SingleTurnAgentLoop):
    """verl's single-turn loop with a per-row vLLM sampling seed."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        seed = (kwargs.get("extra_info") or {}).get(SEED_KEY)
        if seed is not None:
            sampling_params = {**sampling_params, "seed": int(seed)}
        return await super().run(sampling_params, **kwargs)
