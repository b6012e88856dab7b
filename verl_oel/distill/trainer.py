"""verl's v1 synchronous trainer turned into a consolidation (on-policy context distillation) trainer.

Selected from YAML through verl's own trainer registry: ``trainer.v1.trainer_mode: oel_consolidation``
(``register_trainer``; the plugin imports this module whenever verl imports ``verl.trainer.ppo.v1``).
It differs from ``PPOTrainerSync`` in three places only:

- the actor/rollout/ref role runs ``ConsolidationWorker`` and always holds the ref model, which is the
  frozen teacher (verl would build a ref only for a KL loss or KL reward);
- a step is: rollout, reward and advantages (logged only), the student pass (verl's old-log-prob pass,
  keeping top-k ids), the teacher pass, and one actor update with the consolidation loss;
- the update sends the whole batch as one mini-batch, once, with verl's top-k logits hook on and its
  policy-gradient loss off.

Both trainer modes here log each phase's peak memory (``perf/peak_rss_mib/<phase>`` on CPU,
``perf/peak_gpu_allocated_mib/<phase>`` on GPUs; ``phase_memory.py``). The second mode,
``grpo_with_phase_memory``, is verl's own GRPO/PPO step unchanged (``PPOTrainerSync``), run by
``ConsolidationWorker`` (never configured for consolidation, so verl's own passes) to log those peaks:
the reference the consolidation step is compared with (``examples/bench_consolidation_step.py``).
"""

from __future__ import annotations

import ray
from omegaconf import DictConfig, OmegaConf
from transfer_queue import KVBatchMeta
from verl.trainer.ppo.utils import Role
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.trainer.ppo.v1.trainer_sync import PPOTrainerSync
from verl.utils.debug import marked_timer
from verl.utils.metric import reduce_metrics
from verl.utils.py_functional import rename_dict

from .config import ConsolidationConfig, check_single_update_per_batch
from .phase_memory import PhaseMemoryTrainerMixin
from .worker import ConsolidationWorker

TRAINER_MODE = "oel_consolidation"
GRPO_WITH_PHASE_MEMORY = "grpo_with_phase_memory"


def _run_with_consolidation_worker(trainer: PPOTrainerSync) -> None:
    """Make the actor/rollout(/ref) role of ``trainer``'s resource pools run ``ConsolidationWorker``."""
    for role in (Role.ActorRollout, Role.ActorRolloutRef):
        if role in trainer.role_worker_mapping:
            trainer.role_worker_mapping[role] = ray.remote(ConsolidationWorker)


@register_trainer(GRPO_WITH_PHASE_MEMORY)
class GRPOWithPhaseMemoryTrainer(PhaseMemoryTrainerMixin, PPOTrainerSync):
    """verl's own synchronous step (GRPO, PPO: whatever the recipe says), logging each phase's peak memory.

    Only the worker class differs from ``PPOTrainerSync``: ``ConsolidationWorker``, which without
    ``configure_consolidation`` runs verl's own ``compute_log_prob``, ``compute_ref_log_prob`` and
    ``update_actor``, and carries the memory readers.
    """

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        _run_with_consolidation_worker(self)


class ConsolidationSteps(PPOTrainerSync):
    """The consolidation step on ``PPOTrainerSync``; ``ConsolidationTrainer`` adds the phase memory."""

    def __init__(self, config: DictConfig) -> None:
        self.consolidation = ConsolidationConfig.from_mapping(
            OmegaConf.to_container(config.get("oel"), resolve=True) if config.get("oel") else None
        )
        problems = check_single_update_per_batch(config)
        if problems:
            raise ValueError("; ".join(problems))
        super().__init__(config)

    def _init_resource_pool_mgr(self) -> None:
        super()._init_resource_pool_mgr()
        for role in (Role.ActorRollout, Role.ActorRolloutRef):
            self.role_worker_mapping.pop(role, None)
            self.mapping.pop(role, None)
        self.role_worker_mapping[Role.ActorRolloutRef] = ray.remote(ConsolidationWorker)
        # The resource pool manager holds this same dict, so it sees the new role.
        self.mapping[Role.ActorRolloutRef] = "global_pool"

    def init(self) -> None:
        self._setup()
        chat_template_kwargs = OmegaConf.to_container(
            self.config.data.get("apply_chat_template_kwargs") or OmegaConf.create({}), resolve=True
        )
        self.actor_rollout_wg.configure_consolidation(
            OmegaConf.to_container(self.config.get("oel") or OmegaConf.create({}), resolve=True),
            chat_template_kwargs,
        )
        self.on_init_end()

    def _build_replay_buffer(self):
        """verl's replay buffer, polling every ``oel.poll_interval_s`` instead of its fixed 2 s (its sample
        loop reads the ``poll_interval`` attribute at each wait; verl 0.9.1 has no recipe key for it)."""
        buffer = super()._build_replay_buffer()
        buffer.poll_interval = ConsolidationConfig.from_mapping(
            OmegaConf.to_container(self.config.get("oel") or OmegaConf.create({}), resolve=True)
        ).poll_interval_s
        return buffer

    def refresh_teacher(self) -> None:
        """Make the current actor the frozen teacher (start of a new round)."""
        self.actor_rollout_wg.refresh_teacher()

    def _step_once(self, metrics: dict, timing_raw: dict, sample_batch_size: int) -> KVBatchMeta:
        with marked_timer("gen", timing_raw, color="red"):
            self.on_sample_begin()
            batch, off_policy_metrics = self.replay_buffer.sample(
                global_steps=self.global_steps, partition_id="train", batch_size=sample_batch_size
            )
            metrics.update(off_policy_metrics)
            batch.extra_info["temperature"] = self.config.actor_rollout_ref.rollout.temperature
            self.on_sample_end()

        if self.reward_loop_manager.reward_loop_worker_handles is None:
            with marked_timer("reward", timing_raw, color="yellow"):
                batch = self._compute_reward_colocate(batch, metrics=metrics)

        batch = self._balance_batch(batch, metrics=metrics)
        with marked_timer("old_log_prob", timing_raw, color="blue"):
            batch = self._compute_old_log_prob(batch, metrics=metrics)
        with marked_timer("teacher", timing_raw, color="olive"):
            batch = self._compute_teacher_log_prob(batch, metrics=metrics)
        # Rewards and advantages feed verl's logged metrics only; the loss never reads them.
        with marked_timer("adv", timing_raw, color="brown"):
            batch = self._compute_advantage(batch, metrics=metrics)
        with marked_timer("update_actor", timing_raw, color="red"):
            batch = self._update_actor(batch, metrics=metrics)
        return batch

    def _compute_teacher_log_prob(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """The teacher pass: the frozen ref model with each sample's knowledge, at the student's top-k ids."""
        return self.actor_rollout_wg.compute_teacher_log_probs(batch)

    def _update_actor(self, batch: KVBatchMeta, metrics: dict) -> KVBatchMeta:
        """One optimizer step on the whole batch with the consolidation loss (set on the worker)."""
        whole_batch = len(batch)
        batch.extra_info.update(
            {
                "calculate_entropy": False,
                # verl's hook that hands the loss the packed logits; "only" skips its policy log-probs.
                "distillation_use_topk": True,
                "distillation_only": True,
                "global_batch_size": whole_batch,
                "mini_batch_size": whole_batch,
                "epochs": 1,
                "seed": self.config.actor_rollout_ref.actor.data_loader_seed,
                "dataloader_kwargs": {"shuffle": False},
                # Raw logits to the loss, which divides by the rollout temperature in fp32 as the
                # student and teacher passes do (actor_loss.py); verl would divide in the model dtype.
                "temperature": 1.0,
            }
        )
        output = self.actor_rollout_wg.update_actor(batch)
        output = rename_dict(output["metrics"], "actor/")
        output["perf/mfu/actor"] = output.pop("actor/mfu")
        metrics.update(reduce_metrics(output))
        return batch


@register_trainer(TRAINER_MODE)
class ConsolidationTrainer(PhaseMemoryTrainerMixin, ConsolidationSteps):
    """Synchronous OPCD: the student samples, the frozen knowledge-conditioned teacher scores, one step;
    each phase's peak memory logged."""
