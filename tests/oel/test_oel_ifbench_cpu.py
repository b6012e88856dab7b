"""IFBench in every round's evaluation, on verl's stack (CPU) with a real instruction-tuned model: one
``verl-oel train --config-name oel_cpu_tiny`` launch with SmolLM2-135M-Instruct, 4 IFBench prompts
(``oel.ood.ifbench_prompts: 4``) answered in at most 48 tokens, and the cheapest round the loop allows (one
extraction game, no training: ``oel.consolidation_steps: 0``, one held-out game).

The replies come from verl's validation pass (the ``oel_ifbench`` agent loop on vLLM); the score in
eval.json must be the fraction of the stored verdicts that follow every instruction, each verdict what the
verifiers say of the stored reply, and, the model being the same in both rounds (nothing trains) with the
same sampling seeds, round 1's replies must be round 0's.
"""

from __future__ import annotations

import json

import pytest
from oel_testing import read_metrics, run_verl_oel

from verl_oel.ifbench import follows_instructions, prompt_strict, select_prompts
from verl_oel.oel import RunLayout, load_ifbench_record, load_round_eval

pytestmark = pytest.mark.verl

PROMPTS, MAX_TOKENS = 4, 48
LEFT_OUT = [
    "format:title_case",
    "ratio:stop_words",
    "words:keywords_specific_position",
    "words:start_verb",
    "words:words_position",
]


@pytest.fixture(scope="module")
def ifbench_run(tmp_path_factory, smollm2_model_dir):
    run_dir = tmp_path_factory.mktemp("ifbench") / "run"
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            "oel_cpu_tiny",
            f"actor_rollout_ref.model.path={smollm2_model_dir}",
            f"trainer.default_local_dir={run_dir}",
            "trainer.logger=[console,file]",
            "oel.rounds=1",
            "oel.consolidation_steps=0",
            "+oel.evaluation.with_knowledge=false",
            "oel.evaluation.games=1",
            "oel.extraction.num_streams=1",
            "oel.extraction.games_per_stream=1",
            "oel.extraction.in_context_games=0",
            f"+oel.ood.ifbench_prompts={PROMPTS}",
            f"+oel.ood.ifbench_max_tokens={MAX_TOKENS}",
            f"data.max_response_length={MAX_TOKENS}",
            # SmolLM2's tokenizer makes the extraction prompt 1,620 tokens: room for it and a reply.
            "actor_rollout_ref.rollout.max_model_len=1728",
        ],
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout[-6000:], proc.stderr[-6000:])
    return RunLayout(run_dir.resolve())


def test_every_round_scores_ifbench_from_the_replies_it_stored(ifbench_run):
    prompts = {prompt.key: prompt for prompt in select_prompts(PROMPTS)}
    replies = []
    for round in (0, 1):
        score = load_round_eval(ifbench_run.eval_json(round)).ifbench
        assert score is not None and 0.0 <= score.prompt_strict <= 1.0
        assert (score.prompts, score.shipped_prompts, score.checkable_prompts) == (PROMPTS, 294, 265)
        assert list(score.left_out_instructions) == LEFT_OUT and score.max_tokens == MAX_TOKENS
        stored, verdicts = load_ifbench_record(ifbench_run.ifbench_json(round))
        assert stored == score
        assert [verdict.key for verdict in verdicts] == list(prompts)
        for verdict in verdicts:
            assert 0 < verdict.response_tokens <= MAX_TOKENS and verdict.response.strip()
            assert verdict.follow_instruction_list == follows_instructions(
                prompts[verdict.key], verdict.response
            )
        assert prompt_strict(verdicts) == score.prompt_strict
        replies.append([verdict.response for verdict in verdicts])
    assert replies[0] == replies[1]  # the same model, prompts and sampling seeds


def test_the_report_and_verl_tracking_show_the_score(ifbench_run):
    run_dir = ifbench_run.run_dir
    report = json.loads((run_dir / "report.json").read_text())
    scores = [entry["eval"]["ifbench"] for entry in report["rounds"]]
    assert [score["prompts"] for score in scores] == [PROMPTS, PROMPTS]
    assert "IFBench prompt-level strict" in (run_dir / "report.md").read_text()
    (metrics_file,) = (run_dir / "logs").glob("metrics_*.jsonl")
    logged = {}
    for metrics in read_metrics(metrics_file).values():
        logged.update(metrics)
    assert logged["oel/evaluation/ood/ifbench/prompt_strict"] == pytest.approx(scores[1]["prompt_strict"])
    assert logged["oel/evaluation/ood/ifbench/prompts"] == PROMPTS
