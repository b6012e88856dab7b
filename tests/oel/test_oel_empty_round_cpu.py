"""A round whose extraction keeps no knowledge item, and out-of-domain games and IFBench in every round's
evaluation: one ``verl-oel train --config-name oel_cpu_tiny oel.rounds=1`` launch on verl's stack (CPU).

The random tiny model writes no knowledge item from its own games (it never writes the marker), so its
round 1 always has nothing to consolidate: the round must skip its in-context evaluation, deployment and
training (each stage marked done with the reason), publish the base model's weights unchanged as pi_1, and
say so in eval.json and the report. The same launch plays two out-of-domain entries (FrozenLake with other
settings, and the hidden-rule doors) in round 0's and round 1's evaluations; eval.json, the report and
verl's tracking hold their pass and valid-action rates. It also answers 4 IFBench prompts
(``oel.ood.ifbench_prompts: 4``, replies of at most 16 tokens) in both evaluations, through verl's validation
pass (the ``oel_ifbench`` agent loop on vLLM): the score in eval.json must be the fraction of the stored
verdicts that follow every instruction, each verdict what the verifiers say of the stored reply, and, the
weights being the same in both rounds with the same sampling seeds, round 1's replies must be round 0's.
The tiny model's replies are not English (its score is 0): the launch proves the plumbing; the verifiers'
verdicts are checked against IFBench's own on real replies in ``tests/test_ifbench.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from oel_testing import read_metrics, run_verl_oel
from safetensors.torch import load_file

from verl_oel.ifbench import follows_instructions, prompt_strict, select_prompts
from verl_oel.oel import RunLayout, load_ifbench_record, load_round_eval
from verl_oel.oel.run_state import read_stage_markers

pytestmark = pytest.mark.verl

SKIPPED = "no knowledge: the round's extraction kept no item"
OOD = [
    "+oel.ood.games=[{name: lake4, game: frozenlake, game_settings: {size: 4, max_turns: 2}, num_games: 4},"
    "{name: doors, game: hidden-rule, game_settings: {family: river, num_doors: 4}, num_games: 4, seed: 3}]",
]
IFBENCH_PROMPTS, IFBENCH_MAX_TOKENS = 4, 16
IFBENCH_LEFT_OUT = [
    "format:title_case",
    "ratio:stop_words",
    "words:keywords_specific_position",
    "words:start_verb",
    "words:words_position",
]


@pytest.fixture(scope="module")
def empty_run(tmp_path_factory, tiny_model_dir):
    run_dir = tmp_path_factory.mktemp("empty-round") / "run"
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            "oel_cpu_tiny",
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"trainer.default_local_dir={run_dir}",
            "oel.rounds=1",
            *OOD,
            f"+oel.ood.ifbench_prompts={IFBENCH_PROMPTS}",
            f"+oel.ood.ifbench_max_tokens={IFBENCH_MAX_TOKENS}",
        ],
        timeout=1200,
    )
    assert proc.returncode == 0, (proc.stdout[-6000:], proc.stderr[-6000:])
    return run_dir


def test_a_round_without_knowledge_skips_consolidation_and_keeps_the_previous_model(
    empty_run, tiny_model_dir
):
    layout = RunLayout(empty_run.resolve())
    markers = {stage: marker["summary"] for stage, marker in read_stage_markers(layout, 1).items()}
    assert markers["extraction"]["items"] == [0, 0]
    for stage in ("in_context", "deployment", "consolidation"):
        assert markers[stage]["skipped"] == SKIPPED, (stage, markers[stage])
    assert markers["consolidation"]["steps"] == 0
    assert not (layout.deployment_dir(1) / "prompts.parquet").exists()
    assert layout.metrics_jsonl(1).read_text() == ""
    # pi_1 = pi_0: the published checkpoint holds the base model's weights, bit for bit.
    base = load_file(tiny_model_dir / "model.safetensors")
    published = load_file(layout.checkpoint_dir(1) / "model.safetensors")
    assert base.keys() == published.keys()
    assert all(torch.equal(base[name], published[name]) for name in base)
    record = load_round_eval(layout.eval_json(1))
    assert record.consolidation is None and record.consolidation_skipped == SKIPPED
    assert record.pass_rate_with_knowledge is None and record.knowledge_items == 0
    # The round's evaluation played those weights (the same fingerprint as the base's evaluation).
    base_eval = read_stage_markers(layout, 0)["evaluation"]["summary"]
    assert markers["evaluation"]["model_fingerprint"] == base_eval["model_fingerprint"]
    report = (empty_run / "report.md").read_text()
    assert "| 1 | done | 4 |" in report and "| 0 | skipped (no knowledge) |" in report


def test_every_evaluation_plays_the_ood_games_and_reports_their_rates(empty_run):
    layout = RunLayout(empty_run.resolve())
    records = [load_round_eval(layout.eval_json(round)) for round in (0, 1)]
    for record in records:
        assert [(r.name, r.num_games) for r in record.ood] == [("lake4", 4), ("doors", 4)]
        for result in record.ood:
            assert 0.0 <= result.pass_rate <= 1.0 and 0.0 <= result.valid_action_rate <= 1.0
    # Same games, same sampling seeds and the same weights in both rounds: the same results.
    assert records[0].ood == records[1].ood
    report = json.loads((empty_run / "report.json").read_text())
    assert [entry["eval"]["ood"] for entry in report["rounds"]] == [
        [vars(result) for result in record.ood] for record in records
    ]
    assert "## Out-of-domain retention (no knowledge)" in (empty_run / "report.md").read_text()
    # Logged through verl's tracking with the stage's other numbers (its file backend: one file per launch).
    (metrics_file,) = (empty_run / "logs").glob("metrics_*.jsonl")
    logged = {}
    for metrics in read_metrics(metrics_file).values():
        logged.update(metrics)
    for result in records[1].ood:
        assert logged[f"oel/evaluation/ood/{result.name}/pass_rate"] == pytest.approx(result.pass_rate)


def test_every_round_scores_ifbench_from_the_replies_it_stored(empty_run):
    layout = RunLayout(empty_run.resolve())
    prompts = {prompt.key: prompt for prompt in select_prompts(IFBENCH_PROMPTS)}
    replies = []
    for round in (0, 1):
        score = load_round_eval(layout.eval_json(round)).ifbench
        assert score is not None and 0.0 <= score.prompt_strict <= 1.0
        assert (score.prompts, score.shipped_prompts, score.checkable_prompts) == (IFBENCH_PROMPTS, 294, 265)
        assert list(score.left_out_instructions) == IFBENCH_LEFT_OUT
        assert score.max_tokens == IFBENCH_MAX_TOKENS
        stored, verdicts = load_ifbench_record(layout.ifbench_json(round))
        assert stored == score
        assert [verdict.key for verdict in verdicts] == list(prompts)
        for verdict in verdicts:
            assert 0 < verdict.response_tokens <= IFBENCH_MAX_TOKENS and verdict.response.strip()
            assert verdict.follow_instruction_list == follows_instructions(
                prompts[verdict.key], verdict.response
            )
        assert prompt_strict(verdicts) == score.prompt_strict
        replies.append([verdict.response for verdict in verdicts])
    assert replies[0] == replies[1]  # the same weights, prompts and sampling seeds


def test_the_report_and_verl_tracking_show_the_ifbench_score(empty_run):
    report = json.loads((empty_run / "report.json").read_text())
    scores = [entry["eval"]["ifbench"] for entry in report["rounds"]]
    assert [score["prompts"] for score in scores] == [IFBENCH_PROMPTS, IFBENCH_PROMPTS]
    assert "IFBench prompt-level strict" in (empty_run / "report.md").read_text()
    (metrics_file,) = (empty_run / "logs").glob("metrics_*.jsonl")
    logged = {}
    for metrics in read_metrics(metrics_file).values():
        logged.update(metrics)
    assert logged["oel/evaluation/ood/ifbench/prompt_strict"] == pytest.approx(scores[1]["prompt_strict"])
    assert logged["oel/evaluation/ood/ifbench/prompts"] == IFBENCH_PROMPTS
