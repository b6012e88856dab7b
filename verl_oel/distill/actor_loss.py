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

import torch
from tensordict import TensorDict
from verl.trainer.ppo.core_algos import agg_loss
from verl.workers.utils.padding import response_from_nested

from .config import ConsolidationConfig
from .losses import DistillationBatch, get_cd_loss

TOPK_IDS = "oel_topk_ids"
TEACHER_TOPK_LOGPROBS = "oel_teacher_topk_logprobs"
TEACHER_SAMPLED_LOGPROBS = "oel_teacher_sampled_logprobs"
TEACHER_ENTROPY = "oel_teacher_entropy"
"""Per-token batch fields (sequence layout, see ``teacher.py``) written by the student and teacher passes."""


def packed_loss_mask(data: TensorDict) -> torch.Tensor:
    """[total_tokens] bool over the packed sequences: True where a position predicts a model token.

    Response token i of a sample sits at P + i - 1 (sequence layout); tokens with response_mask 0
    (environment tokens of multi-turn data, padding) are left out.
    """
    prompt_lengths = data["prompts"].offsets().diff().tolist()
    response_masks = data["response_mask"].unbind()
    parts = []
    for prompt_length, response_mask in zip(prompt_lengths, response_masks, strict=True):
        part = torch.zeros(
            prompt_length + response_mask.numel(), dtype=torch.bool, device=response_mask.device
        )
        part[prompt_length - 1 : prompt_length - 1 + response_mask.numel()] = response_mask.bool()
        parts.append(part)
    return torch.cat(parts)


def _packed(data: TensorDict, key: str) -> torch.Tensor | None:
    return data[key].values().unsqueeze(0) if key in data.keys() else None


class ConsolidationActorLoss:
    """Loss function object for ``TrainingWorker.set_loss_fn``: per-token loss, then global aggregation."""

    def __init__(self, config: ConsolidationConfig, temperature: float) -> None:
        if not temperature > 0:
            raise ValueError(f"actor_rollout_ref.rollout.temperature={temperature} must be > 0")
        self.config = config
        self.temperature = float(temperature)
        self.loss_fn = get_cd_loss(config.loss)

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

        ``student_logits`` are raw (the engine ran at temperature 1.0); the loss scales them in fp32.
        """
        mask = packed_loss_mask(data).unsqueeze(0)
        sampled_ids = torch.roll(data["input_ids"].values(), shifts=-1).unsqueeze(0)
        batch = DistillationBatch(
            student_logits=student_logits,
            response_mask=mask,
            temperature=self.temperature,
            topk_ids=_packed(data, TOPK_IDS),
            teacher_topk_logprobs=_packed(data, TEACHER_TOPK_LOGPROBS),
            sampled_ids=sampled_ids,
            teacher_sampled_logprobs=_packed(data, TEACHER_SAMPLED_LOGPROBS),
        )
        per_token, _ = self.loss_fn(batch, reduction="none", **self.config.loss_options())
        outputs = {"oel_loss": per_token}
        outputs.update(self._per_token_metric_sources(student_logits, batch))
        return outputs

    def _per_token_metric_sources(
        self, student_logits: torch.Tensor, batch: DistillationBatch
    ) -> dict[str, torch.Tensor]:
        """Detached per-token entropy and top-k masses, for logging only."""
        with torch.no_grad():
            log_probs = torch.log_softmax(student_logits.detach().float() / self.temperature, dim=-1)
            sources = {"oel_student_entropy": -(log_probs.exp() * log_probs).sum(-1)}
            if batch.topk_ids is not None:
                sources["oel_student_topk_mass"] = log_probs.gather(-1, batch.topk_ids.long()).exp().sum(-1)
                sources["oel_teacher_topk_mass"] = batch.teacher_topk_logprobs.float().exp().sum(-1)
        return sources

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
        sources = dict(model_output)
        if TEACHER_ENTROPY in data.keys():
            sources["oel_teacher_entropy"] = data[TEACHER_ENTROPY]
        for key in (
            "oel_student_entropy",
            "oel_teacher_entropy",
            "oel_student_topk_mass",
            "oel_teacher_topk_mass",
        ):
            if key in sources:
                values = response_padded(sources[key]).detach()[response_mask]
                metrics[key.replace("oel_", "oel/")] = values.float().mean().item()
        return loss, metrics
