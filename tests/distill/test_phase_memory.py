"""The per-phase peak memory readers (``verl_oel/distill/phase_memory.py``), on this process: fast, no verl
launch (the real launch's metrics are checked in ``test_consolidation_cpu.py``)."""

from __future__ import annotations

import torch

from verl_oel.distill import phase_memory
from verl_oel.distill.phase_memory import PhaseMemoryTrainerMixin, peak_metrics, read_peak, reset_peak

ALLOCATED_MIB = 200


def test_the_peak_rises_by_what_a_phase_allocates_and_falls_back_after_a_reset():
    assert phase_memory.memory_kind() == "rss"  # this machine has no GPU
    start = reset_peak()
    assert start["kind"] == "rss" and start["start_mib"] > 0
    idle = read_peak()
    assert idle["peak_mib"] - start["start_mib"] < 50, (start, idle)

    reset_peak()
    before = read_peak()["now_mib"]
    block = torch.ones(ALLOCATED_MIB * 2**20 // 4, dtype=torch.float32)  # written: every page resident
    touched = read_peak()
    del block
    rise = touched["peak_mib"] - before
    assert 0.9 * ALLOCATED_MIB < rise < 1.3 * ALLOCATED_MIB, (before, touched)

    # Freed (a block this large goes back to the system); after a reset the peak is today's usage again.
    start = reset_peak()
    after = read_peak()
    assert after["peak_mib"] < touched["peak_mib"] - 0.8 * ALLOCATED_MIB, (touched, after)
    assert after["peak_mib"] - start["start_mib"] < 50


class _Group:
    """A worker group of two ranks, answering as ``Dispatch.ONE_TO_ALL`` does: one value per rank."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def reset_phase_peak_memory(self):
        self.calls.append("reset")
        return [{"kind": "rss", "start_mib": 1000.0}, {"kind": "rss", "start_mib": 900.0}]

    def read_phase_peak_memory(self):
        self.calls.append("read")
        return [{"kind": "rss", "peak_mib": 1100.0, "now_mib": 1000.0}, {"kind": "rss", "peak_mib": 1050.0}]


class _Base:
    def _compute_old_log_prob(self, batch, metrics):
        self.actor_rollout_wg.calls.append("old_log_prob")
        return batch + ["old"]

    def _update_actor(self, batch, metrics):
        return batch + ["update"]


class _Trainer(PhaseMemoryTrainerMixin, _Base):
    pass


def test_the_trainer_mixin_resets_before_the_phase_reads_after_it_and_logs_the_max_over_ranks():
    trainer = _Trainer()
    trainer.actor_rollout_wg = _Group()
    metrics: dict = {}
    assert trainer._compute_old_log_prob([], metrics=metrics) == ["old"]
    assert trainer.actor_rollout_wg.calls == ["reset", "old_log_prob", "read"]
    assert metrics == {"perf/peak_rss_mib/old_log_prob": 1100.0, "perf/peak_rss_rise_mib/old_log_prob": 150.0}


def test_a_worker_group_without_the_readers_is_left_unmeasured():
    trainer = _Trainer()
    trainer.actor_rollout_wg = object()
    metrics: dict = {}
    assert trainer._update_actor([], metrics) == ["update"]
    assert metrics == {}


def test_gpu_keys_name_what_they_measure():
    starts = [{"kind": "gpu_allocated", "start_mib": 10.0}]
    peaks = [{"kind": "gpu_allocated", "peak_mib": 30.0, "now_mib": 12.0}]
    assert peak_metrics("teacher", starts, peaks) == {
        "perf/peak_gpu_allocated_mib/teacher": 30.0,
        "perf/peak_gpu_allocated_rise_mib/teacher": 20.0,
    }


def test_grpo_with_phase_memory_is_verls_own_step_with_the_measures():
    """The bench's reference: registered in verl's v1 trainer registry, verl's ``_step_once`` and passes
    untouched (only the worker class and the phase wrappers differ)."""
    from verl.trainer.ppo.v1.trainer_base import get_trainer_cls
    from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync

    from verl_oel.distill import trainer

    grpo = get_trainer_cls(trainer.GRPO_WITH_PHASE_MEMORY)
    assert grpo is trainer.GRPOWithPhaseMemoryTrainer and issubclass(grpo, PPOTrainerSync)
    assert grpo._step_once is PPOTrainerSync._step_once
    assert grpo._compute_ref_log_prob is PhaseMemoryTrainerMixin._compute_ref_log_prob
    assert get_trainer_cls(trainer.TRAINER_MODE)._update_actor is PhaseMemoryTrainerMixin._update_actor
