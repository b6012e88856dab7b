"""A run directory damaged between attempts fails before any compute, naming the file and the cure, and
loses nothing; a checkpoint copy that runs out of room leaves every finished model whole and the run
resumable.

The runs here are built on disk with ``RunState`` and the stages' own writers (knowledge streams, eval.json,
deployment rows, the checkpoint copy of a real HF folder, the tiny model), so the files are the ones a run
leaves; no verl launch is needed to damage them.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oel_testing import REPO_ROOT

from verl_oel.atomic_io import leftover_temporaries, write_parquet_atomic
from verl_oel.knowledge import KnowledgeStream, save_stream, stream_path
from verl_oel.oel import RoundEval, RunLayout, RunSpec, RunState, save_round_eval
from verl_oel.oel.run_integrity import check_finished_outputs
from verl_oel.oel.run_state import (
    CHECKPOINT,
    CONSOLIDATION,
    DEPLOYMENT,
    EVALUATION,
    EXTRACTION,
    DamagedRunError,
    RunConfigMismatchError,
    read_run_spec,
)

ROUNDS = 2


def _spec(base_model: Path, lr: float = 1e-3) -> RunSpec:
    return RunSpec(base_model=str(base_model), rounds=ROUNDS, seed=0, config={"actor": {"lr": lr}})


def _run_stage(state: RunState, round: int, stage: str) -> None:
    """Write what ``stage`` writes (stand-ins for its numbers), then mark it done, as the trainer does."""
    from verl_oel.oel.trainer import publish_checkpoint

    layout = state.layout
    directory = state.stage_dir_for_retry(round, stage)
    summary: dict = {}
    if stage == EVALUATION:
        record = RoundEval(round=round, num_games=4, pass_rate_no_knowledge=0.25, tokens_per_turn=4)
        save_round_eval(layout, record)
    elif stage == EXTRACTION:
        for index in range(2):
            stream = KnowledgeStream(round=round, index=index, budget_tokens=128)
            reply = "- EXPERIENCE: the exit sign is [ship]"
            stream.add_reply(reply, seed=index, won=False, game="hidden-rule")
            save_stream(stream, layout.knowledge_root(round))
        summary = {"streams": 2, "items": [1, 1]}
    elif stage == DEPLOYMENT:
        write_parquet_atomic([{"prompt": "p", "oel_knowledge": "k"}] * 4, directory / "prompts.parquet")
        summary = {"turn_prompts": 4}
    elif stage == CONSOLIDATION:
        hf_model = directory / "actor" / "huggingface"
        shutil.copytree(state.spec.base_model, hf_model)
        summary = {"hf_model": str(hf_model), "steps": 2}
    elif stage == CHECKPOINT:
        summary = publish_checkpoint(state, round)
    state.mark_done(round, stage, summary)


def _build_run(run_dir: Path, base_model: Path, until: tuple[int, str] | None) -> None:
    """Every stage of the plan, in order, up to (not including) ``until``; the whole run if None."""
    with RunState.open(run_dir, _spec(base_model)) as state:
        while (step := state.next_stage()) is not None and step != until:
            _run_stage(state, *step)


def _files(run_dir: Path) -> dict[str, str]:
    return {
        str(path.relative_to(run_dir)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(run_dir.rglob("*"))
        if path.is_file() and path.name != "run.lock"
    }


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


# (what is damaged, the run built up to, the damage, the file the message must name, the stage it names)
DAMAGES = {
    "truncated knowledge file": (
        None,
        lambda layout: _truncate(stream_path(layout.knowledge_root(1), 1, 1)),
        lambda layout: stream_path(layout.knowledge_root(1), 1, 1),
        "round 1's extraction stage, marked done",
    ),
    "deleted checkpoint folder": (
        None,
        lambda layout: shutil.rmtree(layout.checkpoint_dir(1)),
        lambda layout: layout.checkpoint_dir(1),
        "round 1's checkpoint stage, marked done",
    ),
    "truncated checkpoint weights": (
        None,
        lambda layout: _truncate(layout.checkpoint_dir(2) / "model.safetensors"),
        lambda layout: layout.checkpoint_dir(2) / "model.safetensors",
        "round 2's checkpoint stage, marked done",
    ),
    # Consolidated, not yet checkpointed: consolidation's folder is the model a resumed launch starts from.
    "consolidation's model deleted before its checkpoint": (
        (2, CHECKPOINT),
        lambda layout: shutil.rmtree(layout.stage_dir(2, CONSOLIDATION) / "actor" / "huggingface"),
        lambda layout: layout.stage_dir(2, CONSOLIDATION) / "actor" / "huggingface",
        "round 2's consolidation stage, marked done",
    ),
    "a marker whose files are gone (deployment rows before consolidation)": (
        (2, CONSOLIDATION),
        lambda layout: (layout.deployment_dir(2) / "prompts.parquet").unlink(),
        lambda layout: layout.deployment_dir(2) / "prompts.parquet",
        "round 2's deployment stage, marked done",
    ),
    "truncated eval.json": (
        None,
        lambda layout: _truncate(layout.eval_json(1)),
        lambda layout: layout.eval_json(1),
        "round 1's evaluation stage, marked done",
    ),
    "truncated stages.json": (
        (2, DEPLOYMENT),
        lambda layout: _truncate(layout.stages_json(2)),
        lambda layout: layout.stages_json(2),
        "round 2's stage markers",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGES))
def test_a_damaged_run_directory_is_refused_naming_the_file_and_nothing_is_changed(
    case, tmp_path, tiny_model_dir
):
    until, damage, damaged_file, where = DAMAGES[case]
    run_dir = tmp_path / "run"
    _build_run(run_dir, tiny_model_dir, until)
    layout = RunLayout(run_dir.resolve())
    with RunState.open(run_dir, _spec(tiny_model_dir)) as state:
        check_finished_outputs(state)  # whole before the damage
    damage(layout)
    before = _files(run_dir)
    with RunState.open(run_dir, _spec(tiny_model_dir)) as state:
        with pytest.raises(DamagedRunError) as caught:
            check_finished_outputs(state)
    message = str(caught.value)
    assert str(damaged_file(layout)) in message and f"({where})" in message, message
    round = 1 if "round 1" in where else 2
    start = tiny_model_dir if round == 1 else layout.checkpoint_dir(1)
    # The cure: restore the file, or redo the round (and later ones) from the model it starts from.
    cure = f"delete rounds/round_00{round} and every later round's folder to redo those rounds from {start}"
    assert cure in message, message
    # Nothing was repaired, removed or rewritten (run.json only gains the two openings' session entries).
    after = _files(run_dir)
    assert {k: v for k, v in after.items() if k != "run.json"} == {
        k: v for k, v in before.items() if k != "run.json"
    }


def test_a_round_that_skipped_its_deployment_is_whole_without_deployment_rows(tmp_path, tiny_model_dir):
    """A round with nothing to consolidate (no knowledge) plays no deployment games: no rows to check."""
    run_dir = tmp_path / "run"
    _build_run(run_dir, tiny_model_dir, (2, DEPLOYMENT))
    with RunState.open(run_dir, _spec(tiny_model_dir)) as state:
        state.stage_dir_for_retry(2, DEPLOYMENT)
        state.mark_done(2, DEPLOYMENT, {"skipped": "no knowledge: the round's extraction kept no item"})
        check_finished_outputs(state)  # a deployment that played and lost its rows is refused (DAMAGES)
        assert not (state.layout.deployment_dir(2) / "prompts.parquet").exists()


def test_a_truncated_run_json_or_an_edited_recipe_is_refused_before_anything_is_written(
    tmp_path, tiny_model_dir
):
    run_dir = tmp_path / "run"
    _build_run(run_dir, tiny_model_dir, (1, CONSOLIDATION))
    before = _files(run_dir)
    with pytest.raises(RunConfigMismatchError, match=r"actor\.lr: 0\.001 in run\.json, 0\.5 now"):
        RunState.open(run_dir, _spec(tiny_model_dir, lr=0.5))
    assert _files(run_dir) == before
    _truncate(run_dir / "run.json")
    before = _files(run_dir)
    with pytest.raises(DamagedRunError, match=r"run\.json is unreadable .*Restore the file"):
        RunState.open(run_dir, _spec(tiny_model_dir))
    assert _files(run_dir) == before


def test_a_full_disk_during_a_checkpoint_keeps_every_model_whole_and_the_run_resumes(
    tmp_path, tiny_model_dir
):
    """The copy runs in a process whose files may not grow past 1 MiB (``RLIMIT_FSIZE``: every write past
    it fails with EFBIG, as a full disk fails with ENOSPC), so the 8 MB weights file cannot be copied."""
    run_dir = tmp_path / "run"
    _build_run(run_dir, tiny_model_dir, (2, CHECKPOINT))
    layout = RunLayout(run_dir.resolve())
    before = _files(run_dir)
    assert (tiny_model_dir / "model.safetensors").stat().st_size > 4 * 2**20
    attempt = f"""
import resource, signal, sys
from pathlib import Path
from verl_oel.oel.run_state import RunLayout, RunState, read_run_spec, CHECKPOINT
from verl_oel.oel.trainer import publish_checkpoint
layout = RunLayout(Path({str(run_dir)!r}))
with RunState.open(layout.run_dir, read_run_spec(layout)) as state:
    state.stage_dir_for_retry(2, CHECKPOINT)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (2**20, 2**20))
    summary = publish_checkpoint(state, 2)
    state.mark_done(2, CHECKPOINT, summary)
"""
    failed = subprocess.run([sys.executable, "-c", attempt], cwd=REPO_ROOT, capture_output=True, text=True)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-3000:]
    # Round 1's checkpoint, round 2's consolidated model and every marker are as they were; no copy is left.
    after = _files(run_dir)
    kept = {k: v for k, v in before.items() if k != "run.json"}
    assert {k: after.get(k) for k in kept} == kept
    assert not list(layout.checkpoint_dir(2).iterdir()) and not leftover_temporaries(layout.checkpoint_dir(2))
    # The run is resumable where it stopped: the same stage again, and it completes once there is room.
    with RunState.open(run_dir, read_run_spec(layout)) as state:
        check_finished_outputs(state)
        assert state.next_stage() == (2, CHECKPOINT)
        _run_stage(state, 2, CHECKPOINT)
        assert state.next_stage() is None
        check_finished_outputs(state)
    consolidated = layout.stage_dir(2, CONSOLIDATION) / "actor" / "huggingface" / "model.safetensors"
    assert (layout.checkpoint_dir(2) / "model.safetensors").read_bytes() == consolidated.read_bytes()


def test_the_launcher_refuses_a_damaged_run_before_verl_starts(tmp_path, tiny_model_dir):
    from oel_testing import run_verl_oel

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text('{"format_version": 2, "base_mo')  # a write cut short by hand
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            "oel_cpu_tiny",
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"trainer.default_local_dir={run_dir}",
        ],
        timeout=300,
    )
    assert proc.returncode == 2, (proc.stdout[-2000:], proc.stderr[-2000:])
    assert f"{run_dir / 'run.json'} is unreadable" in proc.stderr, proc.stderr[-2000:]
    assert (run_dir / "run.json").read_text() == '{"format_version": 2, "base_mo'
    assert not (run_dir / "logs").exists()  # verl never started
