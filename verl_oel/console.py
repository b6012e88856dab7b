"""The console of ``verl-oel train`` and ``verl-oel demo``: one line per stage, progress inside long stages.

verl, Ray and vLLM print hundreds of lines per launch; all of them go to the run's log file (written
through, line by line, so a crash loses nothing) and only with ``--verbose`` to the screen. What the screen
shows comes from two sources:

- events: lines the OEL trainer prints with ``EVENT_MARKER`` (``emit_event``): a stage starting, a stage
  done with its summary, a consolidation step done. They reach the launcher through Ray's log forwarding
  (which prefixes ``(TaskRunner pid=...)``), mixed with everything else; ``parse_event`` finds them;
- the run directory, polled while a stage runs: deployment episodes and extraction game logs are written
  game by game (``stage_counts``).

On a terminal the progress of the running stage redraws one line (tqdm); elsewhere (CI, pipes) it is
printed as plain lines at a decaying rate (``ProgressThrottle``: after 1 minute, then 2, 4... at most
every 10 minutes), so a long run never floods a log. On a failed launch ``log_tail`` gives the end of the
log (from the last Python traceback) and the launcher prints it with the log's path.

Everything here except ``ConsoleView``'s drawing is pure and tested on recorded output
(``tests/test_console.py``).
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

EVENT_MARKER = "@@verl-oel-event "
"""Prefix of the trainer's structured lines; unique enough never to occur in verl's own output."""

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --------------------------------------------------------------------------------------------- events


def log_problem(message: str) -> None:
    """A line for people reading the run's output (stderr), e.g. why a launch stopped and how to resume."""
    print(f"verl-oel oel: {message}", file=sys.stderr, flush=True)


def event_line(kind: str, **fields: Any) -> str:
    """One structured line: the marker, then a JSON object with ``event`` and the fields."""
    return EVENT_MARKER + json.dumps({"event": kind, **fields}, default=str, allow_nan=True)


def emit_event(kind: str, **fields: Any) -> None:
    """Print an event for the launcher's console (stderr, flushed: Ray forwards it at once)."""
    print(event_line(kind, **fields), file=sys.stderr, flush=True)


def parse_event(line: str) -> dict[str, Any] | None:
    """The event a line carries, wherever the marker sits in it (Ray prefixes and colours lines, and may
    append ``[repeated 2x across cluster]``); None for every other line, malformed ones included."""
    at = line.find(EVENT_MARKER)
    if at < 0:
        return None
    text = _ANSI.sub("", line[at + len(EVENT_MARKER) :]).strip()
    try:
        document, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("event"), str):
        return None
    return document


# --------------------------------------------------------------------------------------------- formatting


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h03m``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _rate(value: Any) -> str:
    if isinstance(value, list | tuple):
        value = sum(value) / len(value) if value else float("nan")
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return "?"


def _total(value: Any) -> Any:
    return sum(value) if isinstance(value, list | tuple) else value


def _short_path(path: Any) -> str:
    """A run's path by its last three parts (``rounds/round_001/checkpoint``): lines stay short."""
    return str(Path(*Path(str(path)).parts[-3:]))


def stage_details(stage: str, summary: Mapping[str, Any], totals: Mapping[str, int] | None = None) -> str:
    """What a finished stage did, in a few words, from the summary its done marker records."""
    totals = totals or {}
    if stage == "evaluation":
        games = totals.get("evaluation")
        text = f"pass rate {_rate(summary.get('pass_rate'))}"
        if games:
            text += f" on {games} held-out games"
        return text
    if stage == "in_context":
        games = totals.get("in_context")
        text = f"pass rate {_rate(summary.get('pass_rate'))} with the knowledge"
        if games:
            text += f", {games} games"
        return text + f", teacher {_short_path(summary.get('model', '?'))}"
    if stage == "extraction":
        games = totals.get("extraction")
        played = f", {games} games" if games else ""
        return (
            f"{_total(summary.get('items'))} knowledge items in {summary.get('streams')} streams"
            f"{played}, pass rate {_rate(summary.get('pass_rate'))}"
        )
    if stage == "deployment":
        return (
            f"{summary.get('games')} games played, pass rate {_rate(summary.get('pass_rate'))}, "
            f"{summary.get('turn_prompts')} turn prompts saved"
        )
    if stage == "consolidation":
        try:
            kl = f"KL {float(summary['kl_first']):.3f} -> {float(summary['kl_last']):.3f}"
        except (KeyError, TypeError, ValueError):
            kl = "KL ?"
        return f"{summary.get('steps')} steps, {kl}"
    if stage == "teacher_refresh":
        return f"teacher = {_short_path(summary.get('teacher', '?'))}"
    if stage == "checkpoint":
        parameters = summary.get("parameters")
        size = f"{parameters / 1e6:.1f}M parameters, " if isinstance(parameters, int | float) else ""
        return f"{size}saved {_short_path(summary.get('model', '?'))}"
    numbers = [f"{k} {v}" for k, v in summary.items() if isinstance(v, int | float) and k != "seconds"]
    return ", ".join(numbers[:4])


def stage_line(
    round: int,
    stage: str,
    summary: Mapping[str, Any],
    rounds: int | None = None,
    totals: Mapping[str, int] | None = None,
) -> str:
    """The one line a finished stage gets: round, stage, its counts and its seconds."""
    where = f"round {round}/{rounds}" if rounds else f"round {round}"
    seconds = summary.get("seconds")
    took = format_seconds(float(seconds)) if isinstance(seconds, int | float) else "?"
    return f"{where}  {stage:<15} {took:>7}  {stage_details(stage, summary, totals)}"


def progress_line(
    round: int, stage: str, done: int | None, total: int | None, unit: str, elapsed: float
) -> str:
    """A plain progress line (non-terminal output)."""
    count = ""
    if done is not None:
        count = f"{done}/{total} {unit}" if total else f"{done} {unit}"
        count += ", "
    return f"  ... round {round} {stage}: {count}{format_seconds(elapsed)}"


# --------------------------------------------------------------------------------------------- progress


@dataclass
class ProgressThrottle:
    """When plain (non-terminal) progress lines may be printed: the first ``first`` seconds into a stage,
    then at intervals doubling up to ``longest``; so a stage of length T prints about log2(T/first) lines
    (plus T/longest), never thousands. ``ready`` is pure in ``now``."""

    first: float = 60.0
    longest: float = 600.0
    started: float = 0.0
    next_at: float = 0.0
    interval: float = 0.0

    def restart(self, now: float) -> None:
        self.started = now
        self.interval = self.first
        self.next_at = now + self.first

    def ready(self, now: float) -> bool:
        """True (and the next slot scheduled) when a line may be printed at ``now``."""
        if now < self.next_at:
            return False
        self.interval = min(self.interval * 2, self.longest)
        self.next_at = now + self.interval
        return True


STAGE_UNITS = {
    "extraction": "games",
    "in_context": "games",
    "deployment": "games",
    "consolidation": "steps",
    "evaluation": "games",
    "training": "steps",
}


def _terminal() -> dict[str, int]:
    """tqdm's width and height (100x24 where the terminal reports none: a 0x0 pty would hide the bar)."""
    import shutil

    size = shutil.get_terminal_size((100, 24))
    return {"ncols": min(size.columns, 120), "nrows": size.lines or 24}


def _bar_format(counted: bool, has_total: bool) -> str:
    if counted and has_total:
        return "{desc}: {n_fmt}/{total_fmt}{unit} [{elapsed}]"
    if counted:
        return "{desc}: {n_fmt}{unit} [{elapsed}]"
    return "{desc} [{elapsed}]"


def stage_totals(oel: Mapping[str, Any]) -> dict[str, int]:
    """How much each stage does, from the resolved ``oel:`` section (``OELConfig``'s defaults otherwise)."""
    from verl_oel.oel.config import OELConfig

    loop = OELConfig.from_mapping(dict(oel))
    return {
        "extraction": loop.extraction.num_streams * loop.extraction.games_per_stream,
        "in_context": loop.evaluation.games,
        "deployment": loop.deployment.games,
        "consolidation": loop.consolidation_steps,
        "evaluation": loop.evaluation.games,
    }


def stage_counts(run_dir: Path, round: int, stage: str) -> int | None:
    """Units of work a running stage has already written to the run directory, or None where the stage
    writes nothing until it ends (evaluation, and consolidation, whose steps arrive as events)."""
    from verl_oel.oel.run_state import RunLayout

    layout = RunLayout(Path(run_dir))
    if stage == "deployment":
        episodes = layout.deployment_dir(round) / "episodes"
        return sum(1 for _ in episodes.glob("episode_*.json")) if episodes.is_dir() else 0
    if stage == "extraction":
        logs = layout.knowledge_root(round) / "accumulated" / f"round_{round:03d}"
        played = 0
        for path in logs.glob("stream_*.log.jsonl") if logs.is_dir() else ():
            try:
                played += sum(1 for line in path.read_text().splitlines() if line.strip())
            except OSError:  # replaced while read (write_atomic): counted on the next poll
                pass
        return played
    return None


# --------------------------------------------------------------------------------------------- the view


class ConsoleView:
    """Draws the run for a person: stage lines, and the running stage's progress.

    ``feed`` takes every output line of the launch (it reacts to events only); ``tick`` is called about
    once a second to refresh the progress from the run directory. ``tty``: redraw one line with tqdm;
    otherwise plain lines throttled by ``ProgressThrottle``.
    """

    def __init__(
        self,
        out: IO[str] | None = None,
        tty: bool | None = None,
        run_dir: Path | None = None,
        rounds: int | None = None,
        totals: Mapping[str, int] | None = None,
        throttle: ProgressThrottle | None = None,
        clock: Any = time.monotonic,
        count_steps: bool = False,
    ) -> None:
        self.out = out if out is not None else sys.stdout
        self.tty = bool(tty if tty is not None else getattr(self.out, "isatty", lambda: False)())
        self.run_dir = run_dir
        self.rounds = rounds
        self.totals = dict(totals or {})
        self.throttle = throttle or ProgressThrottle()
        self.clock = clock
        self.count_steps = count_steps
        self.steps_seen = 0
        self.stage: tuple[int, str] | None = None
        self.done: int | None = None
        self.bar: Any = None
        self.printed = 0
        self._begin(None, "starting verl (Ray, vLLM, workers)", self.clock())

    # -- input

    def feed(self, line: str) -> None:
        event = parse_event(line)
        if event is None:
            if self.count_steps and (step := verl_step(line)) is not None:
                if self.label != "training":
                    self._begin(None, "training", self.clock())
                self.steps_seen = max(self.steps_seen, step)
                self._set_done(step, self.clock())
            return
        now = self.clock()
        kind = event["event"]
        if kind == "stage_start":
            self._begin(int(event["round"]), str(event["stage"]), now)
        elif kind == "stage_done":
            self._end()
            self.write(
                stage_line(
                    int(event["round"]),
                    str(event["stage"]),
                    event.get("summary") or {},
                    self.rounds,
                    self.totals,
                )
            )
            self._begin(None, "verl", now)
        elif kind == "progress" and self.stage is not None and self.stage[1] == event.get("stage"):
            self._set_done(int(event["done"]), now)

    def tick(self) -> None:
        now = self.clock()
        if self.stage is not None and self.run_dir is not None:
            counted = stage_counts(self.run_dir, *self.stage)
            if counted is not None and counted != self.done:
                self._set_done(counted, now)
                return
        self._show(now)

    def close(self) -> None:
        self._end()

    # -- output

    def write(self, text: str) -> None:
        """A permanent line (above the progress bar on a terminal)."""
        if self.bar is not None:
            self.bar.clear()
        self.out.write(text + "\n")
        self.out.flush()
        self.printed += 1
        if self.bar is not None:
            self.bar.refresh()

    # -- internals

    def _begin(self, round: int | None, stage: str, now: float) -> None:
        self._end()
        self.stage = (round, stage) if round is not None else None
        self.label = f"round {round} {stage}" if round is not None else stage
        self.done = None
        self.total = self.totals.get(stage)
        self.unit = STAGE_UNITS.get(stage, "")
        if round is not None and stage == "evaluation":
            self.unit = ""  # played in one batch: no count to show, only the time
        self.started = now
        self.throttle.restart(now)
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total if self.unit else None,
                desc=self.label,
                unit=f" {self.unit}" if self.unit else "",
                file=self.out,
                leave=False,
                **_terminal(),
                bar_format=_bar_format(bool(self.unit), bool(self.total)),
            )

    def _set_done(self, done: int, now: float) -> None:
        self.done = done
        if self.bar is not None:
            self.bar.n = done
        self._show(now)

    def _show(self, now: float) -> None:
        if self.bar is not None:
            self.bar.refresh()
            return
        if self.throttle.ready(now):
            round = self.stage[0] if self.stage else None
            if round is None:
                count = ""
                if self.done is not None and self.unit:
                    count = (
                        f"{self.done}/{self.total} {self.unit}, "
                        if self.total
                        else f"{self.done} {self.unit}, "
                    )
                self.write(f"  ... {self.label}: {count}{format_seconds(now - self.started)}")
            else:
                self.write(
                    progress_line(
                        round,
                        self.label.split(" ", 2)[2],
                        self.done,
                        self.total,
                        self.unit,
                        now - self.started,
                    )
                )

    def _end(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_VERL_STEP = re.compile(r"(?:^|[\s)])step:(\d+) - ")


def verl_step(line: str) -> int | None:
    """The step of verl's console-logger line (``step:12 - actor/loss:... - ...``), else None."""
    match = _VERL_STEP.search(_ANSI.sub("", line))
    return int(match.group(1)) if match else None


class StepProgress:
    """Progress of a loop of ``total`` steps (the warm model's training): a tqdm bar on a terminal, else a
    plain line at 25%, 50%, 75% and 100% (four lines however long the loop)."""

    def __init__(self, label: str, total: int, out: IO[str] | None = None, tty: bool | None = None) -> None:
        self.label, self.total = label, total
        self.out = out if out is not None else sys.stderr
        self.tty = bool(tty if tty is not None else getattr(self.out, "isatty", lambda: False)())
        self.started = time.monotonic()
        self.next_quarter = 1
        self.bar = None
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=label, file=self.out, leave=True, **_terminal())

    def update(self, done: int, note: str = "") -> None:
        if self.bar is not None:
            self.bar.n = done
            if note:
                self.bar.set_postfix_str(note, refresh=False)
            self.bar.refresh()
            return
        if self.total and done * 4 >= self.next_quarter * self.total:
            while self.next_quarter <= 4 and done * 4 >= self.next_quarter * self.total:
                self.next_quarter += 1
            took = format_seconds(time.monotonic() - self.started)
            suffix = f" {note}" if note else ""
            print(f"{self.label}: {done}/{self.total} ({took}){suffix}", file=self.out, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------------------- the log


TRACEBACK = "Traceback (most recent call last)"


def log_tail(lines: list[str], at_least: int = 80, at_most: int = 400) -> list[str]:
    """The end of a failed launch's output: from the last Python traceback on (Ray's error, which quotes
    the worker's traceback, ends the output), and never fewer than ``at_least`` lines nor more than
    ``at_most``."""
    start = max(0, len(lines) - at_least)
    for index in range(len(lines) - 1, -1, -1):
        if TRACEBACK in lines[index]:
            start = min(start, index)
            break
    return lines[max(start, len(lines) - at_most) :]


def read_log_tail(path: Path, at_least: int = 80, at_most: int = 400) -> str:
    """``log_tail`` of a log file, as text (undecodable bytes replaced)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as error:
        return f"(cannot read {path}: {error})"
    return "\n".join(log_tail(text.splitlines(), at_least, at_most))


def report_failure(log_file: Path, code: int, out: IO[str] | None = None) -> None:
    """What a person needs when a launch fails: the log's end (the traceback) and where the log is."""
    out = out if out is not None else sys.stderr
    rule = "-" * 30
    out.write(f"{rule} end of {log_file} {rule}\n{read_log_tail(log_file)}\n{rule}\n")
    out.write(f"verl-oel: the verl launch failed (exit code {code}); its whole output: {log_file}\n")
    out.flush()


# --------------------------------------------------------------------------------------------- checks


NOISE = (
    re.compile(r"\((TaskRunner|WorkerDict|pid=|raylet|AgentLoopWorker)[^)]*\)"),
    re.compile(r"\b(WARNING|INFO|DEBUG)\b"),
    re.compile(r"Started a local Ray instance"),
)


def console_output_problems(text: str, max_lines: int = 60, expect_stages: Iterable[str] = ()) -> list[str]:
    """Why a run's console output (stdout and stderr together) is not one a person can follow; empty when
    it is. Checks its length, that no verl/Ray/vLLM log line leaked through, and that each stage in
    ``expect_stages`` has its line. For a real launch's output, e.g. in an existing launch test::

        assert not console_output_problems(proc.stdout + proc.stderr, expect_stages=["consolidation"])
    """
    lines = [line for line in _ANSI.sub("", text).replace("\r", "\n").splitlines() if line.strip()]
    problems = []
    if len(lines) >= max_lines:
        problems.append(f"{len(lines)} lines, expected under {max_lines}")
    leaked = [line for line in lines if any(pattern.search(line) for pattern in NOISE)]
    if leaked:
        problems.append(f"{len(leaked)} verl/Ray/vLLM log lines on the console, e.g. {leaked[0]!r}")
    long = [line for line in lines if len(line) > 160]
    if long:
        problems.append(f"{len(long)} lines over 160 characters, e.g. {long[0][:80]!r}...")
    for stage in expect_stages:
        if not any(re.match(rf"round \d+(/\d+)?\s+{re.escape(stage)}\b", line) for line in lines):
            problems.append(f"no line for stage {stage!r}")
    return problems
