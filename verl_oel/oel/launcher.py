"""``run_oel``: all rounds of Online Experiential Learning in one resumable command.

``verl-oel train --config-name RECIPE`` with an ``oel.rounds`` recipe lands here. This is the launcher;
the loop itself is verl's trainer ``OELTrainer`` (``trainer.py``, trainer mode ``oel``), which runs
every stage of every round inside ONE verl launch. The launcher:

1. composes and checks the recipe (an impossible length budget or an unknown game fails here, naming
   the key, before any worker starts);
2. opens the run directory: takes its lock for the whole run and checks that a resumed run has the
   settings it started with (``RunState.open``), and that every finished stage's files are still
   there and readable (``run_integrity.check_finished_outputs``): a damaged run fails in seconds;
3. launches verl's own ``main_ppo`` from the newest model the run has on disk
   (``RunState.start_model``: the base model, or the model the last finished stage produced), so a
   killed run restarts where it stopped; verl's process dies with this one (``launch.run_recipe``);
4. renders the report (``report.json``, ``report.md``, ``report.png``).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from verl_oel.console import ConsoleView, format_seconds, log_problem, stage_totals
from verl_oel.launch import model_reference, run_recipe
from verl_oel.oel.config import TRAINER_MODE, OELConfig
from verl_oel.oel.report import render_report
from verl_oel.oel.run_integrity import check_finished_outputs
from verl_oel.oel.run_state import (
    SAFE_TO_CHANGE,
    DamagedRunError,
    RunConfigMismatchError,
    RunLockedError,
    RunSpec,
    RunState,
)
from verl_oel.platform.shm import remove_leftovers
from verl_oel.recipe_checks import RecipeError, check_recipe
from verl_oel.recipe_loader import compose_recipe

TRAINER_OWNED_KEYS: tuple[str, ...] = ("actor_rollout_ref.model.path", "oel.run_dir")
"""Keys the launcher sets for each launch, so a user override of them names only the base model (and
the run directory, which the launcher resolves first)."""

OEL_SAFE_TO_CHANGE: tuple[str, ...] = (
    *SAFE_TO_CHANGE,
    "oel.rounds",
    "oel.poll_interval_s",
    "oel.game_generation_workers",
)
"""Like ``run.rounds``, the recipe's ``oel.rounds`` may grow on resume to extend a run; how often verl's
replay buffer polls and how many processes generate games ahead change only waiting time (a game is the
same whoever generates it)."""


def _say(message: str) -> None:
    """A line of the run's console (stdout); problems go to stderr (``log_problem``)."""
    print(f"verl-oel: {message}", flush=True)


def load_oel_recipe(recipe: str, overrides: list[str]) -> tuple[DictConfig, OELConfig]:
    """Compose and validate (recipe checks, then the loop's keys): fails before any worker starts."""
    config = compose_recipe(recipe, overrides)
    check_recipe(config)  # includes the loop's keys and lengths (recipe_checks._check_oel_loop)
    if OmegaConf.select(config, "oel.rounds") is None:
        raise RecipeError(f"recipe {recipe!r} has no oel.rounds: it is not an OEL run")
    loop = OELConfig.from_mapping(OmegaConf.to_container(config.oel, resolve=True))
    return config, loop


def run_oel(recipe: str, overrides: list[str], verbose: bool = False) -> int:
    """Run (or resume) every round of the OEL recipe; returns a process exit code.

    The console shows one line per stage and the running stage's progress (``verl_oel.console``); all of
    verl's output goes to the launch's log in ``RUN_DIR/logs/``, and with ``verbose`` to the console too.
    """
    try:
        config, loop = load_oel_recipe(recipe, overrides)
    except (RecipeError, ValueError) as error:
        print(f"verl-oel: {error}", file=sys.stderr)
        return 2
    base_model = model_reference(str(config.actor_rollout_ref.model.path))
    run_dir = Path(loop.run_dir or str(config.trainer.default_local_dir)).expanduser().resolve()
    spec = RunSpec(
        base_model=base_model,
        rounds=loop.rounds,
        seed=loop.seed,
        config=OmegaConf.to_container(config, resolve=True),
        skip_stages=loop.skip_stages,
    )
    started = time.monotonic()
    try:
        state = RunState.open(run_dir, spec, safe_to_change=OEL_SAFE_TO_CHANGE)
    except (RunConfigMismatchError, RunLockedError, DamagedRunError) as error:
        print(f"verl-oel: {error}", file=sys.stderr)
        return 2
    with state:
        try:
            check_finished_outputs(state)  # before verl starts: a damaged run fails in seconds
        except DamagedRunError as error:
            print(f"verl-oel: {error}", file=sys.stderr)
            return 2
        _say(f"run {state.layout.run_dir}: {loop.rounds} round(s) of {loop.game} from {base_model}")
        if (step := state.next_stage()) is not None:
            start_model = state.start_model()
            if step != (0, "evaluation"):
                _say(f"resuming at round {step.round} {step.stage} from {start_model}")
            # One log and one metrics file per launch: verl's file logger truncates its file when it opens
            # it, and a resumed run must keep what the killed launch logged.
            stamp = time.strftime("%Y%m%d_%H%M%S")
            # What killed launches of this run left in /dev/shm (their ledgers say), and only that.
            if removed := remove_leftovers(state.layout.logs_dir):
                _say(f"removed {len(removed)} shared-memory segment(s) a killed launch left in /dev/shm")
            log_file = state.layout.logs_dir / f"verl_{stamp}.log"
            _say(f"verl's output: {log_file}" + ("" if verbose else " (-v shows it here)"))
            console = ConsoleView(
                tty=False if verbose else None,
                run_dir=state.layout.run_dir,
                rounds=loop.rounds,
                totals=stage_totals(OmegaConf.to_container(config.oel, resolve=True)),
            )
            code = run_recipe(
                recipe,
                [*user_overrides(overrides), *launch_overrides(state, start_model, config)],
                extra_env={"VERL_FILE_LOGGER_PATH": str(state.layout.logs_dir / f"metrics_{stamp}.jsonl")},
                log_file=log_file,
                echo=verbose,
                console=console,
                shm_ledger=state.layout.logs_dir / f"shm_{stamp}.txt",
            )
            if code != 0:
                log_problem(
                    f"verl exited with code {code}; rerun the same command to resume (log: {log_file})"
                )
                return code
            if (left := state.next_stage()) is not None:
                log_problem(
                    f"verl exited before the run finished (next: round {left.round} {left.stage}); "
                    f"see {log_file}"
                )
                return 1
        paths = render_report(state.layout.run_dir)
    _say(f"run complete in {format_seconds(time.monotonic() - started)}; report: {paths.markdown}")
    return 0


def user_overrides(overrides: list[str]) -> list[str]:
    """The user's overrides, less the keys the launcher sets itself."""
    return [o for o in overrides if o.split("=", 1)[0].lstrip("+~") not in TRAINER_OWNED_KEYS]


def launch_overrides(state: RunState, start_model: str, config: DictConfig) -> list[str]:
    """What turns the recipe into this run's launch: the model to start from, the loop's trainer, the run
    directory, and verl's HF-only checkpoints (written per round by the consolidation stage)."""
    loggers = list(OmegaConf.select(config, "trainer.logger", default=["console"]) or [])
    return [
        f"actor_rollout_ref.model.path={start_model}",
        f"++oel.run_dir={state.layout.run_dir}",  # ++: set whether or not the recipe names it
        "trainer.use_v1=true",
        f"trainer.v1.trainer_mode={TRAINER_MODE}",
        "trainer.val_before_train=false",
        "trainer.resume_mode=disable",
        "actor_rollout_ref.actor.checkpoint.save_contents=[hf_model]",
        f"trainer.default_local_dir={state.layout.run_dir / 'verl'}",
        "trainer.logger=[" + ",".join(dict.fromkeys([*loggers, "file"])) + "]",
    ]
