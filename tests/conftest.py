"""Shared fixtures. Heavy fixtures (models) are session-scoped and cached on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from oel_testing import REPO_ROOT, run_python

# Tests never reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Built once per machine and reused across sessions: the builder skips a folder that already
# holds the same build (see verl_oel/models/build.py).
MODEL_CACHE = Path(os.environ.get("VERL_OEL_TEST_CACHE", REPO_ROOT / ".cache" / "test-models"))


@pytest.fixture
def python_in_subprocess():
    return run_python


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    from verl_oel.models.build import build_tiny_model

    return build_tiny_model(MODEL_CACHE / "tiny-seed0", seed=0)


@pytest.fixture(scope="session")
def warm_model_dir() -> Path:
    """The warmed tiny model of the CPU demo (~10 minutes to build once; cached like the tiny one)."""
    from verl_oel.models.warm import build_warm_model

    return build_warm_model(MODEL_CACHE / "warm-seed0", seed=0)
