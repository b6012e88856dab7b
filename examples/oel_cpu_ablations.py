"""OEL and its ablations on the CPU demo, over several seeds, in one table.

Runs ``oel-cpu-demo`` (OEL) and its variants (the forward KL as the loss, a moving teacher, raw
trajectories instead of extracted knowledge, knowledge in context only) once per seed with the warmed
tiny model, and OEL on the multi-turn corridor (``oel-cpu-corridor``, the same model), then prints the
held-out pass rate per round, without knowledge and with
the round's knowledge in the teacher's prompt (pi_{r-1}, measured before consolidation), the reply's
length without knowledge (tokens per turn: a one-word reply is 4, a reply that no longer ends runs to
the 8-token limit), the turns and response tokens per game without knowledge (the multi-turn corridor's
shorter play), the knowledge items the round's model wrote (summed over its streams: 0 means the round
has nothing to consolidate, and keeps the previous round's model), and out-of-domain retention: the
round's model, without knowledge, on the recipe's ``oel.ood.games`` (the demo's: the other held-out
families), pass rate and valid-action rate averaged over those entries; each as mean ± standard
deviation over the seeds (per seed in brackets). The online mode (``oel-cpu-demo-online``) is not a row:
on this one-turn game it trains on exactly the replay mode's samples (the same games, the same opening
prompts and sampling seeds), so its numbers are OEL's.

    python examples/oel_cpu_ablations.py                   # 6 recipes x 3 seeds, about 75 min on 2 cores
    python examples/oel_cpu_ablations.py --seeds 0 --recipes oel-cpu-demo
    python examples/oel_cpu_ablations.py --recipes oel-cpu-corridor   # the multi-turn corridor, ~10 min

Each run is ``verl-oel train`` in its own directory under ``--run-dir``: rerunning the script resumes
unfinished runs and only re-reads finished ones. The table is also written to ``RUN_DIR/table.md``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from verl_oel.atomic_io import write_text_atomic
from verl_oel.models.warm import build_warm_model
from verl_oel.oel import RunLayout, load_round_eval
from verl_oel.oel.run_state import read_run_spec

METHODS = {
    "oel-cpu-demo": "OEL",
    "oel-cpu-demo-forward-kl": "forward KL (teacher's top-k)",
    "oel-cpu-demo-moving-teacher": "moving teacher",
    "oel-cpu-demo-raw-trajectories": "raw trajectories",
    "oel-cpu-demo-in-context": "in context only",
    "oel-cpu-corridor": "OEL, multi-turn corridor",
}


def run(recipe: str, seed: int, model: Path, run_dir: Path) -> None:
    """One resumable ``verl-oel train`` run; its output goes to ``run_dir.log``."""
    command = [
        sys.executable,
        "-m",
        "verl_oel.cli",
        "train",
        "--config-name",
        recipe,
        f"actor_rollout_ref.model.path={model}",
        f"trainer.default_local_dir={run_dir}",
        f"oel.seed={seed}",
        f"oel.evaluation.seed={seed}",
    ]
    log = run_dir.with_suffix(".log")
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with open(log, "w") as output:
        code = subprocess.call(command, stdout=output, stderr=subprocess.STDOUT)
    took = time.monotonic() - started
    if code != 0:
        raise SystemExit(f"{recipe} seed {seed} failed with exit code {code} after {took:.0f} s; see {log}")
    print(f"  {recipe} seed {seed}: done in {took:.0f} s", file=sys.stderr, flush=True)


class RoundResult(NamedTuple):
    """One round's evaluation: pass rates (0-1), the reply's length without knowledge, items written, and
    the OOD entries' mean pass and valid-action rates (0-1)."""

    without_knowledge: float
    with_knowledge: float | None  # None in round 0: there is no knowledge yet
    tokens_per_turn: float
    knowledge_items: int | None  # None in round 0
    ood_pass: float | None = None  # None: the run measured no OOD games
    ood_valid: float | None = None
    turns_per_game: float | None = None  # None: an eval.json from before they were measured
    response_tokens_per_game: float | None = None


def round_results(run_dir: Path) -> list[RoundResult]:
    """Rounds 0..R of a finished run."""
    layout = RunLayout(run_dir.resolve())
    rounds = read_run_spec(layout).rounds
    evals = [load_round_eval(layout.eval_json(r)) for r in range(rounds + 1)]
    return [
        RoundResult(
            e.pass_rate_no_knowledge,
            e.pass_rate_with_knowledge,
            e.tokens_per_turn,
            e.knowledge_items,
            statistics.mean(r.pass_rate for r in e.ood) if e.ood else None,
            statistics.mean(r.valid_action_rate for r in e.ood) if e.ood else None,
            e.turns_per_game,
            e.response_tokens_per_game,
        )
        for e in evals
    ]


def cell(values: list[float | None], scale: float = 100.0, digits: int = 0) -> str:
    """mean ± sd (per value), of the values that exist; "-" when none does."""
    known = [scale * v for v in values if v is not None]
    if not known:
        return "-"
    spread = statistics.stdev(known) if len(known) > 1 else 0.0
    values_text = ", ".join(f"{v:.{digits}f}" for v in known)
    return f"{statistics.mean(known):.{digits}f} ± {spread:.{digits}f} ({values_text})"


def table(results: dict[str, dict[int, list[RoundResult]]], seeds: list[int]) -> str:
    lines = [
        f"Held-out pass rate (%), tokens per turn, turns and response tokens per game, items written and "
        f"out-of-domain rates (%), mean ± sd over seeds {seeds} (per seed in brackets)",
        "",
        "| method | round | pass rate without knowledge | with knowledge in context (teacher) "
        "| tokens/turn without | turns/game without | response tokens/game without | items written "
        "| OOD pass rate | OOD valid actions |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for recipe, by_seed in results.items():
        rounds = len(next(iter(by_seed.values())))
        for round in range(rounds):
            results_of_round = [by_seed[s][round] for s in seeds]
            without = cell([r.without_knowledge for r in results_of_round])
            within = cell([r.with_knowledge for r in results_of_round])
            tokens = cell([r.tokens_per_turn for r in results_of_round], scale=1.0, digits=1)
            turns = cell([r.turns_per_game for r in results_of_round], scale=1.0, digits=1)
            game_tokens = cell([r.response_tokens_per_game for r in results_of_round], scale=1.0, digits=1)
            items = cell([r.knowledge_items for r in results_of_round], scale=1.0)
            ood = [
                cell([r.ood_pass for r in results_of_round]),
                cell([r.ood_valid for r in results_of_round]),
            ]
            lines.append(
                f"| {METHODS[recipe]} | {round} | {without} | {within} | {tokens} | {turns} | {game_tokens} "
                f"| {items} | " + " | ".join(ood) + " |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/ablations"))
    parser.add_argument(
        "--model", type=Path, default=None, help="the warm model (default: built into RUN_DIR)"
    )
    args = parser.parse_args(argv)
    results: dict[str, dict[int, list[RoundResult]]] = {}
    model = args.model or build_warm_model(args.run_dir / "models" / "warm", seed=0)
    for recipe in args.recipes:
        print(f"{METHODS[recipe]} ({recipe}):", file=sys.stderr, flush=True)
        for seed in args.seeds:
            run_dir = args.run_dir / recipe / f"seed{seed}"
            run(recipe, seed, model.resolve(), run_dir)
            results.setdefault(recipe, {})[seed] = round_results(run_dir)
    text = table(results, args.seeds)
    write_text_atomic(args.run_dir / "table.md", text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
