"""The OEL loop LEARNS: a shortened ``oel-cpu-demo`` run through verl's real stack on CPU (the first test
runs it as the README's main job does, ``verl-oel demo``).

The warmed tiny model has never been trained on the held-out family's rule, so without knowledge it plays
at chance (1 in 4; measured 19-22 %, 6-7 of 32 games, at seed 0; 94 % after one round). One OEL round (it
extracts the rule from its own games, then consolidates that knowledge into its weights) must lift its
pass rate WITHOUT knowledge by at least 30 points. Any regression in the pipeline (teacher alignment,
the loss's sign, knowledge injection) breaks that. Two controls, one launch each: without consolidation
nothing is learned (and no knowledge leaks into the evaluation without it), and "with knowledge in
context" is the teacher's score even when consolidation wrecks the student. (A teacher refresh that does
nothing is caught by the 2-round run, ``test_oel_run_cpu.py``, which compares the round-2 teacher's
weights with round 1's checkpoint.)
"""

from __future__ import annotations

import json
import shutil

import pytest
from oel_testing import one_oel_round, read_metrics, read_round_1, verl_oel_succeeds

from verl_oel.oel import RunLayout

pytestmark = [pytest.mark.verl, pytest.mark.warm_model]

MIN_GAIN = 0.30


def test_one_round_of_oel_lifts_the_pass_rate_without_knowledge_by_30_points(tmp_path, warm_model_dir):
    """Run as the README's main job runs it, ``verl-oel demo`` (shortened to one round), with the warmed
    model already built in the demo's folder: the demo finds it there (same build settings), then trains
    ``oel-cpu-demo`` from it into its run folder."""
    shutil.copytree(warm_model_dir, tmp_path / "models" / "warm")
    console = verl_oel_succeeds(["demo", "--run-dir", str(tmp_path), "oel.rounds=1"])
    assert f"verl-oel demo: model {tmp_path / 'models' / 'warm'}\n" in console, console[-3000:]
    assert "1 round(s) of hidden-rule" in console, console[-3000:]
    base, trained, markers = read_round_1(tmp_path / "oel-cpu-demo")
    assert markers["teacher_refresh"]["summary"]["teacher"] == str(tmp_path / "models" / "warm")
    extraction = markers["extraction"]["summary"]
    report = (
        f"base {base.pass_rate_no_knowledge:.2f}, after round 1 {trained.pass_rate_no_knowledge:.2f} "
        f"(with knowledge in context {trained.pass_rate_with_knowledge}), items {extraction['items']}"
    )
    assert sum(extraction["items"]) > 0, report  # the model wrote knowledge from its own games
    assert trained.pass_rate_with_knowledge > base.pass_rate_no_knowledge + MIN_GAIN, report
    assert trained.pass_rate_no_knowledge >= base.pass_rate_no_knowledge + MIN_GAIN, report


def test_without_consolidation_nothing_is_learned_and_no_knowledge_leaks(tmp_path, warm_model_dir):
    """The control (oel-cpu-demo-in-context: consolidation_steps 0). The round keeps the base model, so its
    evaluation without knowledge plays the base's games with the base's weights and seeds: the same pass
    rate exactly, unless knowledge leaks into that evaluation (it would then win like the teacher does).
    The gain of the learning test above is therefore the consolidation's."""
    base, round_1, markers = one_oel_round(tmp_path, warm_model_dir, "oel-cpu-demo-in-context")
    assert "consolidation" not in markers and sum(markers["extraction"]["summary"]["items"]) > 0
    assert round_1.pass_rate_no_knowledge == base.pass_rate_no_knowledge, (base, round_1)
    assert round_1.pass_rate_with_knowledge > base.pass_rate_no_knowledge + MIN_GAIN, (base, round_1)


def test_with_knowledge_in_context_is_the_teachers_score_not_the_consolidated_models(
    tmp_path, warm_model_dir
):
    """A learning rate of 0.5 wrecks pi_1 (measured: see below), while the teacher, pi_0 with the rule in
    its prompt, wins ~all games: "with knowledge in context" must read the teacher's score. (Measured
    after consolidation, as it once was, it read pi_1's.)"""
    base, trained, markers = one_oel_round(
        tmp_path, warm_model_dir, "oel-cpu-demo", "actor_rollout_ref.actor.optim.lr=0.5"
    )
    in_context = markers["in_context"]["summary"]
    assert in_context["model"] == str(warm_model_dir.resolve())  # played by pi_0, the round's teacher
    assert trained.pass_rate_with_knowledge == in_context["pass_rate"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    (round_1,) = [entry for entry in report["rounds"] if entry["round"] == 1]
    assert round_1["eval"]["pass_rate_with_knowledge"] == in_context["pass_rate"]
    assert trained.pass_rate_no_knowledge < base.pass_rate_no_knowledge, (base, trained)  # wrecked
    assert trained.pass_rate_with_knowledge > base.pass_rate_no_knowledge + MIN_GAIN, (base, trained)


def test_one_round_of_online_oel_lifts_the_pass_rate_without_knowledge(tmp_path, warm_model_dir):
    """OPCD's online mode (``oel-cpu-demo-online``, the demo with ``oel.mode: online``): no deployment
    prompts are replayed; each consolidation step the student plays 8 of the round's 32 fresh games
    itself, and the frozen teacher (pi_0 with the round's knowledge) scores its tokens. The issue's bar:
    at least 80 % without knowledge after one round."""
    base, trained, markers = one_oel_round(tmp_path, warm_model_dir, "oel-cpu-demo-online")
    deployment = markers["deployment"]["summary"]
    assert (deployment["games"], deployment["played_by"]) == (32, "consolidation")
    steps = read_metrics(RunLayout((tmp_path / "run").resolve()).metrics_jsonl(1))
    # Each step's samples are whole games the student played: verl scored them (1 for a win).
    wins = [metrics["critic/score/mean"] for _, metrics in sorted(steps.items())]
    rates = (base.pass_rate_no_knowledge, trained.pass_rate_no_knowledge)
    report = f"base {rates[0]:.2f}, after round 1 {rates[1]:.2f}; the steps' games won {wins}"
    assert len(wins) == 8 and all(0.0 <= w <= 1.0 for w in wins), report
    assert trained.pass_rate_no_knowledge >= max(0.80, base.pass_rate_no_knowledge + MIN_GAIN), report
