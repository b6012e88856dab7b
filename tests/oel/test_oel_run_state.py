"""A run resumes after a kill at any point with nothing repeated or lost, and refuses to resume wrong."""

import json
import os
import subprocess
import sys

import pytest

from verl_oel.oel import (
    STAGES,
    NextStage,
    RunConfigMismatchError,
    RunLockedError,
    RunSpec,
    RunState,
    StageOrderError,
)
from verl_oel.oel.run_state import LauncherGoneError

CONFIG = {
    "oel": {"loss": "topk_reverse_kl", "k": 256},
    "actor": {"lr": 1e-6},
    "trainer": {"logger": ["console"]},
}


def make_spec(**changes) -> RunSpec:
    values = {"base_model": "/models/base", "rounds": 2, "seed": 7, "config": CONFIG, **changes}
    return RunSpec(**values)


def finish(state: RunState, until: NextStage | None = None) -> None:
    """Mark stages done in order, writing one output file each, up to (not including) ``until``."""
    while (step := state.next_stage()) is not None and step != until:
        (state.stage_dir(*step) / "output.txt").write_text(f"{step}\n")
        state.mark_done(*step, {"seconds": 1.0})


def test_plan_is_base_evaluation_then_every_stage_of_every_round(tmp_path):
    with RunState.open(tmp_path / "run", make_spec()) as state:
        assert list(state.plan()) == [(0, "evaluation")] + [(r, s) for r in (1, 2) for s in STAGES]
        finish(state)
        assert state.next_stage() is None
        assert state.summary(2, "checkpoint") == {"seconds": 1.0}


def test_killed_stage_runs_again_and_its_leftovers_go_but_nothing_else(tmp_path):
    run_dir = tmp_path / "run"
    state = RunState.open(run_dir, make_spec())
    finish(state, until=NextStage(1, "evaluation"))
    # The evaluation writes its outputs, then the process dies before the marker.
    (state.stage_dir(1, "evaluation") / "verl.log").write_text("half a log")
    (state.layout.eval_json(1)).write_text("{}")
    (state.layout.round_dir(1) / ".eval.json.abc.tmp").write_text("torn")
    state.close()  # the OS does the same for a kill -9

    with RunState.open(run_dir, make_spec()) as resumed:
        assert resumed.next_stage() == (1, "evaluation")
        fresh = resumed.stage_dir_for_retry(1, "evaluation")
        assert fresh.is_dir() and list(fresh.iterdir()) == []
        round_dir = resumed.layout.round_dir(1)
        assert sorted(p.name for p in round_dir.iterdir()) == [
            "consolidation",
            "deployment",
            "evaluation",
            "in_context",
            "knowledge",
            "stages.json",
            "teacher",
        ]
        for stage in ("teacher_refresh", "extraction", "in_context", "deployment", "consolidation"):
            assert (resumed.layout.stage_dir(1, stage) / "output.txt").exists()
        assert (resumed.layout.stage_dir(0, "evaluation") / "output.txt").exists()
        # Finished stages are neither rerun nor emptied.
        with pytest.raises(StageOrderError, match="is done"):
            resumed.stage_dir_for_retry(1, "deployment")
        with pytest.raises(StageOrderError, match=r"next stage is NextStage\(round=1, stage='evaluation'\)"):
            resumed.mark_done(1, "checkpoint", {})
        resumed.mark_done(1, "evaluation", {})
        assert resumed.next_stage() == (1, "checkpoint")


def test_retry_of_a_linked_stage_folder_removes_the_link_not_its_target(tmp_path):
    elsewhere = tmp_path / "shared_prompts"
    elsewhere.mkdir()
    (elsewhere / "keep.parquet").write_text("data")
    with RunState.open(tmp_path / "run", make_spec()) as state:
        finish(state, until=NextStage(1, "deployment"))
        link = state.layout.deployment_dir(1)
        link.symlink_to(elsewhere, target_is_directory=True)
        fresh = state.stage_dir_for_retry(1, "deployment")
        assert not fresh.is_symlink() and fresh.is_dir()
    assert (elsewhere / "keep.parquet").read_text() == "data"


def test_a_failed_marker_write_leaves_the_previous_markers_whole(tmp_path, monkeypatch):
    with RunState.open(tmp_path / "run", make_spec()) as state:
        finish(state, until=NextStage(1, "extraction"))
        stages_json = state.layout.stages_json(1)
        before = stages_json.read_bytes()

        with pytest.raises(TypeError):
            state.mark_done(1, "extraction", {"bad": object()})
        assert stages_json.read_bytes() == before

        def crash(*args, **kwargs):
            raise OSError("disk gone mid-rename")

        monkeypatch.setattr(os, "replace", crash)
        with pytest.raises(OSError, match="disk gone"):
            state.mark_done(1, "extraction", {"items": 3})
        monkeypatch.undo()
        assert stages_json.read_bytes() == before
        assert [p.name for p in stages_json.parent.iterdir() if p.name.startswith(".")] == []
        assert state.next_stage() == (1, "extraction")
        assert list(json.loads(before)["stages"]) == ["teacher_refresh"]


def test_resume_with_a_different_setting_names_the_key(tmp_path):
    run_dir = tmp_path / "run"
    RunState.open(run_dir, make_spec()).close()
    changed = {**CONFIG, "actor": {"lr": 2e-6}}
    with pytest.raises(RunConfigMismatchError) as caught:
        RunState.open(run_dir, make_spec(config=changed, seed=8))
    message = str(caught.value)
    assert "actor.lr: 1e-06 in run.json, 2e-06 now" in message
    assert "run.seed: 7 in run.json, 8 now" in message
    assert "oel.k" not in message
    with pytest.raises(RunConfigMismatchError, match="run.skip_stages"):
        RunState.open(
            run_dir, make_spec(skip_stages=("teacher_refresh", "deployment", "consolidation", "checkpoint"))
        )


def test_resume_may_change_logging_and_extend_the_rounds(tmp_path):
    run_dir = tmp_path / "run"
    with RunState.open(run_dir, make_spec()) as state:
        finish(state)
    relogged = {**CONFIG, "trainer": {"logger": ["console", "wandb"]}}
    with RunState.open(run_dir, make_spec(config=relogged, rounds=3)) as state:
        assert state.next_stage() == (3, "teacher_refresh")
    stored = json.loads((run_dir / "run.json").read_text())
    assert stored["rounds"] == 3 and stored["config"]["trainer"]["logger"] == ["console", "wandb"]
    assert [session.get("changed_keys") for session in stored["sessions"]] == [
        None,
        ["run.rounds", "trainer.logger"],
    ]


def test_each_round_starts_from_the_previous_rounds_saved_model(tmp_path):
    with RunState.open(tmp_path / "run", make_spec()) as state:
        assert state.previous_model(1) == "/models/base"
        with pytest.raises(StageOrderError, match="round 1's model is not saved yet"):
            state.previous_model(2)
        finish(state, until=NextStage(2, "teacher_refresh"))
        assert state.previous_model(2) == str(state.layout.run_dir / "rounds/round_001/checkpoint")
        with pytest.raises(ValueError, match="not in 1..2"):
            state.previous_model(3)


def test_knowledge_in_context_only_runs_never_train(tmp_path):
    spec = make_spec(skip_stages=("teacher_refresh", "deployment", "consolidation", "checkpoint"))
    with RunState.open(tmp_path / "run", spec) as state:
        assert [stage for round, stage in state.plan() if round == 1] == [
            "extraction",
            "in_context",
            "evaluation",
        ]
        finish(state)
        assert state.previous_model(2) == "/models/base"


def test_skipping_a_stage_another_one_needs_fails_at_start():
    with pytest.raises(ValueError, match=r"skips \['checkpoint'\], which stage 'consolidation' needs"):
        make_spec(skip_stages=("checkpoint",))
    with pytest.raises(ValueError, match="unknown stages"):
        make_spec(skip_stages=("consolidate",))


def test_a_restarted_run_loads_the_newest_model_its_finished_stages_produced(tmp_path):
    with RunState.open(tmp_path / "run", make_spec()) as state:
        assert state.start_model() == "/models/base"
        finish(state, until=NextStage(1, "consolidation"))
        assert state.start_model() == "/models/base"  # killed inside consolidation: pi_0 again
        (state.stage_dir(1, "consolidation") / "output.txt").write_text("pi_1\n")
        state.mark_done(1, "consolidation", {"hf_model": "/run/pi_1_hf"})
        # Evaluation and checkpoint of round 1 still to run: they need pi_1, not pi_0.
        assert state.start_model() == "/run/pi_1_hf"
        finish(state, until=NextStage(2, "extraction"))
        assert state.start_model() == str(state.layout.checkpoint_dir(1))
        finish(state)
        assert state.start_model() == str(state.layout.checkpoint_dir(2))


def test_the_trainer_attaches_to_the_run_its_launcher_holds_locked(tmp_path):
    with RunState.open(tmp_path / "run", make_spec()) as state:
        attached = RunState.attach(tmp_path / "run")
        assert attached.spec == state.spec
        finish(attached, until=NextStage(1, "extraction"))
        assert state.next_stage() == NextStage(1, "extraction")
        attached.close()
        with pytest.raises(RuntimeError, match="closed"):
            attached.mark_done(1, "extraction", {})
        # Closing the attached view leaves the launcher's lock held.
        with pytest.raises(RunLockedError):
            RunState.open(tmp_path / "run", make_spec())
    with pytest.raises(FileNotFoundError, match="run.json"):
        RunState.attach(tmp_path / "elsewhere")


def _launcher(run_dir) -> subprocess.Popen:
    """A launcher in another process: opens the run (takes its lock) and holds it until killed."""
    code = (
        "import sys, time\n"
        "from verl_oel.oel import RunSpec, RunState\n"
        f"state = RunState.open({str(run_dir)!r}, RunSpec(base_model='/models/base', rounds=2, seed=7, "
        f"config={CONFIG!r}))\n"
        "print('open', flush=True)\n"
        "time.sleep(600)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline() == "open\n"
    return process


def test_an_orphan_trainer_of_a_killed_launcher_changes_nothing(tmp_path):
    """A killed launcher's trainer (a Ray worker that outlives it for seconds) must not mark stages: the
    next launch would find more done than the kill left, or race it. It stops at its next change."""
    run_dir = tmp_path / "run"
    launcher = _launcher(run_dir)
    try:
        attached = RunState.attach(run_dir)
        finish(attached, until=NextStage(1, "extraction"))  # its launcher lives: the trainer works
    finally:
        launcher.kill()
        launcher.wait()
    markers = sorted((run_dir / "rounds").rglob("stages.json"))
    before = [path.read_text() for path in markers]
    with pytest.raises(LauncherGoneError, match="no longer holds the run's lock .free."):
        attached.mark_done(1, "extraction", {})
    with pytest.raises(LauncherGoneError):
        attached.stage_dir_for_retry(1, "extraction")
    assert sorted((run_dir / "rounds").rglob("stages.json")) == markers
    assert [path.read_text() for path in markers] == before

    # The next launch has taken the lock by the time the orphan tries: still refused (another holder).
    orphan = attached
    relaunched = _launcher(run_dir)
    try:
        with pytest.raises(LauncherGoneError, match="held by pid"):
            orphan.mark_done(1, "extraction", {})
        # The new launcher's own trainer works as usual.
        finish(RunState.attach(run_dir), until=NextStage(1, "in_context"))
        assert RunState.attach(run_dir).next_stage() == NextStage(1, "in_context")
    finally:
        relaunched.kill()
        relaunched.wait()
