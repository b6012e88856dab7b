"""Peak memory of each phase of a training step, logged with verl's metrics.

verl's v1 trainer logs each phase's time (``timing_s/<phase>``) but no memory. Two mixins add it:

- :class:`PhaseMemoryWorkerMixin`, on the actor/rollout/ref worker (``ConsolidationWorker``): reset the
  process's peak memory, and read the peak since the reset; each call runs on every rank.
- :class:`PhaseMemoryTrainerMixin`, on a v1 trainer: wraps the phases (``_compute_old_log_prob``,
  ``_compute_ref_log_prob``, ``_update_actor`` and the consolidation trainer's
  ``_compute_teacher_log_prob``) with a reset before and a read after, and puts the peak, the largest
  over the ranks, in the step's metrics:

  - on GPUs, ``perf/peak_gpu_allocated_mib/<phase>``: ``torch.cuda.max_memory_allocated`` (tensors
    allocated by torch in the worker's process, not the caching allocator's reserve, not other
    processes), and ``perf/peak_gpu_allocated_rise_mib/<phase>``, the same minus what was allocated at
    the phase's start;
  - on CPU, ``perf/peak_rss_mib/<phase>``: the worker process's peak resident set (``VmHWM`` of
    ``/proc/self/status``, reset by writing ``5`` to ``/proc/self/clear_refs``, Linux >= 4.0), and
    ``perf/peak_rss_rise_mib/<phase>``, the same minus the resident set at the phase's start.

Whose memory: the FSDP worker process of each rank (``ray::WorkerDict``), which holds the actor, its
optimizer and the ref model (the teacher). verl 0.9.1's vLLM rollout runs in other processes (its
``vLLMHttpServer`` actor and the engine processes it spawns, ``distributed_executor_backend="mp"``), so
the rollout's weights and KV cache are not counted, on CPU or GPU. The resident set counts everything the
process holds (the interpreter, libraries, the models, and what the allocator kept from earlier phases for
reuse: on CPU it grows over a run's first steps), so the absolute peak depends on the process's history;
the rise is the phase's own cost beyond what was resident at its start (memory the allocator already held
and reuses costs no rise). On GPUs both count live tensors only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from verl.single_controller.base.decorator import Dispatch, register

MIB = 2**20
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
# clear_refs value that resets the peak resident set (VmHWM) to the current one (Linux >= 4.0).
RESET_PEAK_RSS = "5"

PHASES = ("old_log_prob", "ref", "teacher", "update_actor")


def _status_kib(field: str) -> int:
    """``field`` (``VmHWM``, ``VmRSS``) of this process's ``/proc/self/status``, in KiB."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{STATUS} has no {field} line")


def _uses_cuda() -> bool:
    from verl.utils.device import get_device_name

    return get_device_name() == "cuda" and torch.cuda.is_available()


def memory_kind() -> str:
    """What the peak measures here: ``gpu_allocated`` or ``rss`` (the metric keys say it)."""
    return "gpu_allocated" if _uses_cuda() else "rss"


def reset_peak() -> dict[str, Any]:
    """Start a measure: the peak from now on. Returns ``{"kind", "start_mib"}`` (usage now)."""
    if _uses_cuda():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return {"kind": "gpu_allocated", "start_mib": torch.cuda.memory_allocated() / MIB}
    CLEAR_REFS.write_text(RESET_PEAK_RSS)
    return {"kind": "rss", "start_mib": _status_kib("VmRSS") / 1024}


def read_peak() -> dict[str, Any]:
    """The peak since the last :func:`reset_peak` (MiB): ``{"kind", "peak_mib", "now_mib"}``."""
    if _uses_cuda():
        torch.cuda.synchronize()
        return {
            "kind": "gpu_allocated",
            "peak_mib": torch.cuda.max_memory_allocated() / MIB,
            "now_mib": torch.cuda.memory_allocated() / MIB,
        }
    return {"kind": "rss", "peak_mib": _status_kib("VmHWM") / 1024, "now_mib": _status_kib("VmRSS") / 1024}


class PhaseMemoryWorkerMixin:
    """Worker methods (every rank) behind :class:`PhaseMemoryTrainerMixin`."""

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def reset_phase_peak_memory(self) -> dict[str, Any]:
        return reset_peak()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def read_phase_peak_memory(self) -> dict[str, Any]:
        return read_peak()


def peak_metrics(phase: str, starts: list[dict[str, Any]], peaks: list[dict[str, Any]]) -> dict[str, float]:
    """The metrics of one phase from every rank's reset and read: the largest peak and rise over ranks."""
    kind = peaks[0]["kind"]
    rise = max(peak["peak_mib"] - start["start_mib"] for start, peak in zip(starts, peaks, strict=True))
    # Linux folds the resident-page counts into the process's total in batches, so a phase that frees what
    # it allocates can read a peak a fraction of a MiB below its start (seen: -0.16 MiB).
    rise = max(rise, 0.0)
    return {
        f"perf/peak_{kind}_mib/{phase}": max(peak["peak_mib"] for peak in peaks),
        f"perf/peak_{kind}_rise_mib/{phase}": rise,
    }


class PhaseMemoryTrainerMixin:
    """Logs the peak memory of each phase of verl's step (see the module's docstring).

    Put it before the trainer class in the bases (``class T(PhaseMemoryTrainerMixin, PPOTrainerSync)``);
    the actor worker must carry :class:`PhaseMemoryWorkerMixin`. A worker group without those methods
    (another worker class) is left unmeasured. Each measure costs two calls to the workers (a few ms),
    inside the phase's ``timing_s``.
    """

    def _measure_phase(self, phase: str, metrics: dict, run, *args, **kwargs):
        group = getattr(self, "actor_rollout_wg", None)
        if phase == "ref":
            group = getattr(self, "ref_policy_wg", None) or group
        if group is None or not hasattr(group, "reset_phase_peak_memory"):
            return run(*args, **kwargs)
        starts = group.reset_phase_peak_memory()
        result = run(*args, **kwargs)
        metrics.update(peak_metrics(phase, starts, group.read_phase_peak_memory()))
        return result

    def _compute_old_log_prob(self, batch, metrics: dict):
        return self._measure_phase("old_log_prob", metrics, super()._compute_old_log_prob, batch, metrics)

    def _compute_ref_log_prob(self, batch, metrics: dict):
        return self._measure_phase("ref", metrics, super()._compute_ref_log_prob, batch, metrics)

    def _compute_teacher_log_prob(self, batch, metrics: dict):
        return self._measure_phase("teacher", metrics, super()._compute_teacher_log_prob, batch, metrics)

    def _update_actor(self, batch, metrics: dict):
        return self._measure_phase("update_actor", metrics, super()._update_actor, batch, metrics)


__all__ = [
    "PHASES",
    "PhaseMemoryTrainerMixin",
    "PhaseMemoryWorkerMixin",
    "memory_kind",
    "peak_metrics",
    "read_peak",
    "reset_peak",
]
