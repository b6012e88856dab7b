"""Teacher input and per-position log-probs for on-policy context distillation, free of Ray and verl.

The student sampled response y to prompt x. The teacher reads (knowledge, x) followed by the SAME
response token ids y, so its prediction for response token i lines up with the student's for that token.
Everything here is a plain function of token ids, a causal LM and tensors, so tests can check it against
a direct transformers forward; ``worker.py`` only feeds it verl's batches and models.

Layout convention shared with verl (``response_from_nested``): a per-token field over a sample's full
sequence (prompt + response, P + R tokens) holds at position t what the logits at t say about token t+1.
Response token i is therefore described at position P + i - 1; the last position describes nothing and
holds 0, as do prompt positions. verl reads the student pass's log-probs and entropy in that layout. The
fields only this plugin reads (top-k ids, teacher log-probs) use the response layout instead (row i
describes response token i, like verl's ``responses``): nothing stored or sent for prompt positions.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import Any, NamedTuple

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from verl_oel.knowledge.injection import with_knowledge

from .losses import teacher_log_tail_at, teacher_logprobs_at, topk_support
from .suffix_attention import with_suffix_attention

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
    topk_ids: torch.Tensor | None  # [R, k], this model's own top-k (the student pass; the teacher's, for
    # a loss over the teacher's top-k)
    topk_logprobs: torch.Tensor | None  # [R, k], log p at the given ids (the teacher pass), or at its own
    # top-k ids (``own_topk_logprobs``)
    log_tail: torch.Tensor | None = None  # [R], log of the mass outside the given ids (``log_tail``)


def _chunked_scores(
    logits: torch.Tensor,
    sampled: torch.Tensor,
    temperature: float,
    k: int | None,
    ids: torch.Tensor | None,
    chunk_size: int,
    own_topk_logprobs: bool = False,
    log_tail: bool = False,
) -> ResponseScores:
    """Scores of one sample's response rows ([R, V] raw logits), never more than [chunk, V] extra."""
    entropies, sampled_logprobs = [], []
    for start in range(0, logits.shape[0], chunk_size):
        log_probs = torch.log_softmax(logits[start : start + chunk_size].float() / temperature, dim=-1)
        entropies.append(-(log_probs.exp() * log_probs).sum(-1))
        sampled_logprobs.append(log_probs.gather(-1, sampled[start : start + chunk_size, None]).squeeze(-1))
    topk_ids = topk_support(logits, k) if k is not None else None
    at = ids if ids is not None else (topk_ids if own_topk_logprobs else None)
    topk_logprobs = (
        teacher_logprobs_at(logits, at, temperature, chunk_size=chunk_size) if at is not None else None
    )
    tail = teacher_log_tail_at(logits, ids, temperature, chunk_size=chunk_size) if log_tail else None
    return ResponseScores(torch.cat(sampled_logprobs), torch.cat(entropies), topk_ids, topk_logprobs, tail)


class _Plan(NamedTuple):
    """One group of rows that share a token prefix, and the micro-batches of its suffixes."""

    rows: list[int]  # indices into the caller's sequences, shortest first
    prefix_length: int  # tokens every row shares from the start, run once (0: nothing shared)
    spans: list[tuple[int, int]]  # micro-batches over ``rows``


def common_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix all ``sequences`` share (0 for none or for an empty list)."""
    if not sequences:
        return 0
    first, length = sequences[0], min(len(seq) for seq in sequences)
    for seq in sequences[1:]:
        same = 0
        while same < length and seq[same] == first[same]:
            same += 1
        length = same
    return length


def _plan(
    sequences: Sequence[list[int]],
    response_lengths: Sequence[int],
    groups: Sequence[Hashable] | None,
    micro_batch_size: int,
    max_tokens: int | None,
) -> list[_Plan]:
    """Rows grouped by ``groups`` key (in order of first appearance), each group's shared prefix, and its
    micro-batches over the suffixes, shortest rows first; without keys, one group that shares nothing.
    The prefix stops one token short of the group's shortest prompt, so every row's suffix holds the
    position that predicts its first response token."""
    if not sequences:
        return []
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(groups if groups is not None else [None] * len(sequences)):
        members.setdefault(key, []).append(index)
    plans = []
    for rows in members.values():
        # Shortest first: rows of like length share a micro-batch, so little of it is padding.
        rows = sorted(rows, key=lambda i: len(sequences[i]))
        prefix = 0
        if groups is not None and len(rows) > 1:
            shortest_prompt = min(len(sequences[i]) - response_lengths[i] for i in rows)
            prefix = min(common_prefix_length([sequences[i] for i in rows]), shortest_prompt - 1)
        suffix_lengths = [len(sequences[i]) - prefix for i in rows]
        plans.append(_Plan(rows, prefix, micro_batches(suffix_lengths, micro_batch_size, max_tokens)))
    return plans


PrefixLayers = list[tuple[torch.Tensor, torch.Tensor]]
"""A prefix's keys and values per layer, [1, heads, L, dim] each."""


def _shared_prefix_cache(model: Callable[..., Any], prefix: torch.Tensor) -> PrefixLayers | None:
    """The prefix's keys and values per layer ([1, heads, L, dim] each), from one forward that builds the
    logits of its last position only; None when the model's cache is not a plain full-attention one (a
    sliding window would drop keys a suffix must see), and the caller then runs the rows whole."""
    output = model(
        input_ids=prefix[None],
        position_ids=torch.arange(prefix.numel(), device=prefix.device)[None],
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(output, "past_key_values", None)
    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


class PrefixCache:
    """Shared prefixes' keys and values kept from one ``score_responses`` call to the next, within a byte
    budget; when it is full, what it holds stays and a new prefix is not kept. (Streams come round in
    the same order every step, so least-recently-used eviction would drop each prefix just before its
    next use and never hit; kept entries hit every step.)

    Valid only while the model's weights stay the same: the worker keeps one for the frozen teacher and
    clears it when the teacher changes. A call reuses the entry sharing the most leading tokens with a
    group's prefix (keys and values at the first m positions depend on those m tokens only, the model
    being causal), cut to those tokens, when that covers at least half the prefix; otherwise it computes
    the prefix and keeps it. An entry cut that way stays cut: a stream's entry settles on what its rows
    always share (system message and knowledge), not on what one step's rows happened to share.
    """

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._entries: dict[tuple[int, ...], PrefixLayers] = {}
        self.hits = self.misses = 0

    @staticmethod
    def _bytes(layers: PrefixLayers) -> int:
        return sum(t.numel() * t.element_size() for layer in layers for t in layer)

    @property
    def bytes(self) -> int:
        return sum(self._bytes(layers) for layers in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def lookup(self, tokens: Sequence[int]) -> tuple[int, PrefixLayers] | None:
        """(m, layers) of the entry sharing the most leading tokens with ``tokens`` (m of them, at least
        half), or None."""
        best, best_length = None, 0
        for key in self._entries:
            length = common_prefix_length([key, tokens])
            if length > best_length:
                best, best_length = key, length
        if best is None or 2 * best_length < len(tokens):
            self.misses += 1
            return None
        layers = self._entries[best]
        if best_length < len(best):
            del self._entries[best]
            layers = [(k[:, :, :best_length].clone(), v[:, :, :best_length].clone()) for k, v in layers]
            self._entries[tuple(tokens[:best_length])] = layers
        self.hits += 1
        return best_length, layers

    def insert(self, tokens: Sequence[int], layers: PrefixLayers) -> None:
        """Keep ``layers`` for ``tokens`` if they fit in what the budget has left."""
        if self.bytes + self._bytes(layers) <= self.budget_bytes:
            self._entries[tuple(tokens)] = layers


def _suffix_inputs(
    suffixes: Sequence[torch.Tensor],
    prefix: int,
    cache: PrefixLayers | None,
    scored: range,
    pad_token_id: int,
) -> dict[str, Any]:
    """The model's inputs for one micro-batch: the suffixes right-padded to the longest, their positions
    continuing after the ``prefix`` tokens whose keys and values ``cache`` holds (None: no prefix), the
    LM head on the ``scored`` suffix positions only."""
    width, device = max(s.numel() for s in suffixes), suffixes[0].device
    input_ids = torch.full((len(suffixes), width), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((len(suffixes), prefix + width), dtype=torch.long, device=device)
    attention_mask[:, :prefix] = 1
    for row, suffix in enumerate(suffixes):
        input_ids[row, : suffix.numel()] = suffix
        attention_mask[row, prefix : prefix + suffix.numel()] = 1
    inputs: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "position_ids": prefix + torch.arange(width, device=device).expand(len(suffixes), width),
        "logits_to_keep": torch.arange(scored.start, scored.stop, device=device),
        "use_cache": cache is not None,
    }
    if cache is not None:
        rows = len(suffixes)
        inputs["past_key_values"] = DynamicCache(
            ddp_cache_data=[(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in cache]
        )
    return inputs


@torch.no_grad()
@with_suffix_attention
def score_responses(
    model: Callable[..., Any],
    sequences: Sequence[torch.Tensor],
    response_ids: Sequence[torch.Tensor],
    temperature: float,
    *,
    k: int | None = None,
    ids: Sequence[torch.Tensor] | None = None,
    groups: Sequence[Hashable] | None = None,
    micro_batch_size: int = 8,
    max_tokens: int | None = None,
    chunk_size: int = 256,
    pad_token_id: int = 0,
    balance_calls: Callable[[int], int] | None = None,
    prefix_cache: PrefixCache | None = None,
    own_topk_logprobs: bool = False,
    log_tail: bool = False,
) -> list[ResponseScores]:
    """Forward ``model`` on each full sequence (prompt + response) and score its response tokens.

    ``sequences[b]`` ends with ``response_ids[b]``. ``k`` asks for the model's own top-k ids (student),
    ``ids[b]`` ([R_b, k]) for its log-probs at given ids (teacher); ``k`` with ``own_topk_logprobs`` for
    its own top-k ids and its log-probs there (a teacher whose top-k is the loss's support); ``log_tail``
    with ``ids`` also for the log of its mass outside them (``teacher_log_tail_at``, the tail-aware loss).

    Rows with the same ``groups`` key (the teacher's knowledge stream) share their longest common token
    prefix: it runs once, and each micro-batch of the group runs only its rows' suffixes against its keys
    and values (positions continue after it), so the knowledge costs one forward per group, not one per
    row. Without ``groups`` nothing is shared. Suffixes are right-padded per micro-batch: a real position
    never attends to a later one, so padding never changes its logits (an sdpa model on CPU therefore
    attends with ``with_suffix_attention``: no padding mask, key/value heads not copied). The LM head runs on
    the response rows only (transformers' ``logits_to_keep``), never on prompt or knowledge positions.

    A group's rows are taken shortest first (so a micro-batch holds rows of like length and little
    padding); a micro-batch holds ``micro_batch_size`` of them, or, with ``max_tokens`` (verl's
    ``use_dynamic_bsz`` budget), as many consecutive ones as fit in ``max_tokens`` padded suffix tokens (a
    longer one goes alone). ``balance_calls(n)`` gets this rank's number of forward calls and returns the
    number every rank makes (their maximum): under FSDP each forward gathers the weights with the other
    ranks, so a rank with fewer calls makes one-token forwards until the counts agree. ``prefix_cache``
    (only for a model whose weights stay the same between calls: the frozen teacher) keeps the groups'
    prefixes from one call to the next, so a stream's prefix runs once while it stays cached.
    """
    if own_topk_logprobs and (k is None or ids is not None):
        raise ValueError("own_topk_logprobs needs k (the model's own top-k) and no given ids")
    if log_tail and ids is None:
        raise ValueError("log_tail needs the ids whose outside mass it is")
    responses = [resp.reshape(-1).long() for resp in response_ids]
    scores: dict[int, ResponseScores] = {}
    for index, logits in _response_logits(
        model,
        sequences,
        responses,
        groups,
        micro_batch_size,
        max_tokens,
        pad_token_id,
        balance_calls,
        prefix_cache,
    ):
        given = ids[index] if ids is not None else None
        scores[index] = _chunked_scores(
            logits, responses[index], temperature, k, given, chunk_size, own_topk_logprobs, log_tail
        )
    return [scores[index] for index in range(len(responses))]


@torch.no_grad()
@with_suffix_attention
def response_logits(
    model: Callable[..., Any],
    sequences: Sequence[torch.Tensor],
    response_ids: Sequence[torch.Tensor],
    *,
    groups: Sequence[Hashable] | None = None,
    micro_batch_size: int = 8,
    max_tokens: int | None = None,
    pad_token_id: int = 0,
    balance_calls: Callable[[int], int] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[torch.Tensor]:
    """The raw logits ([R_b, V], the model's dtype) at each sequence's response positions: row i predicts
    response token i. The same forwards as ``score_responses`` (shared prefixes, suffix micro-batches, the
    LM head on response rows only, balanced calls), for a caller that needs the whole distribution: the
    exact full-vocabulary loss, whose teacher runs in the student's process (``full_reverse_kl``)."""
    responses = [resp.reshape(-1).long() for resp in response_ids]
    rows: dict[int, torch.Tensor] = {}
    for index, logits in _response_logits(
        model,
        sequences,
        responses,
        groups,
        micro_batch_size,
        max_tokens,
        pad_token_id,
        balance_calls,
        prefix_cache,
    ):
        rows[index] = logits.clone()  # not a view: the micro-batch's [rows, width, V] block is freed
    return [rows[index] for index in range(len(responses))]


def _response_logits(
    model: Callable[..., Any],
    sequences: Sequence[torch.Tensor],
    responses: Sequence[torch.Tensor],
    groups: Sequence[Hashable] | None,
    micro_batch_size: int,
    max_tokens: int | None,
    pad_token_id: int,
    balance_calls: Callable[[int], int] | None,
    prefix_cache: PrefixCache | None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(index, [R, V] raw logits of sequence ``index``'s response rows, a view into its micro-batch's
    logits) for every sequence, micro-batch by micro-batch: the forwards both public functions make."""
    tokens = [seq.reshape(-1).long() for seq in sequences]
    for index, (seq, response) in enumerate(zip(tokens, responses, strict=True)):
        if seq.numel() <= response.numel() or not torch.equal(
            seq[seq.numel() - response.numel() :], response
        ):
            raise ValueError(f"sequence {index} does not end with its response ids after a prompt")
    if groups is not None and len(groups) != len(tokens):
        raise ValueError(f"{len(groups)} group keys for {len(tokens)} sequences")
    lists = [seq.tolist() for seq in tokens]
    plans = _plan(lists, [r.numel() for r in responses], groups, micro_batch_size, max_tokens)
    kept: dict[int, PrefixLayers] = {}
    if prefix_cache is not None:
        for index, plan in enumerate(plans):
            hit = (
                prefix_cache.lookup(lists[plan.rows[0]][: plan.prefix_length]) if plan.prefix_length else None
            )
            if hit is not None:
                length, kept[index] = hit
                suffix_lengths = [len(lists[i]) - length for i in plan.rows]
                plans[index] = _Plan(
                    plan.rows, length, micro_batches(suffix_lengths, micro_batch_size, max_tokens)
                )
    calls = sum(len(plan.spans) + (plan.prefix_length > 0 and i not in kept) for i, plan in enumerate(plans))
    total_calls = balance_calls(calls) if balance_calls is not None else calls

    for plan_index, plan in enumerate(plans):
        prefix, cache = plan.prefix_length, kept.get(plan_index)
        if prefix and cache is None:
            prefix_tokens = tokens[plan.rows[0]][:prefix]
            cache = _shared_prefix_cache(model, prefix_tokens)
            if cache is None:
                # Whole rows in the same spans: the ranks have agreed on the call count already.
                prefix = 0
            elif prefix_cache is not None:
                prefix_cache.insert(lists[plan.rows[0]][:prefix], cache)
        for start, stop in plan.spans:
            rows = plan.rows[start:stop]
            suffixes = [tokens[i][prefix:] for i in rows]
            # Suffix position of each row's first scored row (the one predicting its first response token)
            # and one past its last; the LM head runs on the union of those spans.
            first = [s.numel() - responses[i].numel() - 1 for s, i in zip(suffixes, rows, strict=True)]
            low, high = min(first), max(s.numel() - 1 for s in suffixes)
            inputs = _suffix_inputs(suffixes, prefix, cache, range(low, high), pad_token_id)
            logits = model(**inputs).logits
            for row, index in enumerate(rows):
                offset = first[row] - low
                yield index, logits[row, offset : offset + responses[index].numel()]
            del logits, inputs
        del cache
    if total_calls > calls:
        parameter = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
        device = tokens[0].device if tokens else (parameter.device if parameter is not None else None)
        idle = torch.full((1, 1), pad_token_id, dtype=torch.long, device=device)
        for _ in range(total_calls - calls):
            model(input_ids=idle, use_cache=False, logits_to_keep=1)


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


def to_response_layout(
    per_response: Sequence[torch.Tensor], dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Nested (jagged) [B, R_b, ...] tensor of the rows as they are (optionally cast to ``dtype``)."""
    return torch.nested.as_nested_tensor(
        [rows if dtype is None else rows.to(dtype) for rows in per_response], layout=torch.jagged
    )


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
