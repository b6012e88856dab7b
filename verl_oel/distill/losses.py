"""Consolidation losses for on-policy context distillation (OPCD, the loss of OEL).

The student p_θ has sampled a response y; a frozen teacher p_T, which had the knowledge in its prompt,
scores the same tokens. Every loss is a pure function of those tensors, returns the token-mean over
response tokens (or the per-token values) and detached metrics, and is registered by name
(``register_cd_loss``) so a recipe picks it from YAML, as verl picks its policy and distillation losses.

Conventions shared by every function here:

- Per-position tensors are aligned: position t of ``student_logits`` is the distribution response token
  t was sampled from. Logits are [B, T, V], masks and sampled ids [B, T], top-k ids and log-probs
  [B, T, k].
- Logits are raw. p = softmax(logits / temperature) over the FULL vocabulary, with the rollout's
  temperature (0.7 in the paper) for student and teacher alike, so a top-k slice of p sums to less than
  one; it is never renormalised.
- Work over the vocabulary runs on chunks of ``chunk_size`` response tokens in float32 (float64 for
  float64 inputs): besides the inputs, only the gradient of the student logits is ever [B, T, V].
  Positions with mask 0 (padding, environment tokens of multi-turn data) are skipped rather than
  computed and zeroed, so whatever their logits hold, they add nothing and get exactly zero gradient.
  Logits must be finite.
- The teacher is a constant: no gradient reaches teacher logits or teacher log-probs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

DEFAULT_CHUNK_TOKENS = 256
"""Response tokens per vocabulary chunk: at Qwen3's V ≈ 152k a float32 [chunk, V] buffer is ~155 MB."""

CDLossFn = Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]
"""``loss(batch: DistillationBatch, **options) -> (loss, metrics)``; options come from YAML.

Every loss takes ``chunk_size`` and ``reduction`` ("mean": the scalar token-mean over response tokens
and token-mean metrics; "none": per-token values [B, T], the metrics too); the top-k ones also take
``k``, ``forward_kl`` also ``support``.
"""

_CD_LOSSES: dict[str, CDLossFn] = {}


def register_cd_loss(name: str) -> Callable[[CDLossFn], CDLossFn]:
    """Register a consolidation loss under ``name``, the key a recipe selects it by."""

    def decorator(loss: CDLossFn) -> CDLossFn:
        if name in _CD_LOSSES:
            raise ValueError(f"consolidation loss {name!r} is already registered")
        _CD_LOSSES[name] = loss
        return loss

    return decorator


def get_cd_loss(name: str) -> CDLossFn:
    """The consolidation loss registered as ``name``; an unknown name fails listing the known ones."""
    if name not in _CD_LOSSES:
        raise ValueError(f"unknown consolidation loss {name!r}; known losses: {sorted(_CD_LOSSES)}")
    return _CD_LOSSES[name]


@dataclass(frozen=True)
class DistillationBatch:
    """What the trainer holds for one micro-batch; each loss reads the fields it needs.

    Only ``student_logits`` carries gradient. The teacher comes either as logits (teacher and student in one
    process: ``teacher_logits`` at every position, or ``teacher_response_logits`` at the response tokens, as
    the update of ``full_reverse_kl`` runs the teacher) or, as in the real system where the teacher is a
    separate worker, as log-probs at fixed ids, which is all that worker needs to send back:
    ``teacher_topk_logprobs`` at ``topk_ids`` (the student's top-k from its pre-update forward for
    ``topk_reverse_kl``, the teacher's own top-k for ``forward_kl(support="teacher_topk")``), and
    ``teacher_sampled_logprobs`` at ``sampled_ids`` for ``k1``/``k3``, and for ``topk_reverse_kl_tail``
    ``teacher_log_tail``, the log of the teacher's mass OUTSIDE ``topk_ids`` (``teacher_log_tail_at``: it
    cannot be recovered from the log-probs at the ids when they hold almost all the mass). Teacher
    log-probs must be full-vocabulary log-softmaxes of logits / ``temperature``, as ``teacher_logprobs_at``
    returns them.
    """

    student_logits: torch.Tensor
    response_mask: torch.Tensor
    temperature: float = 1.0
    teacher_logits: torch.Tensor | None = None
    # [M, V]: the teacher's raw logits at the M response tokens only (the mask's True positions, in order),
    # what a teacher forward in the student's process yields (``full_reverse_kl`` in verl's update), so
    # nothing is held for prompt or knowledge positions.
    teacher_response_logits: torch.Tensor | None = None
    topk_ids: torch.Tensor | None = None
    teacher_topk_logprobs: torch.Tensor | None = None
    sampled_ids: torch.Tensor | None = None
    teacher_sampled_logprobs: torch.Tensor | None = None
    teacher_log_tail: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.student_logits.dim() != 3:
            raise ValueError(f"student_logits must be [B, T, V], got {tuple(self.student_logits.shape)}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        positions = tuple(self.student_logits.shape[:2])
        dims = {
            "response_mask": 2,
            "teacher_logits": 3,
            "topk_ids": 3,
            "teacher_topk_logprobs": 3,
            "sampled_ids": 2,
            "teacher_sampled_logprobs": 2,
            "teacher_log_tail": 2,
        }
        for name, ndim in dims.items():
            value = getattr(self, name)
            if value is not None and (value.dim() != ndim or tuple(value.shape[:2]) != positions):
                raise ValueError(
                    f"{name} must be {ndim}-D with leading shape {positions} like student_logits, "
                    f"got {tuple(value.shape)}"
                )
        if self.teacher_response_logits is not None:
            if self.teacher_logits is not None:
                raise ValueError("give teacher_logits or teacher_response_logits, not both")
            shape = (int(self.response_mask.sum()), self.student_logits.shape[-1])
            if tuple(self.teacher_response_logits.shape) != shape:
                raise ValueError(
                    f"teacher_response_logits must be [response tokens, V] = {shape}, got "
                    f"{tuple(self.teacher_response_logits.shape)}"
                )
        if self.teacher_logits is not None and self.teacher_logits.shape != self.student_logits.shape:
            raise ValueError(
                f"teacher_logits shape {tuple(self.teacher_logits.shape)} differs from student_logits "
                f"{tuple(self.student_logits.shape)}"
            )
        pairs = (
            ("teacher_topk_logprobs", "topk_ids"),
            ("teacher_sampled_logprobs", "sampled_ids"),
            ("teacher_log_tail", "topk_ids"),
        )
        for logprobs, ids in pairs:
            if getattr(self, logprobs) is not None and getattr(self, ids) is None:
                raise ValueError(f"{logprobs} given without the {ids} they were gathered at")
        if (
            self.topk_ids is not None
            and self.teacher_topk_logprobs is not None
            and self.topk_ids.shape != self.teacher_topk_logprobs.shape
        ):
            raise ValueError(
                f"topk_ids {tuple(self.topk_ids.shape)} and teacher_topk_logprobs "
                f"{tuple(self.teacher_topk_logprobs.shape)} must have the same shape"
            )


def topk_support(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Ids of the ``min(k, V)`` largest logits at each position ([..., min(k, V)]).

    Called on the student's PRE-update forward, so that the ids the teacher scores and the ids the loss
    sums over are the same. Temperature does not change the order, so raw logits do; k ≥ V gives the
    whole vocabulary, which turns the top-k losses into the exact ones.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return torch.topk(logits.detach(), min(k, logits.shape[-1]), dim=-1).indices


def teacher_logprobs_at(
    teacher_logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """log softmax(teacher_logits / temperature) over the full vocabulary, gathered at ``ids``.

    This is what a separate teacher worker sends back for the top-k losses: k numbers per position
    ([..., k], float32) instead of V. It runs chunk by chunk over positions, so beyond the logits
    themselves it never holds more than [chunk_size, V] floats, and it records no gradient: the teacher
    is frozen.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if teacher_logits.shape[:-1] != ids.shape[:-1]:
        raise ValueError(
            f"ids {tuple(ids.shape)} must share the leading shape of teacher_logits "
            f"{tuple(teacher_logits.shape)}"
        )
    flat_logits = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    rows = torch.arange(flat_logits.shape[0], device=flat_logits.device)
    with torch.no_grad():
        log_probs, _ = _gather_log_probs(
            flat_logits, rows, ids.reshape(-1, ids.shape[-1]).long(), temperature, chunk_size
        )
    return log_probs.reshape(ids.shape)


def teacher_log_tail_at(
    teacher_logits: torch.Tensor,
    ids: torch.Tensor,
    temperature: float,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
) -> torch.Tensor:
    """log of the mass softmax(teacher_logits / temperature) puts OUTSIDE ``ids`` ([...]; ids [..., k]),
    what a teacher worker sends for ``topk_reverse_kl_tail`` besides its log-probs at the ids.

    Computed as a log-sum-exp over the other tokens' log-probs, so it is accurate in log space however
    small the tail is; log(1 − Σ exp(log-probs at the ids)) is not: in float32 each of those log-probs is
    off by ~1e-7 of the logits' scale, so a tail below ~1e-6 (a confident teacher over a top-256) is
    round-off. A tail of exactly 0 (the ids cover the vocabulary) is held at the dtype's smallest normal
    number, so its log is finite.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    flat_logits = teacher_logits.detach().reshape(-1, teacher_logits.shape[-1])
    rows = torch.arange(flat_logits.shape[0], device=flat_logits.device)
    with torch.no_grad():
        log_tail = _gather_log_tail(
            flat_logits, rows, ids.reshape(-1, ids.shape[-1]).long(), temperature, chunk_size
        )
    return log_tail.reshape(ids.shape[:-1])


# ---------------------------------------------------------------------------------------------------------
# Chunked kernels over the vocabulary. Rows are flattened positions; ``rows`` selects the response tokens.
# ---------------------------------------------------------------------------------------------------------


def _chunk_starts(num_rows: int, chunk_size: int) -> range:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return range(0, num_rows, chunk_size)


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _chunk_log_probs(flat_logits: torch.Tensor, rows: torch.Tensor, temperature: float) -> torch.Tensor:
    chunk = flat_logits.index_select(0, rows).to(_compute_dtype(flat_logits.dtype))
    return torch.log_softmax(chunk / temperature, dim=-1)


def _gather_log_probs(
    flat_logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, temperature: float, chunk_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p at ``ids`` ([M, k]) and the full-vocabulary entropy ([M]) of the selected rows."""
    dtype = _compute_dtype(flat_logits.dtype)
    log_probs_at_ids = flat_logits.new_empty(ids.shape, dtype=dtype)
    entropy = flat_logits.new_empty(rows.shape, dtype=dtype)
    for start in _chunk_starts(rows.numel(), chunk_size):
        stop = start + chunk_size
        log_probs = _chunk_log_probs(flat_logits, rows[start:stop], temperature)
        log_probs_at_ids[start:stop] = log_probs.gather(-1, ids[start:stop])
        entropy[start:stop] = -(log_probs.exp() * log_probs).sum(-1)
    return log_probs_at_ids, entropy


def _gather_log_tail(
    flat_logits: torch.Tensor, rows: torch.Tensor, ids: torch.Tensor, temperature: float, chunk_size: int
) -> torch.Tensor:
    """log of the mass outside ``ids`` ([M]) of the selected rows: a log-sum-exp over the other tokens'
    log-probs (accurate however small the tail), clamped to the log of the dtype's smallest normal."""
    dtype = _compute_dtype(flat_logits.dtype)
    log_tail = flat_logits.new_empty(rows.shape, dtype=dtype)
    floor = math.log(torch.finfo(dtype).tiny)
    for start in _chunk_starts(rows.numel(), chunk_size):
        stop = start + chunk_size
        log_probs = _chunk_log_probs(flat_logits, rows[start:stop], temperature)
        outside = log_probs.scatter(-1, ids[start:stop], float("-inf"))
        log_tail[start:stop] = torch.logsumexp(outside, dim=-1).clamp_min(floor)
    return log_tail


class _GatheredLogSoftmax(torch.autograd.Function):
    """log softmax(z / τ) at ids, differentiable in z, with a chunked backward.

    Autograd through log_softmax would save a [M, V] float tensor for the backward; here the backward
    recomputes p per chunk instead: d log p_i / d z_j = (δ_ij − p_j) / τ, so a row's gradient is
    (scatter(g, ids) − p · Σ g) / τ. The entropy output is a free by-product for metrics.
    """

    @staticmethod
    def forward(ctx, flat_logits, rows, ids, temperature, chunk_size):
        log_probs, entropy = _gather_log_probs(flat_logits, rows, ids, temperature, chunk_size)
        ctx.save_for_backward(flat_logits, rows, ids)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        ctx.mark_non_differentiable(entropy)
        return log_probs, entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_log_probs, _grad_entropy):
        flat_logits, rows, ids = ctx.saved_tensors
        grad = torch.zeros_like(flat_logits)
        for start in _chunk_starts(rows.numel(), ctx.chunk_size):
            stop = start + ctx.chunk_size
            g = grad_log_probs[start:stop]
            probs = _chunk_log_probs(flat_logits, rows[start:stop], ctx.temperature).exp()
            row_grad = (probs * -g.sum(-1, keepdim=True)).scatter_add(-1, ids[start:stop], g)
            grad.index_copy_(0, rows[start:stop], (row_grad / ctx.temperature).to(grad.dtype))
        return grad, None, None, None, None


class _FullVocabKL(torch.autograd.Function):
    """Per-token KL between student and teacher over the whole vocabulary, chunked in both passes.

    With s = z / τ, p = softmax(s), q = softmax(teacher / τ):
      reverse  KL(p‖q) = Σ p (log p − log q),   ∂/∂s_j = p_j (log p_j − log q_j − KL)
      forward  KL(q‖p) = Σ q (log q − log p),   ∂/∂s_j = p_j − q_j
    Nothing [M, V] is saved: the backward recomputes p and q per chunk and writes the student's gradient
    straight into its [N, V] buffer. Returns (kl, student entropy, teacher entropy), the entropies as
    free by-products for metrics; the teacher gets no gradient.
    """

    @staticmethod
    def forward(ctx, flat_student, flat_teacher, rows, teacher_rows, temperature, chunk_size, reverse):
        dtype = _compute_dtype(flat_student.dtype)
        kl, student_entropy, teacher_entropy = (
            flat_student.new_empty(rows.shape, dtype=dtype) for _ in range(3)
        )
        for start in _chunk_starts(rows.numel(), chunk_size):
            stop = start + chunk_size
            log_p = _chunk_log_probs(flat_student, rows[start:stop], temperature)
            log_q = _chunk_log_probs(flat_teacher, teacher_rows[start:stop], temperature).to(dtype)
            p, q = log_p.exp(), log_q.exp()
            kl[start:stop] = (p * (log_p - log_q) if reverse else q * (log_q - log_p)).sum(-1)
            student_entropy[start:stop] = -(p * log_p).sum(-1)
            teacher_entropy[start:stop] = -(q * log_q).sum(-1)
        ctx.save_for_backward(flat_student, flat_teacher, rows, teacher_rows, kl)
        ctx.temperature, ctx.chunk_size, ctx.reverse = temperature, chunk_size, reverse
        ctx.mark_non_differentiable(student_entropy, teacher_entropy)
        return kl, student_entropy, teacher_entropy

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_kl, _grad_student_entropy, _grad_teacher_entropy):
        flat_student, flat_teacher, rows, teacher_rows, kl = ctx.saved_tensors
        grad = torch.zeros_like(flat_student)
        for start in _chunk_starts(rows.numel(), ctx.chunk_size):
            stop = start + ctx.chunk_size
            log_p = _chunk_log_probs(flat_student, rows[start:stop], ctx.temperature)
            log_q = _chunk_log_probs(flat_teacher, teacher_rows[start:stop], ctx.temperature).to(log_p.dtype)
            p = log_p.exp()
            if ctx.reverse:
                row_grad = p * (log_p - log_q - kl[start:stop, None])
            else:
                row_grad = p - log_q.exp()
            row_grad *= grad_kl[start:stop, None] / ctx.temperature
            grad.index_copy_(0, rows[start:stop], row_grad.to(grad.dtype))
        return grad, None, None, None, None, None, None


# ---------------------------------------------------------------------------------------------------------
# Shared plumbing of the registered losses.
# ---------------------------------------------------------------------------------------------------------


class _SupportLogProbs(NamedTuple):
    """Student and teacher log-probs on a per-token support of ids, for the response tokens."""

    student: torch.Tensor  # [M, k], differentiable in the student logits
    teacher: torch.Tensor  # [M, k], constant
    student_entropy: torch.Tensor  # [M], full vocabulary
    teacher_entropy: torch.Tensor | None  # [M], full vocabulary; None when no teacher logits were given
    ids: torch.Tensor  # [M, k] long, the support


def _response_rows(response_mask: torch.Tensor) -> torch.Tensor:
    return response_mask.reshape(-1).nonzero().squeeze(-1)


def _select(per_position: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    return per_position.reshape(-1, *per_position.shape[2:]).index_select(0, rows)


def _flat_logits(logits: torch.Tensor) -> torch.Tensor:
    return logits.reshape(-1, logits.shape[-1])


def _token_mean(per_token: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Mean over response tokens; a batch without any is 0 (still differentiable), not NaN."""
    return per_token.sum() / max(rows.numel(), 1)


def _reduce(
    per_token: torch.Tensor, rows: torch.Tensor, batch: DistillationBatch, reduction: str
) -> torch.Tensor:
    """The token-mean over response tokens, or with ``reduction="none"`` the per-token values as [B, T]
    (0 where masked) for a caller that aggregates across micro-batches itself, e.g. verl's ``agg_loss``.
    """
    if reduction == "mean":
        return _token_mean(per_token, rows)
    if reduction == "none":
        positions = batch.response_mask.shape
        return per_token.new_zeros(positions.numel()).index_add(0, rows, per_token).reshape(positions)
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


def _metrics(
    rows: torch.Tensor, batch: DistillationBatch, reduction: str, **per_token: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """Detached token-means of the given per-token quantities (absent ones left out), plus the token count.

    The count lets a caller that accumulates micro-batches re-weight each micro-batch's token-mean into
    a token-mean over the whole batch. With ``reduction="none"`` each metric is instead its per-token
    values as [B, T] (0 where masked), like the loss, and there is no count: a caller that aggregates
    itself (verl's update) averages them over its own mask, and needs no second pass over the logits.
    """
    present = {name: v.detach() for name, v in per_token.items() if v is not None}
    if reduction == "none":
        return {name: _reduce(v, rows, batch, "none") for name, v in present.items()}
    metrics = {name: _token_mean(v, rows) for name, v in present.items()}
    metrics["num_tokens"] = torch.tensor(float(rows.numel()), device=rows.device)
    return metrics


def _support_ids(
    ids: torch.Tensor | None, source_logits: torch.Tensor | None, k: int, vocab: int, loss: str
) -> torch.Tensor:
    """The given top-k ids, checked against k, or else the top-k of ``source_logits``."""
    if k < 1:
        raise ValueError(f"{loss}: k must be >= 1, got {k}")
    if ids is None:
        if source_logits is None:
            raise ValueError(f"{loss}: without topk_ids it needs teacher_logits")
        return topk_support(source_logits, k)
    if ids.shape[-1] != min(k, vocab):
        raise ValueError(
            f"{loss}: topk_ids holds {ids.shape[-1]} ids per position, but k={k} over a vocabulary of "
            f"{vocab} means {min(k, vocab)}"
        )
    return ids


def _log_probs_on_support(
    batch: DistillationBatch,
    rows: torch.Tensor,
    ids: torch.Tensor,
    teacher_log_probs: torch.Tensor | None,
    chunk_size: int,
    loss: str,
) -> _SupportLogProbs:
    ids_at_rows = _select(ids, rows).long()
    student, student_entropy = _GatheredLogSoftmax.apply(
        _flat_logits(batch.student_logits), rows, ids_at_rows, batch.temperature, chunk_size
    )
    if teacher_log_probs is not None:
        teacher = _select(teacher_log_probs.detach(), rows).to(student.dtype)
        return _SupportLogProbs(student, teacher, student_entropy, None, ids_at_rows)
    if batch.teacher_logits is None:
        raise ValueError(f"{loss}: the batch has neither teacher_logits nor teacher log-probs at its ids")
    with torch.no_grad():
        teacher, teacher_entropy = _gather_log_probs(
            _flat_logits(batch.teacher_logits.detach()), rows, ids_at_rows, batch.temperature, chunk_size
        )
    return _SupportLogProbs(student, teacher.to(student.dtype), student_entropy, teacher_entropy, ids_at_rows)


def _on_student_topk(
    batch: DistillationBatch, k: int, chunk_size: int, loss: str
) -> tuple[torch.Tensor, _SupportLogProbs]:
    """Response rows and both log-probs on the student's top-k (``batch.topk_ids``, else taken from the
    student logits, the teacher then coming as logits): the support of the reverse top-k losses."""
    vocab = batch.student_logits.shape[-1]
    ids = _support_ids(batch.topk_ids, batch.student_logits, k, vocab, loss)
    rows = _response_rows(batch.response_mask)
    return rows, _log_probs_on_support(batch, rows, ids, batch.teacher_topk_logprobs, chunk_size, loss)


def _topk_metrics(
    rows: torch.Tensor,
    on_support: _SupportLogProbs,
    per_token: torch.Tensor,
    batch: DistillationBatch,
    reduction: str,
) -> dict[str, torch.Tensor]:
    """Metrics of a loss on a top-k support; the teacher's entropy is full-vocabulary only when known."""
    student_probs, teacher_probs = on_support.student.exp(), on_support.teacher.exp()
    if on_support.teacher_entropy is not None:
        teacher_entropy = {"teacher_entropy": on_support.teacher_entropy}
    else:
        teacher_entropy = {"teacher_entropy_topk": -(teacher_probs * on_support.teacher).sum(-1)}
    return _metrics(
        rows,
        batch,
        reduction,
        kl=per_token,
        student_entropy=on_support.student_entropy,
        student_topk_mass=student_probs.sum(-1),
        teacher_topk_mass=teacher_probs.sum(-1),
        **teacher_entropy,
    )


def _full_vocab_kl(
    batch: DistillationBatch, chunk_size: int, reduction: str, reverse: bool, loss: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    rows = _response_rows(batch.response_mask)
    if batch.teacher_response_logits is not None:
        teacher = batch.teacher_response_logits.detach()
        teacher_rows = torch.arange(rows.numel(), device=teacher.device)
    elif batch.teacher_logits is not None:
        teacher, teacher_rows = _flat_logits(batch.teacher_logits.detach()), rows
    else:
        raise ValueError(f"{loss}: the full-vocabulary KL needs teacher_logits or teacher_response_logits")
    per_token, student_entropy, teacher_entropy = _FullVocabKL.apply(
        _flat_logits(batch.student_logits),
        teacher,
        rows,
        teacher_rows,
        batch.temperature,
        chunk_size,
        reverse,
    )
    metrics = _metrics(
        rows,
        batch,
        reduction,
        kl=per_token,
        student_entropy=student_entropy,
        teacher_entropy=teacher_entropy,
    )
    return _reduce(per_token, rows, batch, reduction), metrics


def _sampled_token_log_probs(
    batch: DistillationBatch, chunk_size: int, loss: str
) -> tuple[torch.Tensor, _SupportLogProbs]:
    """Response rows and the log-probs at the sampled tokens, a support of one id ([M, 1])."""
    if batch.sampled_ids is None:
        raise ValueError(f"{loss}: needs sampled_ids, the response tokens the student sampled")
    rows = _response_rows(batch.response_mask)
    teacher = None if batch.teacher_sampled_logprobs is None else batch.teacher_sampled_logprobs[..., None]
    return rows, _log_probs_on_support(batch, rows, batch.sampled_ids[..., None], teacher, chunk_size, loss)


# ---------------------------------------------------------------------------------------------------------
# The registered losses.
# ---------------------------------------------------------------------------------------------------------


@register_cd_loss("topk_reverse_kl")
def topk_reverse_kl(
    batch: DistillationBatch,
    *,
    k: int = 256,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The paper's loss: reverse KL(p_θ‖p_T) summed over the student's top-k tokens at each position.

    L_t = Σ_{v ∈ TopK_θ(t)} p_θ(v) (log p_θ(v) − log p_T(v)), both full-vocabulary softmaxes, NOT
    renormalised over the k tokens. Analytic over k tokens instead of one sample: a low-variance signal
    that needs only k teacher numbers per position. The support is ``batch.topk_ids`` (the student's
    top-k from its pre-update forward, the ids the teacher worker scored); without them it is taken from
    ``student_logits`` and the teacher must come as logits. k ≥ V makes it the exact reverse KL.

    Truthful properties of the truncation (pinned by tests): with M and Q the student's and teacher's mass
    on the support, L_t ≥ M log(M/Q) ≥ −1/e (log-sum inequality), so L_t can be negative; and at
    p_T = p_θ the loss is 0 but its gradient is ∇M, not 0: descent moves student mass off the top-k set,
    at a rate that scales with the uncovered mass 1 − M.
    """
    rows, on_support = _on_student_topk(batch, k, chunk_size, "topk_reverse_kl")
    per_token = (on_support.student.exp() * (on_support.student - on_support.teacher)).sum(-1)
    return _reduce(per_token, rows, batch, reduction), _topk_metrics(
        rows, on_support, per_token, batch, reduction
    )


def _teacher_log_tail(
    batch: DistillationBatch, rows: torch.Tensor, ids: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """The teacher's log-mass outside the support at the response rows ([M]), from its logits or as the
    teacher worker shipped it."""
    if batch.teacher_logits is not None:
        flat = _flat_logits(batch.teacher_logits.detach())
        return _gather_log_tail(flat, rows, ids, batch.temperature, chunk_size)
    if batch.teacher_log_tail is None:
        raise ValueError(
            "topk_reverse_kl_tail: the batch has neither teacher_logits nor teacher_log_tail (the "
            "teacher's log-mass outside topk_ids, teacher_log_tail_at; its log-probs at the ids cannot "
            "give it accurately)"
        )
    return _select(batch.teacher_log_tail.detach(), rows).to(_compute_dtype(batch.student_logits.dtype))


@register_cd_loss("topk_reverse_kl_tail")
def topk_reverse_kl_tail(
    batch: DistillationBatch,
    *,
    k: int = 256,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The top-k reverse KL with one more bucket for the rest of the vocabulary: the exact reverse KL
    between the two distributions coarsened to the student's top-k tokens and "every other token".

    L_t = Σ_{v ∈ S} p_θ(v) (log p_θ(v) − log p_T(v)) + (1 − M) (log(1 − M) − log(1 − Q)), with S the
    student's top-k (``batch.topk_ids``, the ids the teacher worker scored), M and Q the student's and
    teacher's mass on S. It needs nothing more than ``topk_reverse_kl`` (the teacher's log-probs at S give
    Q), and unlike it, it is a true KL: L_t ≥ 0, and at p_T = p_θ both the loss and its gradient are
    exactly 0, so a student that already matches its teacher is left alone instead of being pushed off its
    own top-k. The gradient with respect to the student's log-prob s_v of each v in S (through the
    full-vocabulary softmax, like the loss's value) is p_θ(v) (s_v − log p_T(v) − log((1 − M)/(1 − Q))),
    applied as written: the values are the loss's, the gradient is that formula's, with no cancellation
    left to float round-off. k ≥ V makes it the exact reverse KL (an empty tail adds 0).
    """
    rows, on_support = _on_student_topk(batch, k, chunk_size, "topk_reverse_kl_tail")
    student, teacher = on_support.student, on_support.teacher
    with torch.no_grad():
        # Both tails as log-sum-exps over the other tokens (``teacher_log_tail_at``), never as log(1 − M):
        # the top-k holds almost all the mass of a confident model, and 1 − M would be round-off.
        student_tail = _gather_log_tail(
            _flat_logits(batch.student_logits.detach()), rows, on_support.ids, batch.temperature, chunk_size
        )
        probs = student.exp()
        log_tail_ratio = student_tail - _teacher_log_tail(batch, rows, on_support.ids, chunk_size)
        value = (probs * (student - teacher)).sum(-1) + student_tail.exp() * log_tail_ratio
        grad = probs * (student - teacher - log_tail_ratio[:, None])
    per_token = value + (grad * (student - student.detach())).sum(-1)
    return _reduce(per_token, rows, batch, reduction), _topk_metrics(
        rows, on_support, value, batch, reduction
    )


@register_cd_loss("full_reverse_kl")
def full_reverse_kl(
    batch: DistillationBatch, *, chunk_size: int = DEFAULT_CHUNK_TOKENS, reduction: str = "mean"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Exact reverse KL(p_θ‖p_T) over the whole vocabulary, from student and teacher logits.

    The quantity the top-k loss truncates, for when teacher and student share a process. Computed in
    chunks of response tokens with an analytic chunked backward, so no [B, T, V] intermediate is ever
    held; values and gradients equal an unchunked computation.
    """
    return _full_vocab_kl(batch, chunk_size, reduction, reverse=True, loss="full_reverse_kl")


@register_cd_loss("forward_kl")
def forward_kl(
    batch: DistillationBatch,
    *,
    support: str = "full",
    k: int = 256,
    chunk_size: int = DEFAULT_CHUNK_TOKENS,
    reduction: str = "mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward KL(p_T‖p_θ): the off-policy context-distillation baseline, mass-covering rather than seeking.

    ``support="full"`` is exact over the vocabulary (needs teacher logits). ``support="teacher_topk"``
    sums Σ_{v ∈ TopK_T(t)} p_T(v) (log p_T(v) − log p_θ(v)) over the teacher's top-k, the form a teacher
    worker that returns its own top-k log-probs supports (``batch.topk_ids`` are then the TEACHER's ids);
    unlike verl's ``forward_kl_topk`` nothing is clamped. Like the reverse top-k loss it is not 0-gradient
    at p_T = p_θ unless k ≥ V: its gradient there pulls student mass into the teacher's top-k.
    """
    if support == "full":
        return _full_vocab_kl(batch, chunk_size, reduction, reverse=False, loss="forward_kl")
    if support != "teacher_topk":
        raise ValueError(f"forward_kl: support must be 'full' or 'teacher_topk', got {support!r}")
    vocab = batch.student_logits.shape[-1]
    ids = _support_ids(batch.topk_ids, batch.teacher_logits, k, vocab, "forward_kl")
    rows = _response_rows(batch.response_mask)
    on_support = _log_probs_on_support(
        batch, rows, ids, batch.teacher_topk_logprobs, chunk_size, "forward_kl"
    )
    per_token = (on_support.teacher.exp() * (on_support.teacher - on_support.student)).sum(-1)
    return _reduce(per_token, rows, batch, reduction), _topk_metrics(
        rows, on_support, per_token, batch, reduction
    )


@register_cd_loss("k1")
def k1(
    batch: DistillationBatch, *, chunk_size: int = DEFAULT_CHUNK_TOKENS, reduction: str = "mean"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sampled-token reverse KL, k1 = log p_θ(y) − log p_T(y), trained by its score-function gradient.

    The value is k1, an unbiased estimate of the token's KL(p_θ‖p_T) for y ~ p_θ. Its plain derivative,
    ∇log p_θ(y), has expectation 0 and ignores the teacher, so the loss is the surrogate
    sg(k1) + sg(k1)·(log p_θ(y) − sg(log p_θ(y))): same value, gradient k1·∇log p_θ(y), whose
    expectation over y ~ p_θ is exactly ∇KL(p_θ‖p_T) at that position (REINFORCE with per-token reward
    −k1; no ratio or clipping since each batch gets one update). Valid only for y sampled from the
    current student, which the strictly on-policy loop guarantees. Needs ``sampled_ids``.
    """
    rows, on_token = _sampled_token_log_probs(batch, chunk_size, "k1")
    student = on_token.student[:, 0]
    estimate = (student - on_token.teacher[:, 0]).detach()
    per_token = estimate + estimate * (student - student.detach())
    metrics = _metrics(
        rows,
        batch,
        reduction,
        kl=estimate,
        student_entropy=on_token.student_entropy,
        teacher_entropy=on_token.teacher_entropy,
    )
    return _reduce(per_token, rows, batch, reduction), metrics


@register_cd_loss("k3")
def k3(
    batch: DistillationBatch, *, chunk_size: int = DEFAULT_CHUNK_TOKENS, reduction: str = "mean"
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sampled-token k3 = (r − 1) − log r with r = p_T(y)/p_θ(y), backpropagated as it stands.

    The value is a non-negative, unbiased, lower-variance estimate of the token's KL(p_θ‖p_T) for
    y ~ p_θ. Its straight gradient (1 − r)·∇log p_θ(y) has expectation Σ_y (p_θ − p_T)∇log p_θ =
    ∇KL(p_T‖p_θ): the FORWARD KL's gradient, which is what k3 used as a loss (verl, GRPO) optimises.
    The exact gradient of E[k3] would add the score term k3·∇log p_θ(y) and collapse to k1·∇log p_θ(y),
    the ``k1`` loss's gradient; so ``k3`` is kept as the low-variance forward-KL-gradient variant rather
    than a second reverse-KL one. Unclamped: r grows as exp(log p_T − log p_θ). Needs ``sampled_ids``.
    """
    rows, on_token = _sampled_token_log_probs(batch, chunk_size, "k3")
    log_ratio = on_token.teacher[:, 0] - on_token.student[:, 0]
    per_token = torch.expm1(log_ratio) - log_ratio
    metrics = _metrics(
        rows,
        batch,
        reduction,
        kl=per_token,
        student_entropy=on_token.student_entropy,
        teacher_entropy=on_token.teacher_entropy,
    )
    return _reduce(per_token, rows, batch, reduction), metrics
