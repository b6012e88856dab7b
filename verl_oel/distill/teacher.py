"""Teacher input and per-position log-probs for on-policy context distillation, free of Ray and verl.

The student sampled response y to prompt x. The teacher reads (knowledge, x) followed by the SAME
response token ids y, so its prediction for response token i lines up with the student's for that token.
Everything here is a plain function of token ids, a causal LM and tensors, so tests can check it against
a direct transformers forward; ``worker.py`` only feeds it verl's batches and models.

Layout convention shared with verl (``response_from_nested``): a per-token field over a sample's full
sequence (prompt + response, P + R tokens) holds at position t what the logits at t say about token t+1.
Response token i is therefore described at position P + i - 1; the last position describes nothing and
holds 0, as do prompt positions.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from verl_oel.knowledge.injection import with_knowledge

from .losses import teacher_logprobs_at, topk_support

Messages = list[dict[str, Any]]


def build_teacher_prompt_ids(
    tokenize_chat: Callable[[Messages], list[int]],
    messages: Sequence[dict[str, Any]],
    knowledge: str,
    template: str,
    student_prompt_ids: Sequence[int],
) -> list[int]:
    """Token ids of the teacher's prompt.

    With no knowledge the student's own prompt ids are reused as they are, not re-tokenized: the
    teacher's input is then identical to the student's by construction, which is what makes the KL
    exactly 0 before any update (multi-turn prompts may not survive a re-tokenization round trip).
    """
    if not knowledge:
        return list(student_prompt_ids)
    return list(tokenize_chat(with_knowledge(messages, knowledge, template)))


class ResponseScores(NamedTuple):
    """Per response token of one sample, from one model at the rollout temperature."""

    sampled_logprobs: torch.Tensor  # [R], log p(y_i)
    entropy: torch.Tensor  # [R], full-vocabulary entropy
    topk_ids: torch.Tensor | None  # [R, k], this model's own top-k (the student pass)
    topk_logprobs: torch.Tensor | None  # [R, k], log p at the given ids (the teacher pass)


def _chunked_scores(
    logits: torch.Tensor,
    sampled: torch.Tensor,
    temperature: float,
    k: int | None,
    ids: torch.Tensor | None,
    chunk_size: int,
) -> ResponseScores:
    """Scores of one sample's response rows ([R, V] raw logits), never more than [chunk, V] extra."""
    entropies, sampled_logprobs = [], []
    for start in range(0, logits.shape[0], chunk_size):
        log_probs = torch.log_softmax(logits[start : start + chunk_size].float() / temperature, dim=-1)
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        sampled_logprobs.append(log_probs.gather(-1, sampled[start : start + chunk_size, None]).squeeze(-1))
    topk_ids = topk_support(logits, k) if k is not None else None
    topk_logprobs = (
        teacher_logprobs_at(logits, ids, temperature, chunk_size=chunk_size) if ids is not None else None
    )
    return ResponseScores(torch.cat(sampled_logprobs), torch.cat(entropies), topk_ids, topk_logprobs)


@torch.no_grad()
def score_responses(
    model: Callable[..., Any],
    sequences: Sequence[torch.Tensor],
    response_ids: Sequence[torch.Tensor],
    temperature: float,
    *,
    k: int | None = None,
    ids: Sequence[torch.Tensor] | None = None,
    micro_batch_size: int = 8,
    max_tokens: int | None = None,
    chunk_size: int = 256,
    pad_token_id: int = 0,
) -> list[ResponseScores]:
    """Forward ``model`` on each full sequence (prompt + response) and score its response tokens.

    ``sequences[b]`` ends with ``response_ids[b]``. ``k`` asks for the model's own top-k ids (student),
    ``ids[b]`` ([R_b, k]) for its log-probs at given ids (teacher). Sequences are right-padded per
    micro-batch with an attention mask, so padding never changes a real position's logits. A micro-batch
    holds ``micro_batch_size`` sequences, or, with ``max_tokens`` (verl's ``use_dynamic_bsz`` budget), as
    many consecutive ones as fit in ``max_tokens`` padded tokens (a longer sequence goes alone).
    """
    scores: list[ResponseScores] = []
    for start, stop in micro_batches([int(seq.numel()) for seq in sequences], micro_batch_size, max_tokens):
        batch = [seq.reshape(-1).long() for seq in sequences[start:stop]]
        lengths = [int(seq.numel()) for seq in batch]
        device = batch[0].device
        input_ids = torch.full((len(batch), max(lengths)), pad_token_id, dtype=torch.long, device=device)
        attention_mask = torch.zeros_like(input_ids)
        for row, seq in enumerate(batch):
            input_ids[row, : seq.numel()] = seq
            attention_mask[row, : seq.numel()] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        ).logits
        for row, length in enumerate(lengths):
            index = start + row
            response = response_ids[index].reshape(-1).long()
            if not torch.equal(batch[row][length - response.numel() :], response):
                raise ValueError(f"sequence {index} does not end with its response ids")
            rows = logits[row, length - response.numel() - 1 : length - 1]
            given = ids[index] if ids is not None else None
            scores.append(_chunked_scores(rows, response, temperature, k, given, chunk_size))
    return scores


def micro_batches(lengths: Sequence[int], size: int, max_tokens: int | None = None) -> list[tuple[int, int]]:
    """(start, stop) of each micro-batch over sequences of ``lengths``, in order: ``size`` sequences each,
    or with ``max_tokens`` as many as keep (count x longest) within it, at least one."""
    spans, start = [], 0
    while start < len(lengths):
        stop, longest = start + 1, lengths[start]
        while stop < len(lengths):
            widest = max(longest, lengths[stop])
            if max_tokens is None and stop - start >= size:
                break
            if max_tokens is not None and (stop + 1 - start) * widest > max_tokens:
                break
            stop, longest = stop + 1, widest
        spans.append((start, stop))
        start = stop
    return spans


def to_sequence_layout(per_response: Sequence[torch.Tensor], prompt_lengths: Sequence[int]) -> torch.Tensor:
    """Nested (jagged) [B, P_b + R_b, ...] tensor holding response row i at position P_b + i - 1.

    The layout of verl's per-token model outputs (see the module docstring), so verl's
    ``response_from_nested`` and its packed-logits loss path read these fields like its own.
    """
    placed = []
    for rows, prompt_length in zip(per_response, prompt_lengths, strict=True):
        if prompt_length < 1:
            raise ValueError("a sample needs at least one prompt token to predict its first response token")
        full = rows.new_zeros((prompt_length + rows.shape[0], *rows.shape[1:]))
        full[prompt_length - 1 : prompt_length - 1 + rows.shape[0]] = rows
        placed.append(full)
    return torch.nested.as_nested_tensor(placed, layout=torch.jagged)
