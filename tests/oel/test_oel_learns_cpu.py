"""The OEL loop LEARNS: a shortened ``oel-cpu-demo`` run through verl's real stack on CPU.

The warmed tiny model has never been trained on the held-out family's rule, so without knowledge it plays
at chance (1 in 4; measured 19-22 %, 6-7 of 32 games, at seed 0; 94 % after one round). One OEL round (it
extracts the rule from its own games, then consolidates that knowledge into its weights) must lift its
pass rate WITHOUT knowledge by at least 30 points. Any regression in the pipeline (teacher alignment,
the loss's sign, the teacher refresh, knowledge injection) breaks that.
"""

from __future__ import annotations

import pytest
from oel_testing import run_verl_oel

from verl_oel.oel import RunLayout, load_round_eval
from verl_oel.oel.run_state import read_stage_markers

pytestmark = [pytest.mark.verl, pytest.mark.warm_model]

MIN_GAIN = 0.30


def test_one_round_of_oel_lifts_the_pass_rate_without_knowledge_by_30_points(tmp_path, warm_model_dir):
    run_dir = tmp_path / "run"
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            "oel-cpu-demo",
            f"actor_rollout_ref.model.path={warm_model_dir}",
            f"trainer.default_local_dir={run_dir}",
            "oel.rounds=1",
        ],
        timeout=1500,
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    layout = RunLayout(run_dir.resolve())
    base, trained = (load_round_eval(layout.eval_json(r)) for r in (0, 1))
    extraction = read_stage_markers(layout, 1)["extraction"]["summary"]
    report = (
        f"base {base.pass_rate_no_knowledge:.2f}, after round 1 {trained.pass_rate_no_knowledge:.2f} "
        f"(with knowledge in context {trained.pass_rate_with_knowledge}), items {extraction['items']}"
    )
    assert sum(extraction["items"]) > 0, report  # the model wrote knowledge from its own games
    assert trained.pass_rate_with_knowledge > base.pass_rate_no_knowledge + MIN_GAIN, report
    assert trained.pass_rate_no_knowledge >= base.pass_rate_no_knowledge + MIN_GAIN, report
