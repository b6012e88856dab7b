"""The consolidation loss as verl's actor engine calls it: a logits processor, then the loss.

verl's FSDP engine hands a loss function the student's packed logits (``student_logits``,
[1, total_tokens, V]) when the micro-batch says ``distillation_use_topk``, and keeps
each returned per-token tensor as a model output; it then calls the same function again with those
outputs to get the scalar loss. That is the one place in verl's update where the full logits can be read,
so the registered loss of ``losses.py`` runs there (per token, ``reduction="none"``) and the second call
aggregates with verl's ``agg_loss`` over the global batch, so micro-batching and data parallelism give
the same token-mean as one big batch. No policy-gradient, ratio, clipping or entropy term is added.

The update tells verl's engine temperature 1.0 (``distill/trainer.py``), so the logits arrive raw, and the
loss divides them by the rollout temperature in fp32, as the student and teacher passes do: one numeric
path. verl's engine would divide in the model dtype (bf16 turns 0.7 into 0.69921875 and rounds the
quotient again), which alone gives a KL with no knowledge at all (the tiny model in bf16, empty
knowledge, top-256: 4.1e-5 nats/token that way, 2.1e-6 on the one path; ``docs/gpu.md``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss
from verl.workers.utils.padding import response_from_nested

from .config import ConsolidationConfig
from .losses import DistillationBatch, get_cd_loss

TOPK_IDS = "oel_topk_ids"
TEACHER_TOPK_IDS = "oel_teacher_topk_ids"
TEACHER_TOPK_LOGPROBS = "oel_teacher_topk_logprobs"
TEACHER_SAMPLED_LOGPROBS = "oel_teacher_sampled_logprobs"
TEACHER_ENTROPY = "oel_teacher_entropy"
TEACHER_LOG_TAIL = "oel_teacher_log_tail"
TEACHER_PROMPT_IDS = "oel_teacher_prompt_ids"
"""Per-token batch fields written by the student and teacher passes, in the RESPONSE layout of verl's
``responses`` and ``response_mask`` (row i describes response token i): nothing is stored or sent for
prompt or knowledge positions. Top-k ids are int32, log-probs and entropy float32. ``TOPK_IDS`` are the
student's top-k (the teacher's log-probs are at them); ``TEACHER_TOPK_IDS`` the teacher's own, for a loss over
the teacher's top-k (its log-probs are then at those). ``TEACHER_LOG_TAIL`` (float32, one per token) is the
log of the teacher's mass outside the student's top-k, for the tail-aware loss. ``TEACHER_PROMPT_IDS`` (int32,
one row per PROMPT token: the teacher's prompt, knowledge included) is what the teacher pass ships instead of
log-probs when the update runs the teacher itself (``full_reverse_kl``)."""

TeacherLogits = Callable[[TensorDict], list[torch.Tensor]]
"""The frozen teacher run on a micro-batch: each sample's raw teacher logits at its response tokens
([R_b, V]), reading ``TEACHER_PROMPT_IDS`` followed by the sample's response ids."""

LOSS_METRICS = ("student_entropy", "student_topk_mass", "teacher_topk_mass", "teacher_entropy")
"""The loss's own per-token by-products that the update logs (as ``oel/<name>``), where the loss has them."""


def packed_response_positions(data: TensorDict) -> torch.Tensor:
    """[sum R_b] long: where each response token's prediction sits in the packed sequences.

    Sample b's tokens are packed at offsets o_b .. o_b + P_b + R_b - 1 (prompt then response); the logits
    at position o_b + P_b + i - 1 predict response token i (verl's sequence layout).
    """
    offsets = data["input_ids"].offsets()[:-1].tolist()
    prompt_lengths = data["prompts"].offsets().diff().tolist()
    response_lengths = data["response_mask"].offsets().diff().tolist()
    device = data["response_mask"].values().device
    return torch.cat(
        [
            torch.arange(offset + prompt - 1, offset + prompt - 1 + response, device=device)
            for offset, prompt, response in zip(offsets, prompt_lengths, response_lengths, strict=True)
        ]
    )


def packed_loss_mask(data: TensorDict) -> torch.Tensor:
    """[total_tokens] bool over the packed sequences: True where a position predicts a model token.

    Tokens with response_mask 0 (environment tokens of multi-turn data, padding) are left out.
    """
    mask = torch.zeros(
        data["input_ids"].values().numel(), dtype=torch.bool, device=data["response_mask"].device
    )
    mask[packed_response_positions(data)] = data["response_mask"].values().bool()
    return mask


def _packed(data: TensorDict, key: str, positions: torch.Tensor, total: int) -> torch.Tensor | None:
    """A response-layout field placed at its packed positions ([1, total_tokens, ...], 0 elsewhere)."""
    if key not in data.keys():
        return None
    values = data[key].values()
    placed = values.new_zeros((total, *values.shape[1:]))
    placed[positions.to(values.device)] = values
    return placed.unsqueeze(0)


class ConsolidationActorLoss:
    """Loss function object for ``TrainingWorker.set_loss_fn``: per-token loss, then global aggregation."""

    def __init__(
        self, config: ConsolidationConfig, temperature: float, teacher_logits: TeacherLogits | None = None
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"actor_rollout_ref.rollout.temperature={temperature} must be > 0")
        if config.teacher_in_update and teacher_logits is None:
            raise ValueError(f"oel.loss={config.loss!r} runs the teacher in the update: pass teacher_logits")
        self.config = config
        self.temperature = float(temperature)
        self.loss_fn = get_cd_loss(config.loss)
        self.teacher_logits = teacher_logits

    def __call__(
        self,
        model_output: dict | None = None,
        data: TensorDict | None = None,
        dp_group=None,  # noqa: ANN001 - verl passes its process group
        student_logits: torch.Tensor | None = None,
    ):
        if student_logits is not None:
            return self.per_token(student_logits, data)
        return self.aggregate(model_output, data)

    def per_token(self, student_logits: torch.Tensor, data: TensorDict) -> dict[str, torch.Tensor]:
        """Per-token loss and metric sources over the packed tokens ([1, total_tokens] each).

        ``student_logits`` are raw (the engine ran at temperature 1.0); the loss scales them in fp32. The
        logged entropy and top-k masses are the loss's own by-products: no second pass over the logits.
        """
        total = data["input_ids"].values().numel()
        positions = packed_response_positions(data)
        mask = packed_loss_mask(data).unsqueeze(0)
        sampled_ids = torch.roll(data["input_ids"].values(), shifts=-1).unsqueeze(0)
        batch = DistillationBatch(
            student_logits=student_logits,
            response_mask=mask,
            temperature=self.temperature,
            topk_ids=_packed(
                data, TEACHER_TOPK_IDS if self.config.uses_teacher_topk else TOPK_IDS, positions, total
            ),
            teacher_topk_logprobs=_packed(data, TEACHER_TOPK_LOGPROBS, positions, total),
            sampled_ids=sampled_ids,
            teacher_sampled_logprobs=_packed(data, TEACHER_SAMPLED_LOGPROBS, positions, total),
            teacher_log_tail=_packed(data, TEACHER_LOG_TAIL, positions, total),
            teacher_response_logits=self._teacher_response_logits(data),
        )
        per_token, by_products = self.loss_fn(batch, reduction="none", **self.config.loss_options())
        outputs = {"oel_loss": per_token}
        outputs.update({f"oel_{name}": by_products[name] for name in LOSS_METRICS if name in by_products})
        return outputs

    def _teacher_response_logits(self, data: TensorDict) -> torch.Tensor | None:
        """[M, V]: the teacher's logits at the micro-batch's model tokens (response_mask 1), in the packed
        order of the loss mask, from the teacher run here (``full_reverse_kl``); None for the other losses."""
        if not self.config.teacher_in_update:
            return None
        per_sample = self.teacher_logits(data)
        masks = data["response_mask"].unbind()
        return torch.cat(
            [logits[mask.to(logits.device).bool()] for logits, mask in zip(per_sample, masks, strict=True)]
        )

    def aggregate(self, model_output: dict, data: TensorDict) -> tuple[torch.Tensor, dict[str, float]]:
        """Token-mean over the global batch (verl's ``agg_loss``), plus detached per-micro-batch metrics."""
        response_mask = data["response_mask"].to_padded_tensor(0).bool()

        def response_padded(nested: torch.Tensor) -> torch.Tensor:
            return response_from_nested(nested, data["response_mask"]).to_padded_tensor(0.0)

        per_token = response_padded(model_output["oel_loss"])
        loss = agg_loss(
            loss_mat=per_token,
            loss_mask=response_mask,
            loss_agg_mode="token-mean",
            dp_size=data["dp_size"],
            batch_num_tokens=data["batch_num_tokens"],
            global_batch_size=data["global_batch_size"],
        )
        metrics = {"oel/kl": per_token.detach()[response_mask].mean().item()}
        per_token_metrics = {
            f"oel/{name}": response_padded(model_output[f"oel_{name}"])
            for name in LOSS_METRICS
            if f"oel_{name}" in model_output
        }
        if TEACHER_ENTROPY in data.keys():
            # The teacher pass's full-vocabulary entropy, already in the response layout (the teacher run in
            # the update gives it as the loss's by-product instead, above).
            per_token_metrics["oel/teacher_entropy"] = data[TEACHER_ENTROPY].to_padded_tensor(0.0)
        for key, values in per_token_metrics.items():
            metrics[key] = values.detach()[response_mask].float().mean().item()
        return loss, metrics
