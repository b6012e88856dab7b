"""``verl-oel``: the command line of the plugin.

Each subcommand is a thin shell over a library function, so everything the CLI does can be
done from Python too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    """A recipe with ``oel.rounds`` is a whole OEL run (all rounds, resumable); others are one verl launch."""
    from omegaconf import OmegaConf

    from .recipe_loader import compose_recipe

    config = compose_recipe(args.recipe, list(args.overrides))
    if args.dry_run:
        from .dry_run import dry_run

        code, text = dry_run(args.recipe, config)
        print(text, file=sys.stderr if code else sys.stdout)
        return code
    if OmegaConf.select(config, "oel.rounds") is not None:
        from .oel.launcher import run_oel

        return run_oel(args.recipe, list(args.overrides), verbose=args.verbose)
    return _train_one_launch(args.recipe, list(args.overrides), config, args.verbose)


def _train_one_launch(recipe: str, overrides: list[str], config, verbose: bool) -> int:
    """A plain verl recipe: its output goes to ``trainer.default_local_dir/logs/``, the console shows the
    training steps as they pass (all of verl's output live with ``verbose``)."""
    import time

    from omegaconf import OmegaConf

    from .console import ConsoleView, format_seconds
    from .launch import run_recipe
    from .recipe_checks import RecipeError, check_recipe

    try:
        check_recipe(config)  # before naming a log that will never be written
    except RecipeError as error:
        print(f"verl-oel: {error}", file=sys.stderr)
        return 2
    out_dir = Path(str(OmegaConf.select(config, "trainer.default_local_dir", default="runs"))).expanduser()
    log_file = out_dir.resolve() / "logs" / f"verl_{time.strftime('%Y%m%d_%H%M%S')}.log"
    steps = OmegaConf.select(config, "trainer.total_training_steps", default=None)
    print(
        f"verl-oel: {recipe}: verl's output: {log_file}" + ("" if verbose else " (-v shows it here)"),
        flush=True,
    )
    console = ConsoleView(
        tty=False if verbose else None, totals={"training": steps} if steps else {}, count_steps=True
    )
    started = time.monotonic()
    code = run_recipe(recipe, overrides, log_file=log_file, echo=verbose, console=console)
    if code == 0:
        print(
            f"verl-oel: {recipe}: done, {console.steps_seen} training step(s) in "
            f"{format_seconds(time.monotonic() - started)}",
            flush=True,
        )
    return code


def _parse_settings(pairs: list[str]) -> dict:
    """``key=value`` pairs; values are YAML (numbers, booleans, lists), as in Hydra overrides."""
    import yaml

    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--setting expects key=value, got {pair!r}")
        settings[key] = yaml.safe_load(value)
    return settings


def _cmd_make_data(args: argparse.Namespace) -> int:
    if args.game == "smoke":
        from .data.smoke import write_smoke_data

        out = write_smoke_data(args.out, n_train=args.train_size, n_val=args.val_size, seed=args.seed)
        print(f"wrote {out}/train.parquet and {out}/val.parquet")
        return 0
    if args.game == "consolidation":
        from .data.consolidation import write_consolidation_data

        out = write_consolidation_data(args.out)
        print(f"wrote {out}/train.parquet and {out}/val.parquet")
        return 0
    from .data.games import GameDataSpec, write_game_data

    spec = GameDataSpec(
        game=args.game,
        settings=_parse_settings(args.setting),
        base_seed=args.seed,
        sizes={"train": args.train_size, "val": args.val_size, "test": args.test_size},
        mode=args.mode,
        max_turn_tokens=args.max_turn_tokens,
    )
    try:
        written = write_game_data(spec, args.out)
    except ValueError as error:
        print(f"verl-oel make-data: {error}", file=sys.stderr)
        return 2
    for split, path in written.items():
        print(f"{split}: {path}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import EvalRequest, evaluate

    request = EvalRequest(
        model=Path(args.model),
        game=args.game,
        settings=_parse_settings(args.setting),
        knowledge_file=Path(args.knowledge) if args.knowledge else None,
        num_games=args.num_games,
        base_seed=args.seed,
        mode=args.mode,
        max_turn_tokens=args.max_turn_tokens,
        out_dir=Path(args.out),
        recipe=args.recipe,
        overrides=list(args.overrides),
    )
    result = evaluate(request)
    print(result.summary_line())
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .oel import render_report
    from .oel.knowledge_report import KnowledgeNotReadyError, knowledge_diff, render_diff

    if args.diff is not None:
        try:
            print(render_diff(knowledge_diff(Path(args.run_dir), *args.diff)), end="")
        except (KnowledgeNotReadyError, FileNotFoundError) as error:
            print(f"verl-oel report --diff: {error}", file=sys.stderr)
            return 2
        return 0
    paths = render_report(Path(args.run_dir))
    print(f"wrote {paths.markdown}, {paths.json} and {paths.png}")
    return 0


def _cmd_clean(args: argparse.Namespace) -> int:
    """Remove what killed launches of a run left in /dev/shm (their ledgers name it), without starting it."""
    from .oel.run_state import RunLockedError, holding_run_lock
    from .platform.shm import remove_leftovers

    try:
        with holding_run_lock(Path(args.run_dir)) as layout:
            removed = remove_leftovers(layout.logs_dir)
    except (RunLockedError, FileNotFoundError) as error:
        print(f"verl-oel clean: {error}", file=sys.stderr)
        return 2
    if removed:
        print(f"removed {len(removed)} shared-memory segment(s) killed launches left: {', '.join(removed)}")
    else:
        print("nothing to remove: no killed launch of this run left anything in /dev/shm")
    return 0


def _cmd_build_model(args: argparse.Namespace) -> int:
    from .models.build import run_build_model

    return run_build_model(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    """The README's main job: OEL that learns, on CPU. Builds the warmed tiny model (cached), then runs
    ``oel-cpu-demo`` (2 rounds on the held-out hidden-rule family), ending with the report and its plot."""
    from .models.warm import build_warm_model
    from .oel.launcher import run_oel

    run_dir = Path(args.run_dir).resolve()
    print("verl-oel demo: the warmed tiny model (built once, ~10 min on 2 cores; then cached)", flush=True)
    model_dir = build_warm_model(run_dir / "models" / "warm", seed=args.seed)
    print(f"verl-oel demo: model {model_dir}", flush=True)
    return run_oel(
        DEMO_RECIPE,
        [
            f"actor_rollout_ref.model.path={model_dir}",
            f"trainer.default_local_dir={run_dir / DEMO_RECIPE}",
            *args.overrides,
        ],
        verbose=args.verbose,
    )


DEMO_RECIPE = "oel-cpu-demo"


OVERRIDES_HELP = "Hydra overrides of the recipe, key=value (e.g. trainer.total_training_steps=4)"
VERBOSE_HELP = "show verl's, Ray's and vLLM's whole output live (it always goes to the run's log file)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="verl-oel", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = sub.add_parser(
        "train",
        help="run a recipe through verl's trainer (an OEL recipe: all its rounds, resumable)",
        description="Run a recipe through verl's trainer. A recipe with oel.rounds runs every round of OEL "
        "in one verl launch and resumes where a killed run stopped. The console shows one line per stage; "
        "verl's whole output is in the run's logs/ folder.",
    )
    train.add_argument(
        "--config-name",
        dest="recipe",
        required=True,
        metavar="RECIPE",
        help="recipe name (recipes/) or YAML path",
    )
    train.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="compose the recipe, run every launch check, print the resolved lengths, budgets and oel: "
        "section, and exit (0, or 2 with the problems); starts nothing and loads no weights",
    )
    train.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    train.set_defaults(func=_cmd_train)

    data = sub.add_parser("make-data", help="write verl parquet datasets of game seeds")
    data.add_argument("--game", required=True, help="a game name (see verl_oel.envs.list_games) or 'smoke'")
    data.add_argument("--out", required=True, metavar="DIR", help="folder to write the parquet files to")
    data.add_argument(
        "--seed", type=int, default=0, help="base seed; splits use disjoint seed blocks (default 0)"
    )
    data.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE", help="game setting (repeatable)"
    )
    data.add_argument(
        "--train-size", type=int, default=256, metavar="N", help="games in the train split (256)"
    )
    data.add_argument("--val-size", type=int, default=32, metavar="N", help="games in the val split (32)")
    data.add_argument(
        "--test-size", type=int, default=128, metavar="N", help="games in the fixed held-out test split (128)"
    )
    data.add_argument(
        "--mode",
        default="conversation",
        choices=["conversation", "per_turn"],
        help="conversation: one multi-turn chat per game; per_turn: each turn a fresh prompt with the game "
        "log so far (default conversation)",
    )
    data.add_argument(
        "--max-turn-tokens", type=int, default=None, metavar="N", help="tokens a reply may use per turn"
    )
    data.set_defaults(func=_cmd_make_data)

    ev = sub.add_parser("eval", help="held-out pass rate through verl's rollout stack")
    ev.add_argument("--model", required=True, metavar="DIR", help="model folder (HF) or hub id to evaluate")
    ev.add_argument("--game", required=True, help="a game name (see verl_oel.envs.list_games)")
    ev.add_argument(
        "--knowledge",
        default=None,
        metavar="FILE",
        help="knowledge to put in the prompt (.json stream or text)",
    )
    ev.add_argument(
        "--setting", action="append", default=[], metavar="KEY=VALUE", help="game setting (repeatable)"
    )
    ev.add_argument("--num-games", type=int, default=128, metavar="N", help="held-out games to play (128)")
    ev.add_argument("--seed", type=int, default=0, help="base seed of the dataset (test split; default 0)")
    ev.add_argument(
        "--mode",
        default="per_turn",
        choices=["conversation", "per_turn"],
        help="how the games are prompted: per_turn (default) or conversation",
    )
    ev.add_argument(
        "--max-turn-tokens", type=int, default=None, metavar="N", help="tokens a reply may use per turn"
    )
    ev.add_argument(
        "--out",
        default="runs/eval",
        metavar="DIR",
        help="folder for the games, verl's log (verl.log) and eval.json (default runs/eval)",
    )
    ev.add_argument(
        "--recipe", default="grpo_cpu_games", help="recipe whose rollout settings are used (grpo_cpu_games)"
    )
    ev.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    ev.set_defaults(func=_cmd_eval)

    build = sub.add_parser("build-model", help="build a model folder without a hub")
    from .models.cli_args import add_build_model_args

    add_build_model_args(build)
    build.set_defaults(func=_cmd_build_model)

    report = sub.add_parser("report", help="re-render an OEL run's report (json, markdown, plot)")
    report.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (trainer.default_local_dir)")
    report.add_argument(
        "--diff",
        nargs=2,
        type=int,
        metavar=("A", "B"),
        help="instead, print how round B's knowledge differs from round A's (items added, removed, kept)",
    )
    report.set_defaults(func=_cmd_report)

    clean = sub.add_parser(
        "clean",
        help="remove what killed launches of a run left in /dev/shm (only that; the next start does it too)",
    )
    clean.add_argument("run_dir", metavar="RUN_DIR", help="the run's folder (trainer.default_local_dir)")
    clean.set_defaults(func=_cmd_clean)

    demo = sub.add_parser(
        "demo", help="the main job on CPU: the warmed tiny model learns a held-out game rule by OEL"
    )
    demo.add_argument(
        "--run-dir",
        default="runs/demo",
        metavar="DIR",
        help="folder for the warmed model (models/warm) and the run (default runs/demo)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the warmed tiny model (default 0)")
    demo.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    demo.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help=OVERRIDES_HELP)
    demo.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
