# ruff: noqa: E501  (the recorded output keeps its real line lengths)
"""The console of ``verl-oel train`` / ``demo``: what a person sees, on recorded and synthesised output."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from verl_oel.cli import build_parser
from verl_oel.console import (
    ConsoleView,
    ProgressThrottle,
    StepProgress,
    console_output_problems,
    event_line,
    log_tail,
    parse_event,
    read_log_tail,
    stage_counts,
    stage_line,
    verl_step,
)
from verl_oel.launch import pump_output
from verl_oel.oel.run_state import RunLayout

# A chunk of a real oel_cpu_tiny launch's output (Ray's prefixes and colours kept, long lines cut).
RECORDED = textwrap.dedent(
    """\
    2026-12-01 20:31:02,118\tINFO worker.py:1942 -- Started a local Ray instance.
    \x1b[36m(TaskRunner pid=40211)\x1b[0m TaskRunner hostname: box, PID: 40211
    \x1b[36m(TaskRunner pid=40211)\x1b[0m WARNING 12-01 20:31:20 [__init__.py:108] Triton is not installed
    \x1b[36m(WorkerDict pid=40390)\x1b[0m INFO 12-01 20:31:40 [cpu_worker.py:77] OMP threads binding of Process 40390:
    \x1b[36m(TaskRunner pid=40211)\x1b[0m verl-oel oel: round 0: evaluation ...
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "stage_start", "round": 0, "stage": "evaluation"}
    \x1b[36m(AgentLoopWorker pid=40601)\x1b[0m INFO:2026-12-01 20:32:01,114:vLLM generate 16 tokens
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "stage_done", "round": 0, "stage": "evaluation", "summary": {"seconds": 12.4, "pass_rate": 0.25, "tokens_per_turn": 9.5}}
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "stage_start", "round": 1, "stage": "consolidation"}
    \x1b[36m(TaskRunner pid=40211)\x1b[0m step:1 - actor/oel/kl:0.41 - actor/lr:1e-05 - timing_s/step:3.2
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "progress", "round": 1, "stage": "consolidation", "done": 1, "total": 2}
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "progress", "round": 1, "stage": "consolidation", "done": 2, "total": 2} [repeated 2x across cluster]
    \x1b[36m(TaskRunner pid=40211)\x1b[0m @@verl-oel-event {"event": "stage_done", "round": 1, "stage": "consolidation", "summary": {"seconds": 75.0, "hf_model": "/r/x", "steps": 2, "kl_first": 0.41, "kl_last": 0.2, "kl": [0.41, 0.2]}}
    """
)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------------ events


def test_events_are_found_through_rays_prefix_colours_and_dedup_suffix():
    events = [event for line in RECORDED.splitlines() if (event := parse_event(line))]
    assert [e["event"] for e in events] == [
        "stage_start",
        "stage_done",
        "stage_start",
        "progress",
        "progress",
        "stage_done",
    ]
    assert events[1]["summary"]["pass_rate"] == 0.25
    assert events[4]["done"] == 2


def test_an_event_line_round_trips_and_other_lines_are_not_events():
    line = event_line("stage_done", round=2, stage="deployment", summary={"games": 32, "path": Path("/a")})
    assert parse_event("(TaskRunner pid=1) " + line) == {
        "event": "stage_done",
        "round": 2,
        "stage": "deployment",
        "summary": {"games": 32, "path": "/a"},
    }
    assert parse_event("verl-oel oel: round 1: extraction done {}") is None
    assert parse_event("@@verl-oel-event {not json") is None
    assert parse_event('@@verl-oel-event ["a list"]') is None


def test_verl_console_logger_steps_are_read():
    assert verl_step("\x1b[36m(TaskRunner pid=3)\x1b[0m step:12 - actor/loss:0.3 - critic/x:1") == 12
    assert verl_step("global_step:12 - x") is None
    assert verl_step("Training Progress: 50%|#####     | 1/2") is None


# ------------------------------------------------------------------------------------------ the view


def view(tmp_path: Path | None = None, **kwargs) -> tuple[ConsoleView, io.StringIO, Clock]:
    out, clock = io.StringIO(), Clock()
    throttle = ProgressThrottle(first=30, longest=600)
    console = ConsoleView(
        out=out, tty=False, run_dir=tmp_path, rounds=2, clock=clock, throttle=throttle, **kwargs
    )
    return console, out, clock


def test_recorded_output_gives_one_line_per_stage_and_no_verl_noise():
    console, out, _ = view(totals={"evaluation": 4, "consolidation": 2})
    for line in RECORDED.splitlines():
        console.feed(line)
    console.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].startswith("round 0/2  evaluation") and "12s" in lines[0]
    assert "pass rate 0.25 on 4 held-out games" in lines[0]
    assert lines[1].startswith("round 1/2  consolidation") and "1m15s" in lines[1]
    assert "2 steps, KL 0.410 -> 0.200" in lines[1]
    assert not console_output_problems(out.getvalue(), expect_stages=["evaluation", "consolidation"])


def test_every_stage_summary_reads_as_words():
    summaries = {
        "teacher_refresh": {
            "seconds": 1,
            "teacher": "/runs/x/rounds/round_000/checkpoint",
            "teacher_fingerprint": [1.0],
        },
        "extraction": {
            "seconds": 30,
            "streams": 2,
            "items": [3, 4],
            "pass_rate": [0.5, 0.25],
            "in_context_curve": [0.5],
        },
        "in_context": {
            "seconds": 10,
            "pass_rate": 0.75,
            "tokens_per_turn": 7.5,
            "model": "/runs/x/rounds/round_000/checkpoint",
        },
        "deployment": {"seconds": 40, "games": 32, "pass_rate": 0.375, "turn_prompts": 90},
        "evaluation": {"seconds": 20, "pass_rate": 0.5, "tokens_per_turn": 7.0},
        "checkpoint": {"seconds": 2, "model": "/runs/x/rounds/round_001/checkpoint", "parameters": 2_100_000},
    }
    lines = {
        stage: stage_line(1, stage, summary, 2, {"extraction": 4, "in_context": 32, "evaluation": 32})
        for stage, summary in summaries.items()
    }
    assert lines["teacher_refresh"].endswith("teacher = rounds/round_000/checkpoint")
    assert "7 knowledge items in 2 streams, 4 games, pass rate 0.38" in lines["extraction"]
    assert "32 games played, pass rate 0.38, 90 turn prompts saved" in lines["deployment"]
    assert lines["evaluation"].endswith("pass rate 0.50 on 32 held-out games")
    assert lines["in_context"].endswith(
        "pass rate 0.75 with the knowledge, 32 games, teacher rounds/round_000/checkpoint"
    )
    assert "2.1M parameters, saved rounds/round_001/checkpoint" in lines["checkpoint"]
    assert all(len(line) < 120 for line in lines.values()), lines


def test_progress_lines_are_bounded_however_long_the_stage():
    throttle = ProgressThrottle(first=30, longest=600)
    throttle.restart(0.0)
    printed = [
        t for t in range(0, 4 * 3600) if throttle.ready(float(t))
    ]  # a 4-hour stage, polled each second
    assert printed[:4] == [30, 90, 210, 450]
    assert len(printed) < 30
    assert all(b - a <= 600 for a, b in zip(printed, printed[1:], strict=False))


def test_deployment_progress_is_read_from_the_episodes_on_disk(tmp_path):
    layout = RunLayout(tmp_path)
    console, out, clock = view(tmp_path, totals={"deployment": 8})
    console.feed(event_line("stage_start", round=1, stage="deployment"))
    episodes = layout.deployment_dir(1) / "episodes"
    episodes.mkdir(parents=True)
    for second in range(1, 200):
        clock.now = float(second)
        if second % 20 == 0 and second <= 160:
            (episodes / f"episode_{second}.json").write_text("{}")
        console.tick()
    lines = out.getvalue().splitlines()
    assert lines[0] == "  ... round 1 deployment: 1/8 games, 30s"  # the first line after 30 s, then rarer
    assert lines[-1].startswith("  ... round 1 deployment: ") and "/8 games" in lines[-1]
    assert 2 <= len(lines) <= 4, lines
    assert stage_counts(tmp_path, 1, "deployment") == 8


def test_extraction_progress_counts_the_games_in_the_stream_logs(tmp_path):
    logs = RunLayout(tmp_path).knowledge_root(2) / "accumulated" / "round_002"
    logs.mkdir(parents=True)
    (logs / "stream_00.log.jsonl").write_text('{"won": true}\n{"won": false}\n')
    (logs / "stream_01.log.jsonl").write_text('{"won": true}\n')
    (logs / "stream_01.timing.json").write_text("{}")
    assert stage_counts(tmp_path, 2, "extraction") == 3
    assert stage_counts(tmp_path, 2, "evaluation") is None


def test_consolidation_steps_arrive_as_events(tmp_path):
    console, out, clock = view(tmp_path, totals={"consolidation": 8})
    console.feed(event_line("stage_start", round=1, stage="consolidation"))
    for step in range(1, 9):
        clock.now = step * 20.0
        console.feed(event_line("progress", round=1, stage="consolidation", done=step, total=8))
    assert out.getvalue().splitlines() == [
        "  ... round 1 consolidation: 2/8 steps, 40s",
        "  ... round 1 consolidation: 5/8 steps, 1m40s",
    ]


def test_a_plain_recipe_shows_its_training_steps():
    console, out, clock = view(totals={"training": 40}, count_steps=True)
    for step in range(1, 41):
        clock.now = step * 10.0
        console.feed(f"(TaskRunner pid=9) step:{step} - actor/pg_loss:0.1 - response_length/mean:7")
    assert console.steps_seen == 40
    lines = out.getvalue().splitlines()
    assert lines[0] == "  ... training: 4/40 steps, 30s" and 2 <= len(lines) <= 4, lines


def test_a_terminal_gets_one_redrawn_line_not_a_line_per_update(tmp_path):
    console = ConsoleView(
        out=(out := io.StringIO()), tty=True, run_dir=tmp_path, rounds=1, totals={"consolidation": 50}
    )
    console.feed(event_line("stage_start", round=1, stage="consolidation"))
    for step in range(1, 51):
        console.feed(event_line("progress", round=1, stage="consolidation", done=step, total=50))
    console.feed(
        event_line(
            "stage_done",
            round=1,
            stage="consolidation",
            summary={"seconds": 3, "steps": 50, "kl_first": 1, "kl_last": 0.5},
        )
    )
    console.close()
    text = out.getvalue()
    assert "round 1 consolidation: 50/50 steps" in text  # the bar, redrawn in place with \r
    assert text.count("\n") <= 3, text  # only the stage line (and the bars' clearing) end lines


def test_the_warm_builds_progress_is_four_lines_off_a_terminal():
    out = io.StringIO()
    progress = StepProgress("warm-up copy", 1000, out=out, tty=False)
    for step in range(1, 1001):
        progress.update(step, f"loss {1000 / step:.2f}")
    progress.close()
    lines = out.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"warm-up copy: {n}/1000" for n in (250, 500, 750, 1000)
    ]
    assert lines[-1].endswith("loss 1.00")


# ------------------------------------------------------------------------------------------ the log


def test_the_log_keeps_every_line_written_through_and_the_view_sees_them(tmp_path):
    """``pump_output`` on a real child process: each line reaches the log before the next is printed."""
    log_path = tmp_path / "verl.log"
    script = textwrap.dedent(
        f"""
        import sys, time, pathlib
        log = pathlib.Path({str(log_path)!r})
        for i in range(300):
            print(f"noise {{i}}", flush=True)
            if i == 150:
                time.sleep(0.3)  # the pump has written line 150 by now
                print("seen", log.read_text().count("\\n"), flush=True)
                print({event_line("stage_start", round=1, stage="deployment")!r}, flush=True)
        print("\\xff binary ends without a newline", end="", flush=True)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    console, out, _ = view()
    with open(log_path, "ab") as log:
        pump_output(child.stdout, log, console=console, tick_seconds=0.05)
    assert child.wait() == 0
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines[:151] == [f"noise {i}" for i in range(151)]
    assert "seen 151" in lines and len(lines) == 300 + 3
    assert lines[-1].endswith("binary ends without a newline")
    assert console.label == "round 1 deployment"
    assert out.getvalue() == ""  # nothing of the noise on the console


def test_a_failing_console_never_stops_the_log(tmp_path, capsys):
    class Broken:
        def feed(self, line):
            raise KeyError("round")

        def tick(self):
            raise AssertionError("never ticked once feed failed")

    child = subprocess.Popen(
        [sys.executable, "-c", "for i in range(100): print(i, flush=True)"], stdout=subprocess.PIPE
    )
    with open(tmp_path / "verl.log", "wb") as log:
        pump_output(child.stdout, log, console=Broken(), tick_seconds=0.01)
    assert child.wait() == 0
    assert (tmp_path / "verl.log").read_text().splitlines() == [str(i) for i in range(100)]
    assert capsys.readouterr().err.count("the console stopped") == 1


def test_the_failure_tail_starts_at_the_last_traceback():
    noise = [f"(WorkerDict pid=4) INFO line {i}" for i in range(2000)]
    first = ["Traceback (most recent call last):", '  File "a.py", line 1', "ValueError: an early one"]
    last = [
        "(TaskRunner pid=3) Traceback (most recent call last):",
        *[f'(TaskRunner pid=3)   File "verl/x{i}.py", line {i}, in f' for i in range(120)],
        "(TaskRunner pid=3) RuntimeError: deployment saved 3 of 4 episodes",
    ]
    lines = noise + first + noise + last + ["Error executing job with overrides: []"]
    tail = log_tail(lines)
    assert tail[0] == last[0] and tail[-1].startswith("Error executing job") and len(tail) == len(last) + 1
    assert log_tail(noise + ["oops"]) == noise[-79:] + ["oops"]  # no traceback: the last 80 lines
    huge = ["Traceback (most recent call last):", *noise]
    assert len(log_tail(huge)) == 400


def test_a_failed_launch_prints_the_traceback_and_the_logs_path(tmp_path):
    """A failing launch through the launcher's own code path, in a fresh process (the real stderr)."""
    log_path = tmp_path / "logs" / "verl.log"
    crash = tmp_path / "crash.py"
    crash.write_text("print('noise\\n' * 500)\nraise RuntimeError('the real cause')\n")
    code = textwrap.dedent(
        f"""
        import subprocess, sys, pathlib
        from verl_oel.console import ConsoleView, report_failure
        from verl_oel.launch import pump_output
        log_file = pathlib.Path({str(log_path)!r})
        log_file.parent.mkdir(parents=True)
        child = subprocess.Popen([sys.executable, {str(crash)!r}], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        with open(log_file, "wb") as log:
            pump_output(child.stdout, log, console=ConsoleView(tty=False))
        code = child.wait()
        report_failure(log_file, code)
        sys.exit(code)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "Traceback (most recent call last)" in proc.stderr
    assert "RuntimeError: the real cause" in proc.stderr
    assert str(log_path) in proc.stderr.splitlines()[-1]
    assert proc.stderr.count("noise") < 100  # the tail, not the whole log
    assert log_path.read_text().count("noise") == 500  # which keeps everything
    assert proc.stdout == ""
    assert "RuntimeError: the real cause" in read_log_tail(log_path)


# ------------------------------------------------------------------------------------------ checks


def test_the_console_check_catches_leaked_verl_output_and_long_consoles():
    good = "\n".join(
        ["verl-oel: run /tmp/r: 2 round(s) of frozenlake from /tmp/tiny"]
        + [f"round 1/2  {stage:<15}     12s  something" for stage in ("extraction", "deployment")]
    )
    assert console_output_problems(good, expect_stages=["extraction", "deployment"]) == []
    assert console_output_problems(good, expect_stages=["consolidation"]) == [
        "no line for stage 'consolidation'"
    ]
    assert any("log lines" in p for p in console_output_problems(good + "\n" + RECORDED))
    assert any("61 lines" in p for p in console_output_problems("\n".join(["x"] * 61)))


# ------------------------------------------------------------------------------------------ the CLI


def _actions(parser):
    return [action for action in parser._actions if action.dest != "help"]


def test_every_flag_of_every_subcommand_has_a_help_line():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert set(subparsers.choices) >= {"train", "make-data", "eval", "build-model", "report", "demo"}
    for name, sub in subparsers.choices.items():
        assert any(choice.dest == name for choice in subparsers._choices_actions), f"{name} has no help"
        for action in _actions(sub):
            assert action.help and action.help.strip(), (
                f"verl-oel {name} {action.option_strings or action.dest}"
            )


@pytest.mark.parametrize("command", ["train", "make-data", "eval", "build-model", "report", "demo"])
def test_help_output_has_no_bare_flag(command):
    """What a person reads: in ``--help``, every option line carries text after its name."""
    proc = subprocess.run(
        [sys.executable, "-m", "verl_oel.cli", command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    body = proc.stdout.split("\n\n", 1)[1]
    entries, current = [], None
    for line in body.splitlines():
        if line.startswith("  ") and not line.startswith("    "):
            current = [line.strip()]
            entries.append(current)
        elif current is not None and line.strip():
            current.append(line.strip())
    for entry in entries:
        flag_and_help = " ".join(entry)
        name = entry[0].split("  ")[0]
        assert flag_and_help != name, f"verl-oel {command}: {name} has no help"


def test_train_and_demo_take_the_verbose_flag():
    parser = build_parser()
    assert parser.parse_args(["train", "--config-name", "x", "-v", "a=1"]).verbose is True
    assert parser.parse_args(["demo", "--verbose"]).verbose is True
    assert parser.parse_args(["demo"]).verbose is False


def test_event_summaries_survive_json():
    summary = {"seconds": 1.5, "kl": [0.3, 0.2], "in_context_curve": [0.5], "hf_model": "/x"}
    assert parse_event(event_line("stage_done", round=1, stage="consolidation", summary=summary))[
        "summary"
    ] == json.loads(json.dumps(summary))
