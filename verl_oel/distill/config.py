"""The ``oel:`` section of a consolidation recipe, validated once at start-up.

It holds only what verl's own sections cannot: which consolidation loss, how many top-k ids the teacher
scores, where each sample's knowledge text lives and how it enters the teacher's prompt. Everything else
(learning rate, lengths, temperature) stays in verl's keys, read from there.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig

from verl_oel.knowledge.injection import DEFAULT_KNOWLEDGE_TEMPLATE

from .losses import get_cd_loss

TOPK_LOSSES = ("topk_reverse_kl", "topk_reverse_kl_tail")
"""Losses that need the teacher's log-probs at the student's top-k ids."""

TEACHER_TOPK_LOSSES = ("forward_kl",)
"""Losses over the teacher's own top-k: its pass ships its top-k ids and its log-probs there
(``forward_kl`` with ``support="teacher_topk"``; ``oel.k`` >= the vocabulary makes it the exact one)."""

SAMPLED_TOKEN_LOSSES = ("k1", "k3")
"""Losses that need the teacher's log-prob at the sampled token only."""

TEACHER_IN_UPDATE_LOSSES = ("full_reverse_kl",)
"""Losses over the whole vocabulary: the teacher's logits cannot be shipped (V numbers per response token,
~300 KB at Qwen3's vocabulary in bf16), so the teacher pass ships only its prompt ids and the update runs the
frozen teacher itself, micro-batch by micro-batch, in the same process as the student's logits."""


OEL_LOOP_KEYS = frozenset(
    {
        "rounds",
        "game",
        "game_settings",
        "seed",
        "extraction",
        "deployment",
        "consolidation_steps",
        "mode",
        "teacher",
        "evaluation",
        "ood",
        "run_dir",
        "game_generation_workers",
    }
)
"""The OEL loop's keys (``verl_oel.oel.config.OELConfig``), which share the one flat ``oel:`` section with
consolidation's keys. Consolidation skips exactly these; the loop's own parser rejects anything else unknown,
so a typo is still named by one of the two. Listed here, not imported, because distillation must not depend
on the loop that drives it."""


class ConsolidationConfigError(ValueError):
    """An ``oel.*`` value that cannot work; the message starts with the key."""


@dataclass(frozen=True)
class ConsolidationConfig:
    """On-policy context distillation settings (recipe section ``oel:``).

    The teacher is verl's ref model (the frozen round-start policy) reading the student's prompt with
    the knowledge put into its first user message through ``knowledge_template``, exactly as evaluation
    with knowledge in context puts it (``verl_oel.knowledge.injection``).
    """

    loss: str = "topk_reverse_kl"
    k: int = 256
    chunk_size: int = 256
    knowledge_field: str = "oel_knowledge"
    knowledge_template: str = DEFAULT_KNOWLEDGE_TEMPLATE
    max_knowledge_length: int = 512
    # Seconds between verl's replay-buffer checks for finished rollouts. verl fixes 2.0 s and offers no key;
    # that wait is a floor under every stage and step (most of a CPU step), so the trainer sets this one.
    poll_interval_s: float = 0.1
    # The student and teacher passes run the common token prefix of a knowledge stream's rows (system
    # message + knowledge) once and each row's rest against its keys and values. Exact in float32 (to
    # 1e-5); in bf16 the prefix's keys are rounded by another kernel than in a whole-sequence forward, which
    # raises the empty-knowledge KL floor (measured 3.5e-5 against 1.6e-7 nats/token on the CPU's bf16
    # path). false: whole sequences, as verl's own forward runs them.
    share_prefix: bool = True
    # MiB of the teacher's device memory that may keep stream prefixes' keys and values from one step to the
    # next (the teacher is frozen for a round, so a stream's knowledge prefix reads the same every step):
    # 0 computes each stream's prefix once per step. Qwen3-4B in bf16 holds ~147 KiB per token, ~1.2 GiB
    # per 8.4k-token prefix; 10 streams want ~12.5 GiB per rank. Cleared whenever the teacher changes.
    teacher_prefix_cache_mib: int = 0

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.teacher_prefix_cache_mib, bool) or not isinstance(
            self.teacher_prefix_cache_mib, int
        ):
            problems.append(
                f"oel.teacher_prefix_cache_mib={self.teacher_prefix_cache_mib!r} must be an integer"
            )
        elif self.teacher_prefix_cache_mib < 0:
            problems.append(f"oel.teacher_prefix_cache_mib={self.teacher_prefix_cache_mib} must be >= 0")
        elif self.teacher_prefix_cache_mib and not self.share_prefix:
            problems.append(
                f"oel.teacher_prefix_cache_mib={self.teacher_prefix_cache_mib} keeps shared prefixes, but "
                "oel.share_prefix=false shares none"
            )
        if not isinstance(self.share_prefix, bool):
            problems.append(f"oel.share_prefix={self.share_prefix!r} must be true or false")
        if not self.poll_interval_s > 0:
            problems.append(f"oel.poll_interval_s={self.poll_interval_s} must be > 0")
        supported = TOPK_LOSSES + TEACHER_TOPK_LOSSES + SAMPLED_TOKEN_LOSSES + TEACHER_IN_UPDATE_LOSSES
        if self.loss not in supported:
            problems.append(f"oel.loss={self.loss!r}: the consolidation trainer supports {list(supported)}")
        else:
            get_cd_loss(self.loss)
        for key in ("k", "chunk_size", "max_knowledge_length"):
            if getattr(self, key) < 1:
                problems.append(f"oel.{key}={getattr(self, key)} must be >= 1")
        for placeholder in ("{knowledge}", "{prompt}"):
            if placeholder not in self.knowledge_template:
                problems.append(f"oel.knowledge_template lacks the {placeholder} placeholder")
        if problems:
            raise ConsolidationConfigError("; ".join(problems))

    @property
    def uses_topk(self) -> bool:
        """Whether the student pass must pick top-k ids and the teacher score them."""
        return self.loss in TOPK_LOSSES

    @property
    def uses_teacher_tail(self) -> bool:
        """Whether the teacher pass must also ship its log-mass outside the student's top-k."""
        return self.loss == "topk_reverse_kl_tail"

    @property
    def teacher_in_update(self) -> bool:
        """Whether the update runs the teacher (the teacher pass then ships only its prompt ids)."""
        return self.loss in TEACHER_IN_UPDATE_LOSSES

    @property
    def uses_teacher_topk(self) -> bool:
        """Whether the teacher pass must pick its own top-k ids and ship its log-probs there."""
        return self.loss in TEACHER_TOPK_LOSSES

    def loss_options(self) -> dict[str, Any]:
        """Keyword options of the selected loss in ``losses.py``."""
        options: dict[str, Any] = {"chunk_size": self.chunk_size}
        if self.uses_topk or self.uses_teacher_topk:
            options["k"] = self.k
        if self.uses_teacher_topk:
            options["support"] = "teacher_topk"
        return options

    @classmethod
    def from_mapping(cls, section: dict[str, Any] | None) -> ConsolidationConfig:
        """Build from a plain mapping (the resolved ``oel:`` section); unknown keys are errors, except the
        OEL loop's keys (``OEL_LOOP_KEYS``), which belong to the loop's own config."""
        section = {key: value for key, value in (section or {}).items() if key not in OEL_LOOP_KEYS}
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(section) - known)
        if unknown:
            raise ConsolidationConfigError(
                f"oel: unknown key(s) {', '.join('oel.' + k for k in unknown)}; known: {sorted(known)}"
            )
        return cls(**section)


def check_single_update_per_batch(config: DictConfig) -> list[str]:
    """Problems with verl keys that would break "one optimizer step per batch", each naming its key."""
    actor = config.actor_rollout_ref.actor
    problems = []
    if actor.ppo_epochs != 1:
        problems.append(
            f"actor_rollout_ref.actor.ppo_epochs={actor.ppo_epochs}: consolidation takes one step"
        )
    if actor.ppo_mini_batch_size != config.data.train_batch_size:
        problems.append(
            f"actor_rollout_ref.actor.ppo_mini_batch_size={actor.ppo_mini_batch_size} must equal "
            f"data.train_batch_size={config.data.train_batch_size}: one optimizer step per batch"
        )
    return problems
