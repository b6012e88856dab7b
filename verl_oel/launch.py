"""Launching a recipe through verl's own entry point (``python -m verl.trainer.main_ppo``).

The recipe is composed and checked here first, so impossible settings fail before Ray starts;
its ``process_env`` is exported (verl must see ``VERL_PLATFORM`` when it is imported), and the
shared-memory segments the run leaves behind are removed afterwards.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

from .platform.shm import cleanup_new_shm_segments
from .recipe_checks import RecipeError, check_recipe
from .recipe_loader import compose_recipe, process_env_of, resolve_recipe


def verl_command(recipe: str, overrides: list[str]) -> list[str]:
    config_dir, config_name = resolve_recipe(recipe)
    return [
        sys.executable,
        "-m",
        "verl.trainer.main_ppo",
        f"--config-path={config_dir}",
        f"--config-name={config_name}",
        *overrides,
    ]


def model_reference(model: str | Path) -> str:
    """An existing local folder as an absolute path (launches run elsewhere); anything else,
    e.g. a hub id on a GPU cluster, unchanged."""
    path = Path(model).expanduser()
    return str(path.resolve()) if path.exists() else str(model)


def validation_only_overrides(model: str | Path, data: Path, num_rows: int, work_dir: Path) -> list[str]:
    """Overrides that turn a recipe into one validation pass of ``model`` over ``data``.

    Extraction, deployment and evaluation are all "play these rows once through verl's
    rollout stack": verl's validation pass does exactly that, with the recipe's agent loop,
    vLLM server, reward function and ``val_kwargs`` sampling. verl builds a training
    dataloader even then (from the same file; it drops incomplete batches and refuses an empty
    one), so its batch sizes are set to 1: nothing is trained.
    """
    return [
        f"actor_rollout_ref.model.path={model_reference(model)}",
        f"data.train_files={data}",
        f"data.val_files={data}",
        f"data.val_batch_size={num_rows}",
        "data.train_batch_size=1",
        "actor_rollout_ref.actor.ppo_mini_batch_size=1",
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=1",
        "trainer.val_only=True",
        "trainer.val_before_train=True",
        f"trainer.default_local_dir={work_dir}",
    ]


def _die_with_parent() -> None:
    """In the child, before exec: the kernel SIGKILLs it when the launcher dies (PR_SET_PDEATHSIG).

    A killed ``verl-oel train`` must not leave verl training on behind it: the rerun that resumes the
    run would then race an orphan on the same run directory (the launcher's lock died with it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


PR_SET_PDEATHSIG = 1


def run_recipe(
    recipe: str,
    overrides: list[str],
    extra_env: dict[str, str] | None = None,
    log_file: Path | None = None,
    echo: bool = False,
) -> int:
    """Run ``recipe`` with Hydra ``overrides``; returns verl's exit code (2: invalid recipe).

    ``extra_env`` wins over the recipe's ``process_env``, which wins over nothing: a variable
    already set in the caller's environment is kept. ``log_file`` receives verl's output
    (console otherwise; with ``echo``, both). verl dies if this process dies.
    """
    env = dict(os.environ)
    env.update(extra_env or {})
    os.environ.update(extra_env or {})  # the recipe's ${oc.env:...} must resolve the same way
    config = compose_recipe(recipe, overrides)
    try:
        check_recipe(config)
    except RecipeError as error:
        print(f"verl-oel: {error}", file=sys.stderr)
        return 2
    for key, value in process_env_of(config).items():
        env.setdefault(key, value)
    command = verl_command(recipe, overrides)
    with cleanup_new_shm_segments():
        if log_file is None:
            return subprocess.call(command, env=env, preexec_fn=_die_with_parent)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "wb") as log:
            if not echo:
                return subprocess.call(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
            process = subprocess.Popen(
                command,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
            for line in process.stdout:
                log.write(line)
                log.flush()
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            return process.wait()
