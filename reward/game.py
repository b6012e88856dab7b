"""Reward for text-game episodes played by the ``oel_game`` agent loop: pass = won.

The agent loop plays the game and reports the outcome in its extra fields, which verl's
reward managers merge into ``extra_info``; the score is 1.0 for a win and 0.0 otherwise
(FrozenLake's partial reward for reaching a hole is not a pass). The other keys are logged
by verl as reward extra info: per-episode turns, invalid actions, tokens per turn, response
tokens per game (summed over its turns). IFBench rows (no game)
pass when their reply follows every instruction of the prompt.
"""

from __future__ import annotations

from typing import Any


def compute_score(
    data_source: str, solution_str: str, ground_truth: Any, extra_info: dict[str, Any] | None = None
) -> dict[str, float]:
    info = extra_info or {}
    if "oel_ifbench_key" in info:
        # An IFBench prompt (the evaluation's instruction-following check): pass = every instruction
        # followed, strict (verl_oel/ifbench.py). The trainer scores the saved replies the same way and
        # checks that both agree.
        from verl_oel.ifbench import IFBenchPrompt, follows_instructions

        verdicts = follows_instructions(IFBenchPrompt.from_json(ground_truth), solution_str)
        followed = float(all(verdicts))
        return {"score": followed, "pass": followed, "instructions_followed": sum(verdicts) / len(verdicts)}
    if "oel_stream_pass_rate" in info:
        # A knowledge-extraction row (one stream of games): scored by its games' pass rate,
        # logged only; extraction does not train.
        return {
            "score": float(info["oel_stream_pass_rate"]),
            "pass": float(info["oel_stream_pass_rate"]),
            "extract_wall_s": float(info.get("oel_extract_wall_s", 0.0)),
        }
    if "oel_deployment_turn" in info:
        # A saved deployment turn replayed by consolidation: one reply, no environment to judge it;
        # consolidation's loss never reads rewards, so there is nothing to score.
        return {"score": 0.0}
    if "oel_won" not in info:
        raise KeyError(
            f"{data_source}: no episode outcome in extra_info; game rows must be played by the "
            "oel_game agent loop (rollout.agent.default_agent_loop=oel_game or an agent_name column)"
        )
    won = float(bool(info["oel_won"]))
    return {
        "score": won,
        "pass": won,
        "turns": float(info.get("oel_turns", 0)),
        "invalid_actions": float(info.get("oel_invalid_actions", 0)),
        "tokens_per_turn": float(info.get("oel_tokens_per_turn", 0.0)),
        "response_tokens": float(info.get("oel_response_tokens", 0)),
    }
