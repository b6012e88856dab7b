"""Launching a recipe through verl's own entry point (``python -m verl.trainer.main_ppo``).

The recipe is composed and checked here first, so impossible settings fail before Ray starts;
its ``process_env`` is exported (verl must see ``VERL_PLATFORM`` when it is imported) with the
variables that fence its servers (``network.py``), and the shared-memory segments the run leaves
behind are removed afterwards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

from .network import network_env
from .platform.shm import SegmentLedger, cleanup_new_shm_segments
from .recipe_checks import RecipeError, check_recipe, derived_lengths
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
    console: Any = None,
    shm_ledger: Path | None = None,
) -> int:
    """Run ``recipe`` with Hydra ``overrides``; returns verl's exit code (2: invalid recipe).

    ``extra_env`` wins over the recipe's ``process_env``, which wins over nothing: a variable
    already set in the caller's environment is kept. ``log_file`` receives all of verl's output,
    written through line by line (without one, the output goes to the console as is); with ``echo``
    it is also shown live, and ``console`` (a ``verl_oel.console.ConsoleView``) sees every line and
    is ticked about once a second. When the launch fails, the end of the log (the traceback) and the
    log's path are printed to stderr. verl dies if this process dies. The /dev/shm segments the launch
    made and left are removed when it ends; with ``shm_ledger`` they are also written down as they appear
    (``platform.shm.SegmentLedger``), so that those of a SIGKILLed launch can be removed later.
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
    derived = derived_lengths(config)
    for length in derived:
        print(f"verl-oel: {length.key}={length.value} ({length.why}; --dry-run shows the sum)", flush=True)
    for key, value in {**process_env_of(config), **network_env(config)}.items():
        env.setdefault(key, value)
    env.setdefault("PYTHONUNBUFFERED", "1")  # the driver's own prints reach the log as they happen
    command = verl_command(recipe, [*overrides, *(length.override() for length in derived)])
    ledger = SegmentLedger(shm_ledger) if shm_ledger is not None else contextlib.nullcontext()
    with ledger, cleanup_new_shm_segments():  # the cleanup first, then the ledger keeps what is left
        if log_file is None:
            return subprocess.call(command, env=env, preexec_fn=_die_with_parent)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "wb") as log:
            if not echo and console is None:
                code = subprocess.call(
                    command, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
                )
            else:
                process = subprocess.Popen(
                    command,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    preexec_fn=_die_with_parent,
                )
                try:
                    pump_output(process.stdout, log, echo=echo, console=console)
                except BaseException:
                    process.kill()  # nobody reads its output any more: it would block on a full pipe
                    raise
                finally:
                    code = process.wait()
                    if console is not None:
                        console.close()
    if code != 0:
        from .console import report_failure

        report_failure(log_file, code)
    return code


def pump_output(
    stream: IO[bytes], log: IO[bytes], echo: bool = False, console: Any = None, tick_seconds: float = 1.0
) -> None:
    """Copy a launch's output into ``log`` (flushed per line: a crash loses nothing) until it ends; with
    ``echo`` to stdout too; every line to ``console.feed`` and ``console.tick()`` every ``tick_seconds``
    even while the launch is silent."""
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        try:
            for line in stream:
                lines.put(line)
        finally:
            lines.put(None)

    reader = threading.Thread(target=read, name="verl-output", daemon=True)
    reader.start()
    last_tick = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=tick_seconds)
        except queue.Empty:
            line = b""
        if line is None:
            break
        if line:
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.buffer.write(line)
                sys.stdout.flush()
            if console is not None:
                console = _console_call(console, "feed", line.decode("utf-8", errors="replace"))
        if console is not None and time.monotonic() - last_tick >= tick_seconds:
            last_tick = time.monotonic()
            console = _console_call(console, "tick")
    reader.join()


def _console_call(console: Any, method: str, *args: Any) -> Any:
    """Call the console; if it fails, say so once and go on without it (returns None): the log must
    keep receiving the launch's output whatever the console does."""
    try:
        getattr(console, method)(*args)
    except Exception as error:  # noqa: BLE001 (any console bug)
        print(f"verl-oel: the console stopped ({error!r}); verl's output is still logged", file=sys.stderr)
        return None
    return console
