"""A multi-round OEL run on disk, and the stage state machine that makes it resumable.

An OEL run takes hours to days and will be killed at some point (preemption, OOM, a
``kill -9``). Resuming must neither repeat a finished stage (a second extraction would give
different knowledge; a second consolidation would train twice) nor trust a half-written one.
So every stage ends by writing a marker, atomically, AFTER its outputs are whole on disk: a
stage is done exactly when its marker exists, and anything a stage left without its marker
is removed before that stage runs again.

Layout of ``RUN_DIR``::

    run.json                    the run's resolved config snapshot, base model, rounds, seed and
                                skipped stages, plus one entry per process that opened it
    run.lock                    fcntl lock held by the process running the run (holds its pid)
    logs/                       per verl launch: its output (verl_STAMP.log) and tracked metrics
                                (metrics_STAMP.jsonl, verl's file logger)
    rounds/round_{r:03d}/
        stages.json             done markers: {stage: {"done_at": ..., "summary": {...}}}
        teacher/                teacher_refresh outputs
        knowledge/              extraction outputs; the knowledge room's root, so the streams
                                are knowledge/round_{r:03d}/stream_{s:02d}.json (+ .md)
        in_context/             in-context evaluation work: the held-out games played by the round's
                                teacher pi_{r-1} with the round's knowledge in its prompt
        deployment/             deployment outputs: the saved per-turn prompts (parquet)
        consolidation/          consolidation work: verl's own checkpoints and logs
        metrics.jsonl           consolidation's step log (verl's file logger), owned by consolidation
        checkpoint/             checkpoint output: the round's final model as an HF folder (pi_r)
        evaluation/             evaluation work: game data, verl logs
        eval.json               evaluation result (schema: ``verl_oel.oel.round_eval.RoundEval``)
    report.json, report.md, report.png    written by ``verl_oel.oel.report.render_report``

Round 0 is the base model's evaluation (stage ``evaluation`` only); rounds 1..R run
``STAGES`` in order, less the stages the run skips.
"""

from __future__ import annotations

import contextlib
import fcntl
import fnmatch
import json
import os
import shutil
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from verl_oel.atomic_io import leftover_temporaries, write_text_atomic

FORMAT_VERSION = 2
"""Of run.json, stages.json and eval.json. 2: the ``in_context`` stage (a version-1 run's rounds lack it, and
its eval.json measured "with knowledge in context" on the consolidated model, not the teacher)."""

# The stage names, as written in the run's state file and folder names: spell them through these.
TEACHER_REFRESH = "teacher_refresh"
EXTRACTION = "extraction"
IN_CONTEXT = "in_context"
DEPLOYMENT = "deployment"
CONSOLIDATION = "consolidation"
EVALUATION = "evaluation"
CHECKPOINT = "checkpoint"

STAGES: tuple[str, ...] = (
    TEACHER_REFRESH,
    EXTRACTION,
    IN_CONTEXT,
    DEPLOYMENT,
    CONSOLIDATION,
    EVALUATION,
    CHECKPOINT,
)
"""The stages of rounds 1..R, in the order they run. ``in_context`` runs before consolidation, so that
"with knowledge in context" is measured on the round's teacher (pi_{r-1}), the model the rollout server
still holds then."""

BASE_ROUND_STAGES: tuple[str, ...] = (EVALUATION,)
"""Round 0 only evaluates the base model, the reference every later round is read against."""


@dataclass(frozen=True)
class StageOutputs:
    """What a stage owns inside its round folder: removed whole when an unfinished stage reruns."""

    subdir: str
    files: tuple[str, ...] = ()


STAGE_OUTPUTS: Mapping[str, StageOutputs] = {
    TEACHER_REFRESH: StageOutputs("teacher"),
    EXTRACTION: StageOutputs("knowledge"),
    IN_CONTEXT: StageOutputs("in_context"),
    DEPLOYMENT: StageOutputs("deployment"),
    CONSOLIDATION: StageOutputs("consolidation", ("metrics.jsonl",)),
    EVALUATION: StageOutputs("evaluation", ("eval.json",)),
    CHECKPOINT: StageOutputs("checkpoint"),
}

_REQUIRED_BY: Mapping[str, tuple[str, ...]] = {
    # Consolidation distils the teacher (refreshed, with extracted knowledge) on deployment prompts,
    # and its model is only kept through the checkpoint stage.
    CONSOLIDATION: (TEACHER_REFRESH, EXTRACTION, DEPLOYMENT, CHECKPOINT),
    # The teacher's evaluation reads the round's knowledge.
    IN_CONTEXT: (EXTRACTION,),
    # A checkpoint without consolidation would copy the previous model under a new name.
    CHECKPOINT: (CONSOLIDATION,),
}

SAFE_TO_CHANGE: tuple[str, ...] = (
    "run.rounds",
    "trainer.logger",
    "trainer.project_name",
    "trainer.experiment_name",
    "trainer.log_val_generations",
)
"""Keys (``fnmatch`` patterns over dotted names) a resumed run may change: they alter what is logged
or how far the run goes, never what a finished stage computed. ``run.rounds`` may grow to extend a run."""


class RunConfigMismatchError(ValueError):
    """A resumed run whose settings differ from the ones its finished stages were computed with."""


class DamagedRunError(RuntimeError):
    """A run directory whose files are missing or unreadable; the message names the file and what to do
    (``run_integrity.check_finished_outputs`` checks every finished stage before a run restarts)."""


class RunLockedError(RuntimeError):
    """Another live process holds the run directory."""


class StageOrderError(RuntimeError):
    """A stage marked or retried out of order: a trainer bug that would lose or repeat work."""


class NextStage(NamedTuple):
    round: int
    stage: str


@dataclass(frozen=True)
class RunSpec:
    """What defines a run; a resume must present the same spec (up to ``SAFE_TO_CHANGE``).

    ``base_model`` is kept as given (a local folder or a hub id); pass an absolute path for a
    folder so a resume from another working directory finds it. ``config`` is the resolved
    config as plain JSON data (e.g. ``OmegaConf.to_container(cfg, resolve=True)``).
    """

    base_model: str
    rounds: int
    seed: int
    config: Mapping[str, Any] = field(default_factory=dict)
    skip_stages: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ValueError(f"rounds={self.rounds} must be >= 1")
        unknown = sorted(set(self.skip_stages) - set(STAGES))
        if unknown:
            raise ValueError(f"skip_stages: unknown stages {unknown}; the stages are {list(STAGES)}")
        for stage, needed in _REQUIRED_BY.items():
            missing = [name for name in needed if name in self.skip_stages]
            if stage not in self.skip_stages and missing:
                raise ValueError(f"skip_stages skips {missing}, which stage {stage!r} needs; skip it too")
        try:
            json.dumps(self.config, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ValueError(f"config must be plain JSON data for run.json's snapshot: {error}") from error

    def round_stages(self, round: int) -> tuple[str, ...]:
        if round == 0:
            return BASE_ROUND_STAGES
        return tuple(stage for stage in STAGES if stage not in self.skip_stages)

    def to_json(self) -> dict[str, Any]:
        return {
            "base_model": self.base_model,
            "rounds": self.rounds,
            "seed": self.seed,
            "skip_stages": list(self.skip_stages),
            "config": self.config,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> RunSpec:
        return cls(
            base_model=document["base_model"],
            rounds=document["rounds"],
            seed=document["seed"],
            config=document["config"],
            skip_stages=tuple(document["skip_stages"]),
        )


@dataclass(frozen=True)
class RunLayout:
    """Every path of a run, in one place; pure, so readers (the report) share it with the writer."""

    run_dir: Path

    @property
    def run_json(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def logs_dir(self) -> Path:
        """verl's output and tracked metrics: ``verl_STAMP.log`` and ``metrics_STAMP.jsonl`` per launch."""
        return self.run_dir / "logs"

    @property
    def lock_file(self) -> Path:
        return self.run_dir / "run.lock"

    @property
    def rounds_dir(self) -> Path:
        return self.run_dir / "rounds"

    def round_dir(self, round: int) -> Path:
        return self.rounds_dir / f"round_{round:03d}"

    def stages_json(self, round: int) -> Path:
        return self.round_dir(round) / "stages.json"

    def stage_dir(self, round: int, stage: str) -> Path:
        return self.round_dir(round) / STAGE_OUTPUTS[stage].subdir

    def knowledge_root(self, round: int) -> Path:
        """The ``root`` to hand to ``verl_oel.knowledge.save_store`` / ``load_store``."""
        return self.stage_dir(round, EXTRACTION)

    def deployment_dir(self, round: int) -> Path:
        return self.stage_dir(round, DEPLOYMENT)

    def checkpoint_dir(self, round: int) -> Path:
        return self.stage_dir(round, CHECKPOINT)

    def eval_json(self, round: int) -> Path:
        return self.round_dir(round) / "eval.json"

    def ifbench_json(self, round: int) -> Path:
        """The round's IFBench replies and verdicts (``oel.ood.ifbench_prompts``), inside its evaluation."""
        return self.stage_dir(round, EVALUATION) / "ifbench.json"

    def metrics_jsonl(self, round: int) -> Path:
        return self.round_dir(round) / "metrics.jsonl"

    def existing_rounds(self) -> list[int]:
        """Round numbers that have a folder, whatever their state."""
        if not self.rounds_dir.is_dir():
            return []
        found = []
        for entry in self.rounds_dir.iterdir():
            name = entry.name
            if entry.is_dir() and name.startswith("round_") and name[len("round_") :].isdigit():
                found.append(int(name[len("round_") :]))
        return sorted(found)


def read_stage_markers(layout: RunLayout, round: int) -> dict[str, dict[str, Any]]:
    """The done markers of one round: ``{stage: {"done_at": iso time, "summary": {...}}}``."""
    path = layout.stages_json(round)
    if not path.exists():
        return {}
    document = json.loads(path.read_text(encoding="utf-8"))
    return document["stages"]


def read_run_spec(layout: RunLayout) -> RunSpec:
    return RunSpec.from_json(json.loads(layout.run_json.read_text(encoding="utf-8")))


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as ``{"a.b.c": leaf}``; lists are leaves, compared whole."""
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _comparable(spec: RunSpec) -> dict[str, Any]:
    """The spec as flat keys, after a JSON round trip so a tuple compares equal to its stored list."""
    document = json.loads(json.dumps(spec.to_json()))
    config = document.pop("config")
    return {**{f"run.{key}": value for key, value in document.items()}, **flatten(config)}


def config_differences(stored: RunSpec, current: RunSpec) -> dict[str, tuple[Any, Any]]:
    """``{key: (stored value, current value)}`` for every key that differs; a missing key is ``None``."""
    old, new = _comparable(stored), _comparable(current)
    missing = object()
    differences = {}
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key, missing), new.get(key, missing)
        if before != after:
            differences[key] = (
                None if before is missing else before,
                None if after is missing else after,
            )
    return differences


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Serialise first, then replace atomically: a bad value raises before the old file is touched."""
    text = json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)


class RunState:
    """The open run: holds its lock, answers what to run next, records what finished.

    Use as a context manager (``with RunState.open(run_dir, spec) as state:``). Markers are read
    from disk on every call, so the files stay the single source of truth.
    """

    def __init__(self, layout: RunLayout, spec: RunSpec, lock_handle: Any) -> None:
        self.layout = layout
        self.spec = spec
        self._lock_handle = lock_handle

    @classmethod
    def open(
        cls,
        run_dir: str | os.PathLike[str],
        spec: RunSpec,
        safe_to_change: tuple[str, ...] = SAFE_TO_CHANGE,
    ) -> RunState:
        """Lock ``run_dir``, then start the run there or resume it.

        A resume with different settings fails naming every differing key, unless all of them
        match ``safe_to_change``; run.json then takes the new values, and each opening is logged
        in it with the keys it changed.
        """
        layout = RunLayout(Path(run_dir).resolve())
        layout.run_dir.mkdir(parents=True, exist_ok=True)
        lock_handle = _acquire_lock(layout)
        try:
            changed: list[str] = []
            sessions: list[dict[str, Any]] = []
            created_at = _now()
            if layout.run_json.exists():
                try:
                    stored_document = json.loads(layout.run_json.read_text(encoding="utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise DamagedRunError(
                        f"{layout.run_json} is unreadable ({error}): the run's settings and history are "
                        "lost. Restore the file, or start a new run elsewhere "
                        "(trainer.default_local_dir=DIR)."
                    ) from error
                if stored_document.get("format_version") != FORMAT_VERSION:
                    raise RunConfigMismatchError(
                        f"{layout.run_json}: format_version {stored_document.get('format_version')!r}; "
                        f"this version of verl-oel reads {FORMAT_VERSION}"
                    )
                differences = config_differences(RunSpec.from_json(stored_document), spec)
                unsafe = {
                    key: values
                    for key, values in differences.items()
                    if not any(fnmatch.fnmatchcase(key, pattern) for pattern in safe_to_change)
                }
                if unsafe:
                    lines = "\n".join(
                        f"  {key}: {before!r} in run.json, {after!r} now"
                        for key, (before, after) in unsafe.items()
                    )
                    raise RunConfigMismatchError(
                        f"{layout.run_dir} was started with different settings; differing keys:\n{lines}\n"
                        f"Resume with the stored values or start a new run directory. "
                        f"Keys that may change on resume: {list(safe_to_change)}"
                    )
                changed = sorted(differences)
                sessions = stored_document["sessions"]
                created_at = stored_document["created_at"]
            sessions.append({"opened_at": _now(), "pid": os.getpid(), "host": socket.gethostname()})
            if changed:
                sessions[-1]["changed_keys"] = changed
            _write_json(
                layout.run_json,
                {
                    "format_version": FORMAT_VERSION,
                    "created_at": created_at,
                    **spec.to_json(),
                    "sessions": sessions,
                },
            )
        except BaseException:
            lock_handle.close()
            raise
        return cls(layout, spec, lock_handle)

    @classmethod
    def attach(cls, run_dir: str | os.PathLike[str]) -> RunState:
        """The run that the process which launched this one opened and keeps locked.

        ``verl-oel train`` opens the run (lock, settings check) and then launches verl, whose trainer runs
        in another process: a Ray actor, which cannot share the launcher's lock. The launcher holds the
        lock for as long as the trainer lives, so the trainer works on the run under that lock, with the
        settings run.json recorded. The trainer may outlive a killed launcher by seconds; it then stops at
        its next change to the run (``LauncherGoneError``) instead of marking stages nobody holds."""
        layout = RunLayout(Path(run_dir).resolve())
        if not layout.run_json.is_file():
            raise FileNotFoundError(f"{layout.run_json} is missing: open the run with RunState.open first")
        return cls(layout, read_run_spec(layout), _LauncherLock(layout, _lock_holder(layout)))

    def start_model(self) -> str:
        """The model a (re)started run loads: the newest policy its finished stages produced.

        Before a round's consolidation it is the previous round's model (the round's extractor, teacher
        and student start); once consolidation is done, the round's own consolidated model, whose
        checkpoint and evaluation may still be pending. The loaded model is also the frozen teacher
        (verl's ref), which is right in both cases: a round's teacher is only read by its consolidation.
        """
        step = self.next_stage()
        if step is None:
            return self.round_model(self.spec.rounds)
        if step.round == 0:
            return self.spec.base_model
        if self.is_done(step.round, CONSOLIDATION):
            return str(self.summary(step.round, CONSOLIDATION)["hf_model"])
        return self.previous_model(step.round)

    def close(self) -> None:
        """Release the lock (the OS also releases it if the process dies)."""
        if self._lock_handle is not None and not isinstance(self._lock_handle, _LauncherLock):
            self._lock_handle.close()
        self._lock_handle = None

    def __enter__(self) -> RunState:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def plan(self) -> Iterator[NextStage]:
        """Every (round, stage) of the run in execution order, done or not."""
        for round in range(self.spec.rounds + 1):
            for stage in self.spec.round_stages(round):
                yield NextStage(round, stage)

    def is_done(self, round: int, stage: str) -> bool:
        return stage in read_stage_markers(self.layout, round)

    def next_stage(self) -> NextStage | None:
        """The first stage of the plan without a marker, or None when the whole run is done."""
        markers: dict[int, dict[str, Any]] = {}
        for step in self.plan():
            if step.round not in markers:
                markers[step.round] = read_stage_markers(self.layout, step.round)
            if step.stage not in markers[step.round]:
                return step
        return None

    def summary(self, round: int, stage: str) -> dict[str, Any]:
        """The summary a finished stage recorded (e.g. its timings and metrics)."""
        markers = read_stage_markers(self.layout, round)
        if stage not in markers:
            raise StageOrderError(f"round {round} stage {stage!r} is not done")
        return markers[stage]["summary"]

    def stage_dir(self, round: int, stage: str) -> Path:
        """Where a stage writes; created if absent, never emptied (see ``stage_dir_for_retry``)."""
        self._check_in_plan(round, stage)
        directory = self.layout.stage_dir(round, stage)
        directory.mkdir(parents=True, exist_ok=True)
        return directory

    def stage_dir_for_retry(self, round: int, stage: str) -> Path:
        """Empty the stage's own outputs (its subfolder and the round-level files it owns) and return the
        fresh subfolder. Call before (re)running a stage: a killed attempt's leftovers never mix with the
        new ones. Refuses a finished stage, whose outputs later stages rely on."""
        self._require_open()
        self._check_in_plan(round, stage)
        if self.is_done(round, stage):
            raise StageOrderError(f"round {round} stage {stage!r} is done; its outputs are kept")
        directory = self.layout.stage_dir(round, stage)
        if directory.is_symlink():
            directory.unlink()  # the link is the stage's; whatever it points to is not
        elif directory.exists():
            shutil.rmtree(directory)
        round_dir = self.layout.round_dir(round)
        for name in STAGE_OUTPUTS[stage].files:
            (round_dir / name).unlink(missing_ok=True)
            for temporary in leftover_temporaries(round_dir / name):  # a write killed midway
                temporary.unlink(missing_ok=True)
        directory.mkdir(parents=True)
        return directory

    def mark_done(self, round: int, stage: str, summary: Mapping[str, Any]) -> None:
        """Record that a stage finished; call only once its outputs are completely on disk.

        Only the stage ``next_stage()`` names may be marked, so a run can never have a gap.
        The summary must be small plain JSON data (by convention ``seconds`` for the stage's
        wall time, plus whatever metrics the trainer wants to keep).
        """
        self._require_open()
        expected = self.next_stage()
        if expected != (round, stage):
            raise StageOrderError(
                f"cannot mark round {round} stage {stage!r} done; the next stage is {expected}"
            )
        markers = read_stage_markers(self.layout, round)
        markers[stage] = {"done_at": _now(), "summary": dict(summary)}
        _write_json(
            self.layout.stages_json(round),
            {"format_version": FORMAT_VERSION, "round": round, "stages": markers},
        )

    def round_model(self, round: int) -> str:
        """The model a round ends with: the base for round 0 and for rounds that do not train,
        else the round's checkpoint folder (which must be marked done)."""
        if round == 0 or CHECKPOINT in self.spec.skip_stages:
            return self.spec.base_model
        if not self.is_done(round, CHECKPOINT):
            raise StageOrderError(f"round {round}'s model is not saved yet: its checkpoint stage is not done")
        return str(self.layout.checkpoint_dir(round))

    def previous_model(self, round: int) -> str:
        """The model round ``round`` (>= 1) starts from: its students' initial weights, its frozen
        teacher and its extractor (on-policy consistency). A string: the base may be a hub id."""
        if not 1 <= round <= self.spec.rounds:
            raise ValueError(f"round {round} is not in 1..{self.spec.rounds}")
        return self.round_model(round - 1)

    def _check_in_plan(self, round: int, stage: str) -> None:
        if not 0 <= round <= self.spec.rounds or stage not in self.spec.round_stages(round):
            raise StageOrderError(f"round {round} stage {stage!r} is not part of this run's plan")

    def _require_open(self) -> None:
        if self._lock_handle is None:
            raise RuntimeError("the run state was closed; reopen it to change the run")
        if isinstance(self._lock_handle, _LauncherLock):
            self._lock_handle.check()


class LauncherGoneError(RuntimeError):
    """An attached trainer whose launcher no longer holds the run's lock: the orphan of a killed launch."""


@dataclass(frozen=True)
class _LauncherLock:
    """The lock of a run attached to (``RunState.attach``): the launching process holds it.

    A killed launcher takes verl's driver with it, but Ray's workers, the trainer among them, notice only
    once their raylet is gone: seconds later on a loaded machine, in which they went on finishing and
    marking stages (seen 2026-12-02: a kill during round 1's evaluation, and the orphan trainer had marked
    the evaluation and the checkpoint and begun round 2 before it died). So before every change to the
    run the trainer checks that the lock is still held, by the holder it attached under; otherwise it
    stops, and the next launch reruns the unmarked stage."""

    layout: RunLayout
    holder: str

    def check(self) -> None:
        with open(self.layout.lock_file, "a+", encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held = True
            else:
                held = False  # nobody held it; closing the file releases it again
            handle.seek(0)
            holder = handle.read().strip()
        if not held or holder != self.holder:
            raise LauncherGoneError(
                f"{self.layout.run_dir}: the launch this trainer belongs to ({self.holder}) no longer "
                f"holds the run's lock ({'held by ' + holder if held else 'free'}); stopping without "
                "changing the run"
            )


def _lock_holder(layout: RunLayout) -> str:
    """Who holds (or last held) the run's lock: the line its holder wrote."""
    try:
        return layout.lock_file.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


@contextlib.contextmanager
def holding_run_lock(run_dir: str | os.PathLike[str]) -> Iterator[RunLayout]:
    """Hold ``run_dir``'s lock for a tool that changes the run without running it (``verl-oel clean``):
    ``RunLockedError`` while a launch holds it. The run must exist (its run.json)."""
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.run_json.is_file():
        raise FileNotFoundError(f"{layout.run_dir} is not an OEL run directory: it has no run.json")
    handle = _acquire_lock(layout)
    try:
        yield layout
    finally:
        handle.close()


def _acquire_lock(layout: RunLayout) -> Any:
    """An exclusive, non-blocking fcntl lock on ``run.lock``, freed by the OS when the holder dies,
    so a kill -9 never leaves a stale lock. The file records the holder for the error message."""
    # Append mode: opening must not wipe the holder's pid before we know we are the holder.
    handle = open(layout.lock_file, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "unknown pid"
        handle.close()
        raise RunLockedError(
            f"{layout.run_dir} is in use by another process ({holder}); two processes on one run "
            f"would corrupt it. Wait for it to end or stop it, then resume."
        ) from None
    handle.truncate(0)
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    handle.flush()
    return handle
