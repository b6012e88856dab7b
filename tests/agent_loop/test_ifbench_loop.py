"""The ``oel_ifbench`` agent loop and the evaluation's IFBench rows, against a scripted rollout server: the
prompt rendered non-thinking, the row's reply cap and sampling seed sent, the reply saved as verl's reward
decodes it, and the reward's verdict the trainer's."""

from __future__ import annotations

import json

import pytest
from scripted_server import ScriptedServer, make_loop, run_loop
from transformers import AutoTokenizer
from verl_oel.reward.game import compute_score

from verl_oel.agent_loop.ifbench_loop import IFBenchAgentLoop, reply_path
from verl_oel.ifbench import IFBenchPrompt, follows_instructions, select_prompts
from verl_oel.models.tokenizer import CHATML_TEMPLATE
from verl_oel.oel.config import OELConfig
from verl_oel.oel.stage_data import IFBENCH_SOURCE, ifbench_rows, ood_rows
from verl_oel.seeds import stage_sampling_seed

# ChatML with Qwen3's switch: ``enable_thinking: false`` opens the reply with an empty thinking block.
THINKING_SWITCH_TEMPLATE = CHATML_TEMPLATE.replace(
    "{{- '<|im_start|>assistant\\n' }}",
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}",
)

LOOP = OELConfig.from_mapping(
    {
        "rounds": 1,
        "game": "hidden-rule",
        "seed": 3,
        "ood": {
            "games": [{"name": "river", "game": "hidden-rule", "game_settings": {"family": "river"}}],
            "ifbench_prompts": 4,
        },
    }
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = THINKING_SWITCH_TEMPLATE
    return tokenizer


def test_rows_are_the_selected_prompts_with_their_own_seeds_the_same_every_round(tmp_path):
    rows = ifbench_rows(LOOP, 48, tmp_path)
    prompts = select_prompts(4)
    assert [IFBenchPrompt.from_json(row["reward_model"]["ground_truth"]) for row in rows] == list(prompts)
    assert [row["prompt"] for row in rows] == [[{"role": "user", "content": p.prompt}] for p in prompts]
    assert {row["data_source"] for row in rows} == {IFBENCH_SOURCE}
    seeds = [row["extra_info"]["oel_sampling_seed"] for row in rows]
    assert seeds == [stage_sampling_seed(3, "ifbench", 0, index) for index in range(4)]
    game_seeds = {json.loads(row["extra_info"]["oel_game"])["sampling_seed"] for row in ood_rows(LOOP, 0)}
    assert not set(seeds) & game_seeds
    assert rows == ifbench_rows(LOOP, 48, tmp_path)


def test_the_loop_answers_non_thinking_within_the_cap_with_the_rows_seed_and_saves_the_reply(
    tokenizer, tmp_path
):
    row = ifbench_rows(LOOP, 5, tmp_path / "replies")[0]
    reply = "Yes, and I will use five different conjunctions: and, but, or, nor, so."
    server = ScriptedServer(tokenizer, iter([reply]))
    loop = make_loop(IFBenchAgentLoop, tokenizer, server, response_length=64)
    output = run_loop(loop, raw_prompt=row["prompt"], extra_info=row["extra_info"])

    (call,) = server.calls
    assert call["max_tokens"] == 5 and call["seed"] == row["extra_info"]["oel_sampling_seed"]
    rendered = tokenizer.decode(call["prompt_ids"])
    assert rendered.endswith("<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"), rendered[-80:]
    assert row["prompt"][0]["content"] in rendered
    assert output.response_ids == server.outputs[0] and len(output.response_ids) == 5

    saved = json.loads(reply_path(tmp_path / "replies", row["extra_info"]["oel_ifbench_key"]).read_text())
    cut = tokenizer.decode(server.outputs[0], skip_special_tokens=True)
    assert saved == {"key": row["extra_info"]["oel_ifbench_key"], "response": cut, "response_tokens": 5}
    assert reply.startswith(cut) and cut != reply


@pytest.mark.parametrize(
    ("reply", "followed"), [("and but or nor so, yes.", True), ("No conjunctions here.", False), ("", False)]
)
def test_the_reward_scores_a_reply_as_the_trainer_does(reply, followed):
    row = ifbench_rows(LOOP, 48, "unused")[0]
    prompt = IFBenchPrompt.from_json(row["reward_model"]["ground_truth"])
    verdicts = follows_instructions(prompt, reply)
    assert prompt.instruction_id_list == ("count:conjunctions",)
    scored = compute_score(
        IFBENCH_SOURCE, reply, row["reward_model"]["ground_truth"], dict(row["extra_info"])
    )
    assert all(verdicts) is followed
    assert scored == {
        "score": float(followed),
        "pass": float(followed),
        "instructions_followed": sum(verdicts) / len(verdicts),
    }
