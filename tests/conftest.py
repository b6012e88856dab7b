"""Shared fixtures. Heavy fixtures (models) are session-scoped and cached on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from oel_testing import run_python

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Built once per machine (not per checkout: a fresh clone on the same machine reuses them) and kept
# across sessions. Safe to share: each build records a hash of everything it depends on (spec, seed,
# builder and library versions) and is redone when that changes (verl_oel/models/build_folder.py).
MODEL_CACHE = Path(
    os.environ.get(
        "VERL_OEL_TEST_CACHE",
        Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "verl_oel" / "test-models",
    )
)


@pytest.fixture
def python_in_subprocess():
    return run_python


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from verl_oel.models.build import build_tiny_model

    return build_tiny_model(MODEL_CACHE / "tiny-seed0", seed=0)


@pytest.fixture(scope="session")
def warm_model_dir() -> Path:
    """The warmed tiny model of the CPU demo and corridor (~10 minutes to build once; cached like the tiny
    one)."""
    from verl_oel.models.warm import build_warm_model

    return build_warm_model(MODEL_CACHE / "warm-seed0", seed=0)
