"""Helpers shared by the test suite (importable: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from verl_oel.oel import RunLayout, load_round_eval
from verl_oel.oel.run_state import read_stage_markers

REPO_ROOT = Path(__file__).resolve().parents[1]


def fail_os_call(monkeypatch, name: str, nth: int) -> None:
    """Make the ``nth`` call of ``os.<name>`` (e.g. ``fsync``, ``replace``) raise ``OSError("disk on
    fire")``, as a full disk or a crash would mid-write; every other call goes through."""
    real, calls = getattr(os, name), []

    def fails_on_nth_call(*args, **kwargs):
        calls.append(args)
        if len(calls) == nth:
            raise OSError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fails_on_nth_call)


def run_python(
    code: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter: verl's platform singleton and the plugin's
    import hooks are per process, so platform tests need a clean one each time."""
    full_env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_verl_oel(args: list[str], env: dict[str, str] | None = None, timeout: float = 900):
    """Run the ``verl-oel`` CLI in a subprocess, output captured (Ray and vLLM are chatty)."""
    return subprocess.run(
        [sys.executable, "-m", "verl_oel.cli", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_metrics(jsonl_path: Path) -> dict[int, dict]:
    """verl's ``file`` tracking backend: one JSON line per step, ``{"step": n, "data": {...}}``."""
    steps: dict[int, dict] = {}
    for line in jsonl_path.read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(record["data"])
    return steps


def train_and_read_metrics(
    tmp_path: Path, recipe: str, overrides: list[str], env: dict[str, str] | None = None
) -> dict[int, dict]:
    """Run ``verl-oel train`` on ``recipe`` with file tracking; returns the per-step metrics."""
    metrics = tmp_path / "metrics.jsonl"
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            recipe,
            f"trainer.default_local_dir={tmp_path}/ckpt",
            "trainer.logger=[console,file]",
            *overrides,
        ],
        env={"VERL_FILE_LOGGER_PATH": str(metrics), **(env or {})},
    )
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return read_metrics(metrics)


def verl_oel_succeeds(args: list[str]) -> str:
    """Run a ``verl-oel`` launch (minutes) and assert it exits 0; returns its console output."""
    proc = run_verl_oel(args, timeout=1500)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-6000:])
    return proc.stdout


def read_round_1(run_dir: Path):
    """A finished run's (base eval, round-1 eval, round 1's stage markers)."""
    layout = RunLayout(run_dir.resolve())
    base, trained = (load_round_eval(layout.eval_json(r)) for r in (0, 1))
    return base, trained, read_stage_markers(layout, 1)


def one_oel_round(tmp_path: Path, model_dir: Path, recipe: str, *overrides: str):
    """One round of ``recipe`` from ``model_dir`` into ``tmp_path / "run"``: ``read_round_1``'s triple."""
    run_dir = tmp_path / "run"
    verl_oel_succeeds(
        [
            "train",
            "--config-name",
            recipe,
            f"actor_rollout_ref.model.path={model_dir}",
            f"trainer.default_local_dir={run_dir}",
            "oel.rounds=1",
            *overrides,
        ]
    )
    return read_round_1(run_dir)
