"""The run report: one table and one figure a researcher reads at a glance, rebuilt from disk alone.

``render_report(run_dir)`` (the ``verl-oel report RUN_DIR`` command) reads ``run.json``, each
round's ``stages.json`` and ``eval.json``, and writes ``report.json``, ``report.md`` and
``report.png`` atomically. It never needs the process that ran the rounds, so it works on a
finished run, on a run still going (unfinished rounds show as in progress) and on a copy.

Each round's ``eval.json`` (its schema and reader: ``verl_oel.oel.round_eval``) is read back with
``load_round_eval``; a file that cannot be read is shown as the round's problem, not a crash.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from verl_oel.atomic_io import write_bytes_atomic, write_text_atomic
from verl_oel.oel.knowledge_report import KnowledgeNotReadyError, render_knowledge_markdown, round_knowledge
from verl_oel.oel.round_eval import OOD_RATES, EvalFormatError, IFBenchScore, load_round_eval
from verl_oel.oel.run_state import (
    FORMAT_VERSION,
    STAGES,
    RunLayout,
    RunSpec,
    flatten,
    read_run_spec,
    read_stage_markers,
)

SETTINGS_SHOWN: tuple[str, ...] = (
    "oel.*",
    "data.train_batch_size",
    "data.max_prompt_length",
    "data.max_response_length",
    "actor_rollout_ref.actor.optim.lr",
    "actor_rollout_ref.rollout.temperature",
    "trainer.total_training_steps",
)
"""Config keys (fnmatch patterns) listed in report.md's settings; the full snapshot stays in run.json."""


@dataclass(frozen=True)
class ReportPaths:
    json: Path
    markdown: Path
    png: Path


def collect(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything the report shows, as JSON data: the settings, then one entry per round.

    Rounds 0..R of run.json are listed whether started or not, plus any other round folder
    found. A round's ``status`` is ``done`` (every planned stage marked), ``in progress``
    (``next_stage`` names the stage to run) or ``not started``; ``problem`` says why a
    round's eval.json could not be read, which the report shows instead of failing. ``knowledge``
    holds the round's streams once its extraction is done (``knowledge_report.round_knowledge``),
    ``knowledge_problem`` why they could not be read.
    """
    layout = RunLayout(Path(run_dir).resolve())
    if not layout.run_dir.is_dir():
        raise FileNotFoundError(f"{layout.run_dir} is not a run directory")
    spec: RunSpec | None = read_run_spec(layout) if layout.run_json.exists() else None
    planned = set(range(spec.rounds + 1)) if spec else set()
    rounds = []
    for round in sorted(planned | set(layout.existing_rounds())):
        markers = read_stage_markers(layout, round)
        stages = spec.round_stages(round) if spec else ()
        pending = [stage for stage in stages if stage not in markers]
        if spec is None:
            status = "unknown (no run.json)"
        elif not markers:
            status = "not started"
        else:
            status = "in progress" if pending else "done"
        entry: dict[str, Any] = {
            "round": round,
            "status": status,
            "next_stage": pending[0] if pending and markers else None,
            "stages": {stage: marker["summary"] for stage, marker in markers.items()},
            "eval": None,
            "problem": None,
            "knowledge": None,
            "knowledge_problem": None,
        }
        try:
            entry["knowledge"] = round_knowledge(layout, round)
        except KnowledgeNotReadyError as error:
            entry["knowledge_problem"] = str(error)
        eval_path = layout.eval_json(round)
        if eval_path.exists():
            try:
                entry["eval"] = load_round_eval(eval_path).to_json()
            except EvalFormatError as error:
                entry["problem"] = str(error)
        rounds.append(entry)
    return {
        "format_version": FORMAT_VERSION,
        "run_dir": str(layout.run_dir),
        "settings": None if spec is None else _settings(spec),
        "rounds": rounds,
    }


def render_report(run_dir: str | os.PathLike[str]) -> ReportPaths:
    """Re-render report.json, report.md and report.png from what is on disk."""
    layout = RunLayout(Path(run_dir).resolve())
    report = collect(layout.run_dir)
    paths = ReportPaths(
        json=layout.run_dir / "report.json",
        markdown=layout.run_dir / "report.md",
        png=layout.run_dir / "report.png",
    )
    json_text = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    markdown = render_markdown(report)
    png = _figure_png(report)
    write_bytes_atomic(paths.png, png)
    write_text_atomic(paths.markdown, markdown)
    write_text_atomic(paths.json, json_text)
    return paths


def _settings(spec: RunSpec) -> dict[str, Any]:
    config = flatten(spec.config)
    shown = {
        key: value
        for key, value in config.items()
        if any(fnmatch.fnmatchcase(key, pattern) for pattern in SETTINGS_SHOWN)
    }
    return {
        "base_model": spec.base_model,
        "rounds": spec.rounds,
        "seed": spec.seed,
        "skip_stages": list(spec.skip_stages),
        "config": shown,
    }


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}%"


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.1f}"


def _status(entry: Mapping[str, Any]) -> str:
    if entry["status"] == "in progress":
        return f"in progress ({entry['next_stage']})"
    return entry["status"]


def render_markdown(report: Mapping[str, Any]) -> str:
    """report.md: settings, the results table, then the details that only some runs have."""
    settings = report["settings"]
    lines = [f"# OEL run report: `{Path(report['run_dir']).name}`", ""]
    if settings is None:
        lines += ["Settings unknown: run.json is missing.", ""]
    else:
        skipped = ", ".join(settings["skip_stages"]) or "none"
        lines += [
            f"Base model `{settings['base_model']}`, {settings['rounds']} rounds, seed {settings['seed']}, "
            f"skipped stages: {skipped}.",
            "",
        ]
        lines += [f"- `{key}`: `{json.dumps(value)}`" for key, value in settings["config"].items()]
        lines.append("")
    rounds = report["rounds"]
    evals = [entry["eval"] for entry in rounds if entry["eval"]]
    header = [
        "round",
        "status",
        "games",
        "pass rate, no knowledge",
        "with knowledge in context (teacher)",
        "tokens/turn",
        "turns/game",
        "response tokens/game",
        "items",
        "KL first → last (steps)",
    ]
    lines += [
        "## Results",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for entry in rounds:
        label = "0 (base)" if entry["round"] == 0 else str(entry["round"])
        record = entry["eval"]
        if record is None:
            cells = [label, _status(entry)] + ["–"] * (len(header) - 2)
        else:
            with_knowledge = _percent(record["pass_rate_with_knowledge"])
            if _wrote_no_knowledge(record):  # the teacher's prompt held no item: not "with knowledge"
                with_knowledge = "– (no knowledge)"
            cells = [
                label,
                _status(entry),
                str(record["num_games"]),
                _percent(record["pass_rate_no_knowledge"]),
                with_knowledge,
                _number(record["tokens_per_turn"]),
                _number(record["turns_per_game"]),
                _number(record["response_tokens_per_game"]),
                "–" if record["knowledge_items"] is None else str(record["knowledge_items"]),
                _consolidation_cell(record),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pass rate without knowledge, tokens/turn, turns/game and response tokens/game (summed over a "
        "game's turns; a won game ends early) are the round's own model (round 0: the base). "
        "With knowledge in context is the round's teacher: the previous round's model with one stream "
        "of this round's knowledge in its prompt, measured before consolidation (stage in_context) on the "
        "same held-out games; a round whose extraction wrote no item has none to show, and does not "
        "train (its model is the previous round's).",
        "",
    ]
    problems = [entry for entry in rounds if entry["problem"]]
    if problems:
        lines += ["## Unreadable evaluations", ""]
        lines += [f"- round {entry['round']}: {entry['problem']}" for entry in problems]
        lines.append("")
    curves = [record for record in evals if record["in_context_curve"] and not _wrote_no_knowledge(record)]
    if curves:
        lines += ["## In-context learning during extraction", ""]
        for record in curves:
            points = ", ".join(
                f"{point['games']} games {_percent(point['pass_rate'])}"
                for point in record["in_context_curve"]
            )
            lines.append(f"- round {record['round']}: {points}")
        lines.append("")
    lines += _ood_markdown(evals)
    timed = [entry for entry in rounds if any("seconds" in s for s in entry["stages"].values())]
    if timed:
        stage_names = [name for name in STAGES if any(name in entry["stages"] for entry in timed)]
        lines += [
            "## Stage times (minutes)",
            "",
            "| round | " + " | ".join(stage_names) + " |",
            "|" + "---|" * (len(stage_names) + 1),
        ]
        for entry in timed:
            summaries = [entry["stages"].get(name, {}) for name in stage_names]
            times = [f"{s['seconds'] / 60:.1f}" if "seconds" in s else "–" for s in summaries]
            lines.append(f"| {entry['round']} | " + " | ".join(times) + " |")
        lines.append("")
    lines += render_knowledge_markdown(rounds)
    return "\n".join(lines)


OOD_STYLES = {
    "pass": ("-", "o"),
    "valid actions": (":", "^"),
    "prompt-level strict": ("--", "s"),
    "instruction-level strict": ("-.", "D"),
}
"""Line style and marker of each kind of out-of-domain number in report.png's third panel."""


def _ood_columns(evals: list[Mapping[str, Any]]) -> list[tuple[str, str, Callable[[Mapping[str, Any]], Any]]]:
    """The out-of-domain numbers the run measured, as (group, kind, value of a round's record or None):
    each ``oel.ood.games`` entry's pass and valid-action rates, then IFBench's prompt- and
    instruction-level strict accuracy (group ``IFBench``)."""
    names = list(dict.fromkeys(result["name"] for record in evals for result in record["ood"]))

    def game_rate(name: str, key: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda record: next((r[key] for r in record["ood"] if r["name"] == name), None)

    def ifbench_rate(key: str) -> Callable[[Mapping[str, Any]], Any]:
        return lambda record: record["ifbench"][key] if record["ifbench"] else None

    columns = [
        (name, kind, game_rate(name, key))
        for name in names
        for key, kind in zip(OOD_RATES, ("pass", "valid actions"), strict=True)
    ]
    if any(record["ifbench"] for record in evals):
        columns += [
            ("IFBench", f"{level}-level strict", ifbench_rate(f"{level}_strict"))
            for level in ("prompt", "instruction")
        ]
    return columns


def _ood_markdown(evals: list[Mapping[str, Any]]) -> list[str]:
    """Each OOD number by round, with the change from the base model's, and what IFBench's are over."""
    columns = _ood_columns(evals)
    if not columns:
        return []
    base = next((record for record in evals if record["round"] == 0), None)
    header = ["round"] + [f"{group} {kind}" for group, kind, _ in columns]
    lines = [
        "## Out-of-domain retention (no knowledge)",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for record in evals:
        cells = ["0 (base)" if record["round"] == 0 else str(record["round"])]
        for _, _, value_of in columns:
            value = value_of(record)
            cell = _percent(value)
            if value is not None and record["round"] > 0 and base and value_of(base) is not None:
                cell += f" ({100 * (value - value_of(base)):+.1f})"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Measured on each round's model without knowledge, the same games and prompts every round; in "
        "brackets the change from the base model's, in points. Games the run never trains on "
        "(`oel.ood.games`): valid actions is the fraction of the games' turns whose reply was a legal "
        "action.",
    ]
    scored = [record["ifbench"] for record in evals if record["ifbench"]]
    if scored:
        score = IFBenchScore(
            **{**scored[-1], "left_out_instructions": tuple(scored[-1]["left_out_instructions"])}
        )
        lines.append(
            "IFBench (`oel.ood.ifbench_prompts`, non-thinking): the fraction of prompts whose every "
            "instruction was followed (prompt-level) and of all their instructions (instruction-level), "
            "strict, over "
            f"{score.summary()}; replies and verdicts in each round's `evaluation/ifbench.json`."
        )
    lines.append("")
    return lines


def _consolidation_cell(record: Mapping[str, Any]) -> str:
    kl = record["consolidation"]
    if record["consolidation_skipped"]:
        return f"skipped ({record['consolidation_skipped'].split(':')[0]})"
    return "–" if kl is None else f"{kl['kl_first']:.3g} → {kl['kl_last']:.3g} ({kl['steps']})"


def _wrote_no_knowledge(record: Mapping[str, Any]) -> bool:
    """A round whose streams hold no item: its "with knowledge" numbers are the teacher without any."""
    return record["round"] > 0 and record["knowledge_items"] == 0


def _plot_ood(axis: Any, evals: list[Mapping[str, Any]]) -> None:
    """Each out-of-domain number by round (``_ood_columns``), a colour per game entry (and one for IFBench),
    a line style per kind of number (``OOD_STYLES``)."""
    groups = list(dict.fromkeys(group for group, _, _ in _ood_columns(evals)))
    for group, kind, value_of in _ood_columns(evals):
        style, marker = OOD_STYLES[kind]
        points = {
            record["round"]: 100.0 * value_of(record) for record in evals if value_of(record) is not None
        }
        axis.plot(
            list(points),
            list(points.values()),
            linestyle=style,
            marker=marker,
            color=f"C{groups.index(group)}",
            label=f"{group}: {kind}",
        )


def _figure_png(report: Mapping[str, Any]) -> bytes:
    """Two panels: pass rates by round (without, and with knowledge in context) and tokens per turn; a
    third with the out-of-domain numbers (games' pass and valid-action rates, IFBench) when the run measured
    them."""
    # A bare Figure renders with Agg and touches no pyplot global state (no display, no backend switch
    # in a process that uses another one). Imported here so the trainer imports run state without it.
    from matplotlib.figure import Figure

    evals = [entry["eval"] for entry in report["rounds"] if entry["eval"]]
    with_ood = bool(_ood_columns(evals))
    figure = Figure(figsize=(16 if with_ood else 11, 4.2), dpi=110)
    rates, tokens, *ood_axis = figure.subplots(1, 3 if with_ood else 2)
    figure.suptitle(f"OEL run: {Path(report['run_dir']).name}")
    no_knowledge = ("no knowledge (round's model)", "-", "o")
    with_knowledge = ("knowledge in context (round's teacher)", "--", "s")
    panels = (
        (
            rates,
            100.0,
            "{:.1f}",
            {no_knowledge: "pass_rate_no_knowledge", with_knowledge: "pass_rate_with_knowledge"},
        ),
        (
            tokens,
            1.0,
            "{:.0f}",
            {no_knowledge: "tokens_per_turn", with_knowledge: "tokens_per_turn_with_knowledge"},
        ),
    )
    for axis, scale, shown, keys in panels:
        values = {
            line: {
                record["round"]: record[key] * scale
                for record in evals
                if record[key] is not None and not (line == with_knowledge and _wrote_no_knowledge(record))
            }
            for line, key in keys.items()
        }
        for (label, style, marker), points in values.items():
            if not points:
                continue
            axis.plot(list(points), list(points.values()), linestyle=style, marker=marker, label=label)
            for x, y in points.items():
                # At each round the higher value is labelled above its point and the lower one below.
                lower = any(other.get(x, -math.inf) > y for other in values.values())
                axis.annotate(
                    shown.format(y),
                    (x, y),
                    textcoords="offset points",
                    xytext=(0, -13 if lower else 7),
                    ha="center",
                    fontsize=8,
                )
    rounds = [entry["round"] for entry in report["rounds"]]
    # Rounds without numbers to show are shaded with the reason.
    shaded = {
        entry["round"]: "eval.json unreadable" if entry["problem"] else entry["status"]
        for entry in report["rounds"]
        if entry["status"] != "done" or entry["problem"]
    }
    titled = [
        (rates, "pass rate (%)", "Held-out pass rate"),
        (tokens, "response tokens per turn", "Response length"),
    ]
    if with_ood:
        _plot_ood(ood_axis[0], evals)
        titled.append((ood_axis[0], "% of games, turns or prompts", "Out-of-domain, no knowledge"))
    for axis, ylabel, title in titled:
        axis.set_title(title)
        axis.set_xlabel("round (0 = base model)")
        axis.set_ylabel(ylabel)
        if rounds:
            axis.set_xticks(rounds)
            axis.set_xlim(min(rounds) - 0.4, max(rounds) + 0.4)
        _, top = axis.get_ylim()
        axis.set_ylim(0, top * 1.12)  # room for the labels above the highest point
        for round, reason in shaded.items():
            axis.axvspan(round - 0.3, round + 0.3, color="0.93", zorder=0)
            axis.text(
                round,
                0.5,
                reason,
                transform=axis.get_xaxis_transform(),
                rotation=90,
                ha="center",
                va="center",
                fontsize=8,
                color="0.45",
            )
        axis.grid(alpha=0.3)
        if evals:
            axis.legend(fontsize=8, loc="lower left")
        else:
            axis.text(0.5, 0.5, "no evaluations yet", transform=axis.transAxes, ha="center", va="center")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
