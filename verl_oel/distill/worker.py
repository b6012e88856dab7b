"""verl's actor/rollout/ref worker with the three passes on-policy context distillation needs.

verl's fused worker already holds what OPCD needs: the student (actor), its rollout server, and a frozen
copy of the starting weights (ref). This subclass adds, without touching verl's code:

- the student pass: verl's old-log-prob pass, done by one forward that also keeps the student's top-k
  ids per response position (verl's engine returns per-token scalars only, never [T, k]);
- the teacher pass: the ref model reads the student's prompt WITH the sample's knowledge text and the
  identical response ids, and returns its log-probs at the student's top-k ids (or at the sampled token)
  at the rollout temperature, one row per response token (the response layout);
- ``refresh_teacher``: the actor's weights copied into the ref, so the teacher of the next round is the
  policy that ends this one; ``reset_optimizer``, for a round's fresh start;
- the update: verl's own ``update_actor`` with the consolidation loss (``actor_loss.py``) set as the
  actor's loss function.

The trainer (``trainer.py``) configures it once with the recipe's ``oel:`` section.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from tensordict import TensorDict
from verl.single_controller.base.decorator import Dispatch, make_nd_compute_dataproto_dispatch_fn, register
from verl.utils import tensordict_utils as tu
from verl.utils.config import omega_conf_to_dataclass
from verl.utils.device import get_device_id
from verl.utils.tokenizer.chat_template import apply_chat_template
from verl.workers.engine_workers import ActorRolloutRefWorker, TrainingWorker

from .actor_loss import (
    TEACHER_ENTROPY,
    TEACHER_LOG_TAIL,
    TEACHER_PROMPT_IDS,
    TEACHER_SAMPLED_LOGPROBS,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    TOPK_IDS,
    ConsolidationActorLoss,
)
from .config import ConsolidationConfig
from .phase_memory import PhaseMemoryWorkerMixin
from .teacher import (
    PrefixCache,
    ResponseScores,
    build_teacher_prompt_ids,
    response_logits,
    score_responses,
    to_response_layout,
    to_sequence_layout,
)

DEFAULT_MICRO_BATCH = 8


class TeacherPromptTooLongError(ValueError):
    """The knowledge made a teacher prompt longer than the recipe budgets for."""


class TeacherPromptMismatchError(ValueError):
    """A sample's ``prompt`` column is not the prompt its student read: the teacher, which reads that column
    with the knowledge, would score the response after another prompt."""


def _token_lists(nested: torch.Tensor) -> list[torch.Tensor]:
    return [row.cpu() for row in nested.unbind()]


def _as_messages(raw_prompt: Any) -> list[dict[str, Any]]:
    """verl's ``raw_prompt`` (a list or numpy array of message dicts) as a list of dicts."""
    return [dict(message) for message in raw_prompt]


class ConsolidationWorker(PhaseMemoryWorkerMixin, ActorRolloutRefWorker):
    """``ActorRolloutRefWorker`` plus the student and teacher passes of OPCD and teacher refresh."""

    consolidation: ConsolidationConfig | None = None

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def configure_consolidation(self, oel: dict[str, Any], chat_template_kwargs: dict[str, Any]) -> None:
        """Take the recipe's ``oel:`` section; on the actor, install the consolidation loss."""
        self.consolidation = ConsolidationConfig.from_mapping(oel)
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.tokenizer = omega_conf_to_dataclass(self.config.model).tokenizer
        # The frozen teacher's stream prefixes, kept across steps (refresh_teacher clears them).
        self.teacher_prefixes = PrefixCache(self.consolidation.teacher_prefix_cache_mib * 2**20)
        if self.actor is not None:
            teacher = self._teacher_logits if self.consolidation.teacher_in_update else None
            self.loss_fn = ConsolidationActorLoss(self.consolidation, self._temperature(), teacher)
            self.actor.set_loss_fn(self.loss_fn)

    def _temperature(self) -> float:
        return float(self.config.rollout.temperature)

    @staticmethod
    def _micro_batching(training_worker: TrainingWorker) -> dict[str, int | None]:
        """The pass's micro-batches as verl's own log-prob pass would cut them: by the token budget
        (``log_prob_max_token_len_per_gpu``) with ``log_prob_use_dynamic_bsz``, else by count."""
        config = training_worker.engine_config
        max_tokens = config.infer_max_token_len_per_gpu if config.use_dynamic_bsz else None
        return {
            "micro_batch_size": config.infer_micro_batch_size_per_gpu or DEFAULT_MICRO_BATCH,
            "max_tokens": max_tokens,
        }

    def _forward(
        self,
        passes: Callable[..., list[Any]],
        training_worker: TrainingWorker,
        sequences: list[torch.Tensor],
        responses: list[torch.Tensor],
        **kwargs: Any,
    ) -> list[Any]:
        """``passes`` (``score_responses`` or ``response_logits``) with this worker's FSDP module, on its
        device, in eval mode, making as many forward calls as every other rank (each call all-gathers the
        FSDP shards with them)."""
        engine = training_worker.engine
        device = get_device_id()

        def balance_calls(calls: int) -> int:
            if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
                return calls
            count = torch.tensor([calls], dtype=torch.long, device=device)
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
            return int(count.item())

        with engine.eval_mode():
            return passes(
                engine.module,
                [seq.to(device) for seq in sequences],
                [resp.to(device) for resp in responses],
                **self._micro_batching(training_worker),
                pad_token_id=self.tokenizer.pad_token_id or 0,
                balance_calls=balance_calls,
                **kwargs,
            )

    def _score(
        self,
        training_worker: TrainingWorker,
        sequences: list[torch.Tensor],
        responses: list[torch.Tensor],
        **kwargs: Any,
    ) -> list[ResponseScores]:
        """``score_responses`` on this worker's module (``_forward``), its scores brought to the CPU."""
        scores = self._forward(
            score_responses,
            training_worker,
            sequences,
            responses,
            temperature=self._temperature(),
            chunk_size=self.consolidation.chunk_size,
            **kwargs,
        )
        return [ResponseScores(*(None if t is None else t.cpu() for t in s)) for s in scores]

    def _teacher_logits(self, data: TensorDict) -> list[torch.Tensor]:
        """The frozen teacher (ref) on one update micro-batch: each sample's raw logits at its response
        tokens ([R_b, V], on this device), reading the teacher prompt the teacher pass shipped
        (``TEACHER_PROMPT_IDS``) and the sample's response ids. The micro-batch's rows are one group: their
        common token prefix runs once, which is a whole stream's system message and knowledge only when
        every row reads the same stream (rows of several streams share the system message alone; the
        teacher pass groups by stream, this pass does not read the stream field). The prefixes the frozen
        teacher keeps (``oel.teacher_prefix_cache_mib``) are reused here too."""
        prompts, responses = _token_lists(data[TEACHER_PROMPT_IDS]), _token_lists(data["responses"])
        sequences = [torch.cat([p.long(), r.long()]) for p, r in zip(prompts, responses, strict=True)]
        groups = [0] * len(sequences) if self.consolidation.share_prefix else None
        prefix_cache = self.teacher_prefixes if self.consolidation.teacher_prefix_cache_mib else None
        return self._forward(
            response_logits, self.ref, sequences, responses, groups=groups, prefix_cache=prefix_cache
        )

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="actor"))
    def compute_log_prob(self, data: TensorDict) -> TensorDict:
        """The old-log-prob pass; with consolidation configured, it also keeps the student's top-k ids.

        ``log_probs`` and ``entropy`` follow verl's per-token layout over the full sequence, so verl's
        trainer reads them exactly as from its own pass; the top-k ids (int32) are in the response layout.
        """
        if self.consolidation is None:
            return super().compute_log_prob(data)
        prompts, responses = _token_lists(data["prompts"]), _token_lists(data["responses"])
        sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
        k = self.consolidation.k if self.consolidation.uses_topk else None
        # One group: the rows' common prompt prefix (system message, game rules) runs once.
        groups = [0] * len(sequences) if self.consolidation.share_prefix else None
        scores = self._score(self.actor, sequences, responses, k=k, groups=groups)
        prompt_lengths = [p.numel() for p in prompts]
        fields = {
            "log_probs": to_sequence_layout([s.sampled_logprobs for s in scores], prompt_lengths),
            "entropy": to_sequence_layout([s.entropy for s in scores], prompt_lengths),
        }
        if k is not None:
            fields[TOPK_IDS] = to_response_layout([s.topk_ids for s in scores], torch.int32)
        return tu.get_tensordict(fields)

    def teacher_prompts(self, data: TensorDict) -> list[list[int]]:
        """Each sample's teacher prompt ids: its raw prompt with its knowledge, re-tokenized.

        Fails, naming the key, when the knowledge needs more tokens than ``oel.max_knowledge_length``:
        the recipe's length checks rest on that budget, and a silently truncated teacher would be wrong.
        Fails too when the raw prompt without the knowledge does not render to the student's prompt ids (an
        agent loop that built its prompt from elsewhere, or chat-template settings that differ between
        the rollout and this worker): the teacher would then read knowledge + another prompt.
        """
        field = self.consolidation.knowledge_field
        if field not in data.keys():
            raise KeyError(f"oel.knowledge_field={field!r}: the batch has no such field (a dataset column)")
        knowledges = tu.get(data, field)
        raw_prompts = tu.get(data, "raw_prompt")
        student_prompts = _token_lists(data["prompts"])

        def tokenize_chat(messages: list[dict[str, Any]]) -> list[int]:
            ids = apply_chat_template(
                self.tokenizer,
                messages,
                tokenize=True,
                add_generation_prompt=True,
                **self.chat_template_kwargs,
            )
            return list(ids[0] if ids and isinstance(ids[0], list) else ids)

        teacher_prompts = []
        for index, (knowledge, raw_prompt, student_prompt) in enumerate(
            zip(knowledges, raw_prompts, student_prompts, strict=True)
        ):
            messages = _as_messages(raw_prompt)
            if knowledge and tokenize_chat(messages) != student_prompt.tolist():
                raise TeacherPromptMismatchError(
                    f"sample {index}: its prompt column (raw_prompt), rendered with the chat template and "
                    "data.apply_chat_template_kwargs, is not the prompt the student read "
                    f"({student_prompt.numel()} tokens): the teacher would read the knowledge with another "
                    "prompt. The rows' prompt must be the one their agent loop sends"
                )
            ids = build_teacher_prompt_ids(
                tokenize_chat,
                messages,
                knowledge or "",
                self.consolidation.knowledge_template,
                student_prompt.tolist(),
            )
            extra = len(ids) - student_prompt.numel()
            if extra > self.consolidation.max_knowledge_length:
                raise TeacherPromptTooLongError(
                    f"oel.max_knowledge_length={self.consolidation.max_knowledge_length}: sample {index}'s "
                    f"knowledge adds {extra} tokens to its prompt ({student_prompt.numel()} -> {len(ids)}); "
                    "raise the budget (and the lengths it must fit in) or shorten the knowledge"
                )
            teacher_prompts.append(ids)
        return teacher_prompts

    @register(dispatch_mode=make_nd_compute_dataproto_dispatch_fn(mesh_name="ref"))
    def compute_teacher_log_probs(self, data: TensorDict) -> TensorDict:
        """The teacher pass: the ref model on (knowledge + prompt, identical response ids).

        Returns, in the response layout, the teacher's log-probs at the student's top-k ids (top-k
        losses) or at its own top-k ids, with those ids (a loss over the teacher's top-k: ``forward_kl``),
        its log-mass outside the student's top-k (``topk_reverse_kl_tail``), and at the sampled tokens, and
        its full-vocabulary entropy, all at the rollout temperature. For a loss over the whole vocabulary
        (``full_reverse_kl``) it ships the teacher's prompt ids only: the update runs the teacher.
        Every response position is scored (environment tokens of multi-turn data too); the
        loss keeps the model's own tokens.
        """
        responses = _token_lists(data["responses"])
        teacher_prompts = self.teacher_prompts(data)
        if self.consolidation.teacher_in_update:
            # The update runs the teacher on these prompts (its logits are V numbers per token: not shipped).
            prompt_ids = [torch.tensor(ids, dtype=torch.int32) for ids in teacher_prompts]
            return tu.get_tensordict(
                {TEACHER_PROMPT_IDS: torch.nested.as_nested_tensor(prompt_ids, layout=torch.jagged)}
            )
        # Rows of one knowledge stream share system message + knowledge: that prefix runs once per stream.
        streams = [knowledge or "" for knowledge in tu.get(data, self.consolidation.knowledge_field)]
        if not self.consolidation.share_prefix:
            streams = None
        pairs = zip(teacher_prompts, responses, strict=True)
        sequences = [torch.tensor(p + r.tolist(), dtype=torch.long) for p, r in pairs]
        ids = _token_lists(data[TOPK_IDS]) if self.consolidation.uses_topk else None
        # A loss over the teacher's own top-k: the teacher picks its ids and ships its log-probs there.
        own = (
            {"k": self.consolidation.k, "own_topk_logprobs": True}
            if self.consolidation.uses_teacher_topk
            else {}
        )
        tail = {"log_tail": True} if self.consolidation.uses_teacher_tail else {}
        prefix_cache = self.teacher_prefixes if self.consolidation.teacher_prefix_cache_mib else None
        scores = self._score(
            self.ref, sequences, responses, ids=ids, groups=streams, prefix_cache=prefix_cache, **own, **tail
        )
        fields = {
            TEACHER_SAMPLED_LOGPROBS: to_response_layout([s.sampled_logprobs for s in scores]),
            TEACHER_ENTROPY: to_response_layout([s.entropy for s in scores]),
        }
        if ids is not None or own:
            fields[TEACHER_TOPK_LOGPROBS] = to_response_layout([s.topk_logprobs for s in scores])
        if own:
            fields[TEACHER_TOPK_IDS] = to_response_layout([s.topk_ids for s in scores], torch.int32)
        if tail:
            fields[TEACHER_LOG_TAIL] = to_response_layout([s.log_tail for s in scores])
        return tu.get_tensordict(fields)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def refresh_teacher(self) -> None:
        """Copy the actor's current weights into the ref model: the teacher becomes this policy.

        Called at the start of a round, so the frozen teacher is π_{r-1}. Actor and ref are sharded
        alike (same mesh, same FSDP settings), so each rank copies its own shards.
        """
        if self.actor is None or self.ref is None:
            raise RuntimeError(
                "refresh_teacher needs a worker holding both actor and ref (actor_rollout_ref)"
            )
        actor_state = dict(self.actor.engine.module.named_parameters())
        with torch.no_grad():
            for name, teacher_param in self.ref.engine.module.named_parameters():
                teacher_param.copy_(actor_state[name])
        if self.consolidation is not None:
            # Keys and values the old teacher computed are not the new teacher's.
            self.teacher_prefixes.clear()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def reset_optimizer(self) -> None:
        """Forget the optimizer's moments and step counts: each OEL round trains from its start model
        with a fresh optimizer, as the paper's rounds do (each a separate run from the merged
        checkpoint), which is also what a run resumed from that checkpoint does."""
        if self.actor is None:
            raise RuntimeError("reset_optimizer needs a worker holding the actor")
        self.actor.engine.optimizer.state.clear()

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def teacher_fingerprint(self) -> list[float]:
        """``weights_fingerprint`` of the frozen teacher (the ref model), to record which policy it is."""
        if self.ref is None:
            raise RuntimeError("teacher_fingerprint needs a worker holding the ref model")
        return weights_fingerprint(self.ref.engine.module)

    @register(dispatch_mode=Dispatch.ONE_TO_ALL)
    def actor_fingerprint(self) -> list[float]:
        """``weights_fingerprint`` of the actor: the policy the rollout server plays (verl loads both from
        one folder and syncs the server after every update), to record which weights an evaluation ran."""
        if self.actor is None:
            raise RuntimeError("actor_fingerprint needs a worker holding the actor")
        return weights_fingerprint(self.actor.engine.module)


def weights_fingerprint(module: torch.nn.Module) -> list[float]:
    """(sum, sum of squares) of every parameter in float64: equal for the same weights however they are
    held (an FSDP module, a saved HF folder loaded by transformers), different for any trained change."""
    total, squares = 0.0, 0.0
    with torch.no_grad():
        for parameter in module.parameters():
            full = parameter.full_tensor() if hasattr(parameter, "full_tensor") else parameter
            values = full.detach().double()  # on its device: no host copy of a large model
            total += float(values.sum())
            squares += float((values * values).sum())
    return [total, squares]
