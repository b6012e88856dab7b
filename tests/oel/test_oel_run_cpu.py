"""``verl-oel train --config-name oel_cpu_tiny``: two whole OEL rounds in one verl launch on CPU, and the
same run killed (SIGKILL) inside round 1's consolidation, between round 1's consolidation and its
checkpoint, and inside round 2's extraction, resumed each time.

The random tiny model writes no knowledge items, so these runs keep each game's raw record as the knowledge
(``oel.extraction.knowledge_source=trajectories``, the ablation's setting): every stream of round 1 holds
text, the teacher reads a prompt other than the student's and consolidation follows a real gradient.

One uninterrupted run is the reference for every test here (module fixture): every artefact of both rounds
is checked on it, its extraction stage is checked as the standalone extraction launcher's test did (same
streams and games). What a killed-and-resumed run reproduces, checked here:
- round 1 up to its first optimizer step against the reference: knowledge, deployment data and the
  teacher's in-context pass rate bit for bit, the first step's KL to float32 round-off (1e-7 relative);
- the rest of round 1 within the measured run-to-run spread of CPU training (KL per step, final weights,
  pass rate);
- round 2 only partly against the reference: its games are played by pi_1, whose weights differ from the
  reference's by that spread, so its records (the knowledge) may be other text (in the run measured they
  were both empty: the trained random model's replies hold bytes the parser drops); the test compares its
  games and its teacher. Every stage finished before a kill is kept byte for byte by the resumed launch
  (never redone), in both rounds;
- every evaluation played the weights it reports on (``model_fingerprint``: round 1's after the kill that
  found it consolidated but not checkpointed is pi_1, not pi_0 again);
- what each killed launch left in /dev/shm is gone once the run has been started again.

The killed run's first attempt starts first and the reference as soon as that attempt's Ray cluster is up,
on the same machine; the attempt is killed while the reference goes on: two runs whose starts overlap (the
reference's ``ray.init`` meets a live cluster it must not join), each with its own Ray cluster and vLLM
engine, the reference finishing as if alone (every check of it here) and the killed one resuming.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch
from oel_testing import REPO_ROOT, read_metrics
from run_sockets import Listening, SocketWatch, session_members
from safetensors.torch import load_file

from verl_oel.console import console_output_problems
from verl_oel.knowledge import KnowledgeCounts, load_stream, stream_path
from verl_oel.oel import STAGES, RunLayout, load_round_eval
from verl_oel.oel.run_state import STAGE_OUTPUTS, read_stage_markers
from verl_oel.platform.shm import SHM_DIR

pytestmark = pytest.mark.verl

RUN_TIMEOUT = 1200

# How far the killed-and-resumed run was from the uninterrupted one in round 1, measured 2026-12-02 on two
# pairs of runs of this file (the larger of each): the first step's KL (same model, rows and samples; float32
# round-off of the passes only; 1.1e-7 both times), the second step's KL (after one update, whose float
# sums differ between two launches; 5.2e-4 and 4.7e-4), and the mean weight difference as a fraction of
# the mean weight change of round 1 (0.26 % and 0.27 %). The kill test's bounds are 10 times these (100 for
# the first KL, pure round-off).
MEASURED_SPREAD = {"first_kl_rel": 1.1e-7, "kl_rel": 5.2e-4, "weights_rel": 2.6e-3}

# Knowledge that is never empty in round 1 (see the module docstring): two raw 3-turn FrozenLake records (up
# to ~330 tokens each) fit a stream, and the lengths make room for them.
KNOWLEDGE = [
    "+oel.extraction.knowledge_source=trajectories",
    "oel.extraction.budget_tokens=768",
    "oel.max_knowledge_length=832",
    "actor_rollout_ref.rollout.max_model_len=2432",
]


def train_command(model: Path, run_dir: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "verl_oel.cli",
        "train",
        "--config-name",
        "oel_cpu_tiny",
        f"actor_rollout_ref.model.path={model}",
        f"trainer.default_local_dir={run_dir}",
        *KNOWLEDGE,
    ]


def start_run(model: Path, run_dir: Path, attempt: int) -> subprocess.Popen:
    """``verl-oel train`` in its own session, as a scheduler would run it (output kept per attempt)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log = open(run_dir.parent / f"{run_dir.name}.attempt{attempt}.log", "w")  # noqa: SIM115 (closed by the OS)
    return subprocess.Popen(
        train_command(model, run_dir),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=REPO_ROOT,
    )


def finish(process: subprocess.Popen, run_dir: Path, attempt: int) -> str:
    """Waits for a launch that must succeed; returns what it printed (its console)."""
    code = process.wait(timeout=RUN_TIMEOUT)
    log = (run_dir.parent / f"{run_dir.name}.attempt{attempt}.log").read_text()
    assert code == 0, log[-8000:]
    return log


def kill_when(process: subprocess.Popen, condition: Callable[[], bool], what: str) -> None:
    """SIGKILL the run's whole process group (launcher, verl, Ray, vLLM) as soon as ``condition`` holds."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        assert process.poll() is None, f"the run ended (code {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    # Ray puts each worker in its own process group; they exit once their raylet is gone. Wait for that,
    # so the resumed attempt never shares the machine with the killed one.
    deadline = time.monotonic() + 120
    while survivors := session_members(process.pid):
        assert time.monotonic() < deadline, f"processes of the killed run still alive: {survivors}"
        time.sleep(1)


@dataclass(frozen=True)
class Kill:
    """One kill point of the killed run: the stage it lands in and when (a check on the run's files)."""

    round: int
    stage: str
    ready: Callable[[RunLayout, Path], bool]


# The killed run's kill points, one per kind of stage, each in a launch of its own.
KILLS = [
    # A training stage: round 1's consolidation has trained on its knowledge (verl logged step 1 of 2).
    Kill(1, "consolidation", lambda layout, run_dir: _logged_step(run_dir, 1)),
    # Consolidated, not yet checkpointed: round 1's evaluation is playing pi_1, which exists only as
    # consolidation's HF folder; the resumed launch must start from that folder, not from pi_0.
    Kill(1, "evaluation", lambda layout, run_dir: _done(layout, 1, "consolidation")),
    # A validation stage of a later round: round 2's extraction (pi_1, from round 1's checkpoint) has saved
    # a game's knowledge, the stage is not finished.
    Kill(
        2,
        "extraction",
        lambda layout, run_dir: any((layout.knowledge_root(2) / "accumulated").rglob("*.json")),
    ),
    # (A kill between rounds, once round 1's checkpoint is marked, resumes from the same checkpoint as the
    # last one, so it adds a verl launch and no new path.)
]


@dataclass(frozen=True)
class Killed:
    """What a killed launch left: the files of the stages marked done, what it left in /dev/shm (as its
    ledger names them), and whether the reference run was still going on beside it when it was killed."""

    finished: dict[str, str]
    left_in_shm: list[str]
    beside_a_live_run: bool


def kill_attempt(
    process: subprocess.Popen, run_dir: Path, attempt: int, beside: subprocess.Popen | None = None
) -> Killed:
    """Kills attempt ``attempt`` of the killed run at its kill point; checks the kill found what it should.
    ``beside``: another run on the machine, whose being alive at the moment of the kill is recorded."""
    layout, kill = RunLayout(run_dir.resolve()), KILLS[attempt]
    beside_alive_at_kill = []

    def started_not_done() -> bool:
        started = layout.stage_dir(kill.round, kill.stage).is_dir()
        ready = started and not _done(layout, kill.round, kill.stage) and kill.ready(layout, run_dir)
        if ready:
            beside_alive_at_kill.append(beside is not None and beside.poll() is None)
        return ready

    kill_when(process, started_not_done, f"kill point {attempt}")
    # Once every process of the killed launch is gone, the run is where the kill found it: its trainer (a
    # Ray worker, which outlives the launcher by seconds) marked nothing more (run_state.py).
    assert not _done(layout, kill.round, kill.stage), (
        f"kill point {attempt}: {kill.stage} marked after the kill"
    )
    ledgers = (run_dir / "logs").glob("shm_*.txt")
    named = {name for ledger in ledgers for name in ledger.read_text().split()}
    left = sorted(name for name in named if (SHM_DIR / name).exists())
    return Killed(_finished_stage_files(layout), left, beside_alive_at_kill[-1])


@pytest.fixture(scope="module")
def overlapping_runs(tmp_path_factory, tiny_model_dir) -> tuple[Path, Killed]:
    """The uninterrupted reference run, started while the killed run's first attempt starts up: two
    runs on one machine, each with its own run directory, Ray cluster, vLLM engine and /dev/shm segments
    (README "Shared memory, and several runs on one machine"). The first attempt is killed at its kill
    point while the reference goes on; the reference must finish as if alone, the killed run must resume
    to its result (``test_a_run_killed_at_every_kind_of_stage_resumes_to_the_same_result``)."""
    root = tmp_path_factory.mktemp("oel")
    run_dir = root / "reference"
    # The killed run starts first, the reference once the killed run's Ray cluster is up: the reference
    # then starts its own cluster beside a live one (the case where a ray.init that joins whatever cluster
    # it finds would join it), and it stays behind the killed run, so it is still running at the kill. (Both
    # started at one moment, the run started second fell behind by 15-40 s, on this machine and on CI's;
    # the reference, started first, then once finished before the kill: round 2 may be an empty round.)
    killed_run = start_run(tiny_model_dir, root / "killed", 0)
    _wait_for_ray(killed_run, root / "killed")
    process = start_run(tiny_model_dir, run_dir, 0)
    # What the run listens on, sampled from its own processes while it runs (its own session).
    watch = SocketWatch(process.pid, run_dir).start()
    try:
        first_kill = kill_attempt(killed_run, root / "killed", 0, beside=process)
        console = finish(process, run_dir, 0)
    finally:
        watch.stop()
        if killed_run.poll() is None:
            os.killpg(killed_run.pid, signal.SIGKILL)
    (run_dir.parent / "reference.console").write_text(console)
    (run_dir.parent / "reference.sockets.json").write_text(
        json.dumps(
            {
                "server": watch.server,
                "answers": watch.answers,
                "seen": sorted([s.process, s.ip, s.port, s.torch_store] for s in watch.seen),
            }
        )
    )
    return run_dir, first_kill


@pytest.fixture(scope="module")
def reference_run(overlapping_runs) -> Path:
    return overlapping_runs[0]


def test_a_single_node_run_listens_on_loopback_only_and_its_server_wants_the_runs_key(reference_run):
    """Every socket the run's processes listen on (Ray's GCS, raylet, agents and workers, vLLM's HTTP
    server and engine) is on loopback but one: torch.distributed's rendezvous store of the FSDP workers,
    which torch binds to every interface (README "Security"). The server refuses requests without the
    run's API key and has no runtime LoRA endpoint (verl_oel/network.py)."""
    watched = json.loads((reference_run.parent / "reference.sockets.json").read_text())
    seen = [Listening(ip, port, process, store) for process, ip, port, store in watched["seen"]]
    by_process: dict[str, set[str]] = {}
    for s in seen:
        by_process.setdefault(s.process, set()).add(s.ip)
    print(f"listening: {len(seen)} sockets, {dict(sorted(by_process.items()))}")
    assert watched["server"], "verl's vLLM server address never appeared in the run's log"
    host, port = watched["server"].rsplit(":", 1)
    assert int(port) in {s.port for s in seen}, "the server's socket was never seen: the watch read nothing"
    assert len(by_process) >= 4, by_process  # gcs_server, raylet, workers, the server at least
    off_loopback = [s for s in seen if not s.on_loopback]
    assert all(s.torch_store and s.process == "ray::WorkerDict" for s in off_loopback), off_loopback
    expected = {"models without key": 401, "models with key": 200, "load adapter with key": 404}
    assert watched["answers"] == expected


def test_the_console_shows_one_line_per_stage_and_no_verl_output(reference_run):
    """verl's, Ray's and vLLM's output goes to the run's log; the console keeps the stage lines."""
    console = (reference_run.parent / "reference.console").read_text()
    assert not console_output_problems(console, max_lines=60, expect_stages=STAGES), console
    logs = list((reference_run / "logs").glob("verl_*.log"))
    assert len(logs) == 1 and "Started a local Ray instance" in logs[0].read_text()


def test_two_rounds_leave_every_artefact_and_round_two_learns_from_round_one(reference_run, tiny_model_dir):
    from verl_oel.oel.trainer import verify_hf_folder

    layout = RunLayout(reference_run.resolve())
    assert list(read_stage_markers(layout, 0)) == ["evaluation"]
    assert load_round_eval(layout.eval_json(0)).pass_rate_with_knowledge is None
    for round in (1, 2):
        markers = read_stage_markers(layout, round)
        assert list(markers) == list(STAGES)
        for index in range(2):
            stream = load_stream(stream_path(layout.knowledge_root(round), round, index))
            assert (stream.round, stream.index) == (round, index)
            assert all(item.text.startswith("## Game record") for item in stream.items)
            # Round 1 always holds records; in round 2 the trained random model's replies may put bytes in
            # a record that the parser drops as non-text, so a stream can end empty there.
            assert stream.items or round == 2
        checkpoint = layout.checkpoint_dir(round)
        assert markers["checkpoint"]["summary"]["model"] == str(checkpoint)
        verify_hf_folder(checkpoint)  # transformers loads it, with its chat template
        evaluation = load_round_eval(layout.eval_json(round))
        assert evaluation.knowledge_items == sum(markers["extraction"]["summary"]["items"])
        if evaluation.knowledge_items == 0:
            # Round 2 only (asserted above): nothing to consolidate, so pi_2 = pi_1, as
            # test_oel_empty_round_cpu.py checks such a round in full; here its checkpoint is round 1's.
            assert round == 2 and evaluation.consolidation is None and evaluation.consolidation_skipped
            assert [markers[s]["summary"].get("skipped") for s in ("in_context", "deployment")] == [
                evaluation.consolidation_skipped
            ] * 2
            ours, round_1 = (load_file(layout.checkpoint_dir(r) / "model.safetensors") for r in (2, 1))
            assert all(torch.equal(ours[name], round_1[name]) for name in round_1)
            continue
        prompts = pd.read_parquet(layout.deployment_dir(round) / "prompts.parquet")
        assert len(prompts) == markers["deployment"]["summary"]["turn_prompts"] >= 4
        assert len(list((layout.deployment_dir(round) / "episodes").glob("episode_*.json"))) == 4
        assert set(prompts["oel_knowledge"]) <= {
            load_stream(stream_path(layout.knowledge_root(round), round, i)).render() for i in range(2)
        }
        assert all([m["role"] for m in p] == ["system", "user"] for p in prompts["prompt"])
        # Consolidation's steps are numbered across rounds and logged per round.
        steps = read_metrics(layout.metrics_jsonl(round))
        assert sorted(steps) == [2 * round - 1, 2 * round]
        assert all("actor/oel/kl" in metrics for metrics in steps.values())
        assert evaluation.num_games == 4 and evaluation.consolidation.steps == 2
        # "With knowledge in context" is the in_context stage's: the teacher's, played before consolidation.
        assert evaluation.pass_rate_with_knowledge == markers["in_context"]["summary"]["pass_rate"]
        assert markers["in_context"]["summary"]["model"] == markers["teacher_refresh"]["summary"]["teacher"]
        # The teacher reads the knowledge, the student does not: the first step's KL is far from round-off.
        if round == 1:
            assert markers["consolidation"]["summary"]["kl"][0] > 1e-3

    # Round 1's teacher holds the base weights; round 2's holds round 1's final model, not the base.
    _, base = verify_hf_folder(tiny_model_dir)
    teacher = {r: read_stage_markers(layout, r)["teacher_refresh"]["summary"] for r in (1, 2)}
    round_1_model = read_stage_markers(layout, 1)["checkpoint"]["summary"]
    assert teacher[1]["teacher_fingerprint"] == pytest.approx(base, rel=1e-9)
    assert teacher[2]["teacher"] == round_1_model["model"]
    assert teacher[2]["teacher_fingerprint"] == pytest.approx(round_1_model["fingerprint"], rel=1e-9)
    assert teacher[2]["teacher_fingerprint"] != pytest.approx(base, rel=1e-9)
    # Each evaluation says which weights it played: the base in round 0, the teacher with the knowledge,
    # the round's own model without it.
    _assert_each_evaluation_played_its_model(layout, base)

    # Every stage also reached verl's tracking (here its file backend), and the report is whole.
    logs = list((reference_run / "logs").glob("metrics_*.jsonl"))
    logged = [json.loads(line)["data"] for path in logs for line in path.read_text().splitlines()]
    assert any("oel/extraction/pass_rate" in data for data in logged)
    report = json.loads((reference_run / "report.json").read_text())
    assert [entry["status"] for entry in report["rounds"]] == ["done"] * 3
    # The report lists each round's knowledge as the teacher read it: the streams' own items, in order.
    for round in (1, 2):
        shown = [
            [item["text"] for item in stream["items"]] for stream in report["rounds"][round]["knowledge"]
        ]
        streams = [load_stream(stream_path(layout.knowledge_root(round), round, i)) for i in range(2)]
        assert shown == [stream.texts() for stream in streams]
    assert (reference_run / "report.md").is_file() and (reference_run / "report.png").stat().st_size > 0


def test_a_run_killed_at_every_kind_of_stage_resumes_to_the_same_result(overlapping_runs, tiny_model_dir):
    from verl_oel.oel.trainer import verify_hf_folder

    reference_run, first_kill = overlapping_runs
    run_dir = reference_run.parent / "killed"
    layout = RunLayout(run_dir.resolve())

    # The first attempt was started beside the reference run and killed while it went on (the fixture);
    # each later one starts alone.
    assert first_kill.beside_a_live_run, "the reference run had ended before the first kill: no overlap"
    kills = [first_kill]
    for attempt in range(1, len(KILLS)):
        kills.append(kill_attempt(start_run(tiny_model_dir, run_dir, attempt), run_dir, attempt))
    finished_at_kill = [kill.finished for kill in kills]
    left_in_shm = [kill.left_in_shm for kill in kills]
    finish(start_run(tiny_model_dir, run_dir, len(kills)), run_dir, len(kills))
    # What the killed launches left in /dev/shm (measured: a kill leaves verl's weight-sync blocks and a
    # vLLM semaphore) was removed by the next start of the run; the last launch ended and cleaned up itself.
    # (The first kill's leftovers may already have gone with the reference's own cleanup at its end: it
    # removes what appeared during its launch that no live process uses.)
    print(f"left in /dev/shm by each kill: {left_in_shm}")
    assert any(left_in_shm), "no kill left anything in /dev/shm: the check below would prove nothing"
    assert not [name for names in left_in_shm for name in names if (SHM_DIR / name).exists()]
    # Every launch of both runs started a Ray cluster of its own (none joined its neighbour's).
    for verl_log in [*(run_dir / "logs").glob("verl_*.log"), *(reference_run / "logs").glob("verl_*.log")]:
        assert "Started a local Ray instance" in verl_log.read_text(), verl_log
    # Each attempt resumed where the previous one was killed: every launch after the first found work done.
    sessions = json.loads(layout.run_json.read_text())["sessions"]
    assert len(sessions) == len(kills) + 1
    # Nothing logged is lost: each launch kept its own metrics file, round 2's steps included.
    assert len(list((run_dir / "logs").glob("metrics_*.jsonl"))) == len(kills) + 1
    # Nothing finished is redone: every file of every stage marked done before a kill is still there,
    # byte for byte. (Checked on each kill's own files: it catches a resumed launch that reruns a finished
    # stage, even where the rerun would happen to compute the same bytes only by luck of the round-off.)
    final = _finished_stage_files(layout)
    for attempt, files in enumerate(finished_at_kill):
        assert files, f"nothing had finished at kill point {attempt}"
        assert {path: final.get(path) for path in files} == files, f"kill point {attempt}"

    reference = RunLayout(reference_run.resolve())
    # Round 1, up to its first optimizer step: bit for bit the same knowledge (raw records, not empty), the
    # same deployment rows and the teacher's in-context pass rate; the first step's KL to float round-off.
    for index in range(2):
        ours, theirs = (load_stream(stream_path(x.knowledge_root(1), 1, index)) for x in (layout, reference))
        assert ours.items and ours.render() == theirs.render()
    rows = [pd.read_parquet(x.deployment_dir(1) / "prompts.parquet") for x in (layout, reference)]
    pd.testing.assert_frame_equal(*rows)
    ours_eval, theirs_eval = (load_round_eval(x.eval_json(1)) for x in (layout, reference))
    assert ours_eval.pass_rate_with_knowledge == theirs_eval.pass_rate_with_knowledge
    kl = [read_stage_markers(x, 1)["consolidation"]["summary"]["kl"] for x in (layout, reference)]
    assert kl[1][0] > 1e-3
    assert kl[0][0] == pytest.approx(kl[1][0], rel=100 * MEASURED_SPREAD["first_kl_rel"])
    # The rest of round 1 within CPU training's run-to-run spread (two uninterrupted runs differ after the
    # first update: other thread timings, other float sums); MEASURED_SPREAD says what was seen.
    kl_rel = abs(kl[0][1] - kl[1][1]) / kl[1][1]
    start_w, ours_w, theirs_w = (
        load_file(folder / "model.safetensors")
        for folder in (tiny_model_dir, layout.checkpoint_dir(1), reference.checkpoint_dir(1))
    )
    between_runs = torch.cat([(ours_w[k] - theirs_w[k]).abs().flatten() for k in theirs_w]).mean()
    by_training = torch.cat([(theirs_w[k] - start_w[k]).abs().flatten() for k in theirs_w]).mean()
    weights_rel = float(between_runs / by_training)
    print(f"resume spread: second KL rel {kl_rel:.3g}, weights {weights_rel:.3g} of round 1's movement")
    assert kl_rel < 10 * MEASURED_SPREAD["kl_rel"], kl
    assert weights_rel < 10 * MEASURED_SPREAD["weights_rel"], (float(between_runs), float(by_training))
    assert ours_eval.pass_rate_no_knowledge == theirs_eval.pass_rate_no_knowledge
    # Round 2 plays the same games, from pi_1's checkpoint (not pi_0's weights, not the reference's).
    for index in range(2):
        seeds = [
            [json.loads(line)["seed"] for line in log.read_text().splitlines()]
            for log in (
                stream_path(x.knowledge_root(2) / "accumulated", 2, index).with_suffix(".log.jsonl")
                for x in (layout, reference)
            )
        ]
        assert seeds[0] == seeds[1] and len(seeds[0]) == 2
    teacher = read_stage_markers(layout, 2)["teacher_refresh"]["summary"]
    assert teacher["teacher"] == str(layout.checkpoint_dir(1))
    # Every evaluation of the resumed run played the weights it reports on; round 1's after the kill that
    # found it consolidated but not checkpointed: pi_1 from consolidation's folder, not pi_0 again.
    _assert_each_evaluation_played_its_model(layout, verify_hf_folder(tiny_model_dir)[1])


def _assert_each_evaluation_played_its_model(layout: RunLayout, base: list[float]) -> None:
    """The weights each evaluation stage played (the actor's fingerprint as it ran) are its model's: the
    base (round 0), the round's teacher (``in_context``), the round's checkpoint (``evaluation``); never
    the base after round 0."""
    from verl_oel.oel.trainer import verify_hf_folder

    assert read_stage_markers(layout, 0)["evaluation"]["summary"]["model_fingerprint"] == pytest.approx(
        base, rel=1e-9
    )
    for round in (1, 2):
        markers = {stage: marker["summary"] for stage, marker in read_stage_markers(layout, round).items()}
        if "skipped" not in markers["in_context"]:  # a round with no knowledge plays no in-context games
            assert markers["in_context"]["model_fingerprint"] == pytest.approx(
                markers["teacher_refresh"]["teacher_fingerprint"], rel=1e-9
            ), round
        _, checkpoint = verify_hf_folder(layout.checkpoint_dir(round))
        assert markers["evaluation"]["model_fingerprint"] == pytest.approx(checkpoint, rel=1e-9), round
        assert markers["evaluation"]["model_fingerprint"] != pytest.approx(base, rel=1e-9), round


def _finished_stage_files(layout: RunLayout) -> dict[str, str]:
    """sha256 of every file of every stage marked done (its folder and its files in the round folder)."""
    files = {}
    for round in layout.existing_rounds():
        for stage in read_stage_markers(layout, round):
            outputs = STAGE_OUTPUTS[stage]
            paths = [layout.stage_dir(round, stage), *(layout.round_dir(round) / f for f in outputs.files)]
            for path in paths:
                for file in [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()):
                    digest = hashlib.sha256(file.read_bytes()).hexdigest()
                    files[str(file.relative_to(layout.run_dir))] = digest
    return files


def test_extraction_writes_every_streams_knowledge_and_per_game_log(reference_run):
    """Each round's extraction: 2 streams of 2 FrozenLake games (oel_cpu_tiny's ``oel.extraction``)."""
    layout = RunLayout(reference_run.resolve())
    for round in (1, 2):
        root = layout.knowledge_root(round)
        seeds_by_stream = []
        for index in range(2):
            path = stream_path(root, round, index)
            stream = load_stream(path)  # validates the format, version and provenance fields
            assert (stream.round, stream.index) == (round, index)
            assert path.with_suffix(".md").is_file()
            assert all(item.round == round and item.stream == index for item in stream.items)
            accumulated = stream_path(root / "accumulated", round, index)
            log = [
                json.loads(line) for line in accumulated.with_suffix(".log.jsonl").read_text().splitlines()
            ]
            assert len(log) == 2 and all(entry["game"] == "frozenlake" for entry in log)
            # Every line of every extraction reply is accounted for: the stream's counts are its games'.
            per_game = sum((KnowledgeCounts(**entry["counts"]) for entry in log), KnowledgeCounts())
            assert load_stream(accumulated).counts == per_game
            seeds_by_stream.append([entry["seed"] for entry in log])
        # Streams play the same games (with different sampling seeds).
        assert seeds_by_stream[0] == seeds_by_stream[1]
        summary = read_stage_markers(layout, round)["extraction"]["summary"]
        assert summary["streams"] == 2 and len(summary["in_context_curve"]) == 2


def _wait_for_ray(process: subprocess.Popen, run_dir: Path) -> None:
    """Until the launch's verl log says its own Ray cluster started."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not any(
        "Started a local Ray instance" in log.read_text() for log in (run_dir / "logs").glob("verl_*.log")
    ):
        assert process.poll() is None, f"the run ended (code {process.returncode}) before starting Ray"
        assert time.monotonic() < deadline, "timed out waiting for the run's Ray cluster"
        time.sleep(0.2)


def _done(layout: RunLayout, round: int, stage: str) -> bool:
    return stage in read_stage_markers(layout, round) if layout.stages_json(round).is_file() else False


def _logged_step(run_dir: Path, step: int) -> bool:
    """Whether verl's file logger (one file per launch) has logged ``step``."""
    for path in (run_dir / "logs").glob("metrics_*.jsonl"):
        # Only lines already ended by their newline: the last one may be half-written while we read. (Not
        # "all but the last line": the step may be the last line until the stage has ended.)
        complete = path.read_text().split("\n")[:-1]
        if any(json.loads(line)["step"] == step for line in complete):
            return True
    return False
