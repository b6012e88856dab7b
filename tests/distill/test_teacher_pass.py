"""The teacher pass without Ray: teacher input, per-position scores, sequence layout and the actor loss.

The reference everywhere is a direct transformers forward of ONE unpadded sequence (knowledge + prompt +
response ids); what the worker computes in padded micro-batches must equal it position by position.
"""

from __future__ import annotations

import pytest
import torch
from tensordict import TensorDict
from transformers import AutoModelForCausalLM, AutoTokenizer
from verl.utils import tensordict_utils as tu
from verl.workers.utils.padding import response_from_nested

from verl_oel.distill.actor_loss import (
    TEACHER_ENTROPY,
    TEACHER_LOG_TAIL,
    TEACHER_PROMPT_IDS,
    TEACHER_SAMPLED_LOGPROBS,
    TEACHER_TOPK_IDS,
    TEACHER_TOPK_LOGPROBS,
    TOPK_IDS,
    ConsolidationActorLoss,
    packed_loss_mask,
)
from verl_oel.distill.config import ConsolidationConfig, ConsolidationConfigError
from verl_oel.distill.suffix_attention import NAME as SUFFIX_ATTENTION
from verl_oel.distill.suffix_attention import _suffix_sdpa, suffix_attention
from verl_oel.distill.teacher import (
    PrefixCache,
    build_teacher_prompt_ids,
    common_prefix_length,
    micro_batches,
    response_logits,
    score_responses,
    to_response_layout,
    to_sequence_layout,
)
from verl_oel.knowledge.injection import with_knowledge

TEMPERATURE = 0.7
TEMPLATE = ConsolidationConfig().knowledge_template
KNOWLEDGE = "- EXPERIENCE ITEM: the goal is always bottom-right."


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def model(tiny_model_dir):
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, torch_dtype=torch.float32).eval()


def chat_ids(tokenizer, messages) -> list[int]:
    return list(
        tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
    )


def samples(tokenizer):
    """(messages, student prompt ids, response ids, response mask): single-turn, and multi-turn whose
    response holds environment tokens (mask 0) between two model turns."""
    single = [{"role": "user", "content": "Say the word apple."}]
    multi = [{"role": "system", "content": "You play a grid game."}, {"role": "user", "content": "Move."}]
    model_turn = tokenizer.encode("[down]<|im_end|>\n")
    env_turn = tokenizer.encode("<|im_start|>user\nYou moved down.<|im_end|>\n<|im_start|>assistant\n")
    second_turn = tokenizer.encode("[right]")
    multi_response = model_turn + env_turn + second_turn
    multi_mask = [1] * len(model_turn) + [0] * len(env_turn) + [1] * len(second_turn)
    short = tokenizer.encode("apple apple")
    return [
        (single, chat_ids(tokenizer, single), short, [1] * len(short)),
        (multi, chat_ids(tokenizer, multi), multi_response, multi_mask),
    ]


def direct_log_probs(model, prompt_ids, response_ids) -> torch.Tensor:
    """log softmax(logits / T) at each response position ([R, V]) from one unpadded forward."""
    ids = torch.tensor([prompt_ids + response_ids])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0]
    rows = logits[len(prompt_ids) - 1 : len(prompt_ids) - 1 + len(response_ids)]
    return torch.log_softmax(rows / TEMPERATURE, dim=-1)


def test_knowledge_goes_into_the_first_user_message_only():
    messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "Q1"},
        {"role": "user", "content": "Q2"},
    ]
    out = with_knowledge(messages, "K", "<{knowledge}>{prompt}")
    assert [m["content"] for m in out] == ["S", "<K>Q1", "Q2"]
    assert messages[1]["content"] == "Q1"  # the student's messages are untouched
    with pytest.raises(ValueError, match="no user message"):
        with_knowledge([{"role": "system", "content": "S"}], "K", TEMPLATE)


def test_empty_knowledge_reuses_the_student_prompt_ids_verbatim():
    def never(_messages):
        raise AssertionError("an empty knowledge must not re-tokenize the prompt")

    assert build_teacher_prompt_ids(never, [{"role": "user", "content": "x"}], "", TEMPLATE, [5, 6, 7]) == [
        5,
        6,
        7,
    ]


def test_teacher_prompt_is_the_chat_template_of_knowledge_plus_prompt(tokenizer):
    messages = [{"role": "user", "content": "Say the word apple."}]
    ids = build_teacher_prompt_ids(lambda m: chat_ids(tokenizer, m), messages, KNOWLEDGE, TEMPLATE, [1])
    text = tokenizer.decode(ids)
    assert text.index(KNOWLEDGE) < text.index("Say the word apple.")
    assert ids == chat_ids(
        tokenizer,
        [{"role": "user", "content": TEMPLATE.format(knowledge=KNOWLEDGE, prompt=messages[0]["content"])}],
    )


def assert_sampled_logprobs_match_a_direct_forward(score, model, prompt, reply) -> None:
    """``score.sampled_logprobs`` equal log p(reply token) from one unpadded forward, to 1e-5."""
    reference = direct_log_probs(model, prompt, reply)
    torch.testing.assert_close(
        score.sampled_logprobs,
        reference.gather(-1, torch.tensor(reply)[:, None]).squeeze(-1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_batched_scores_equal_a_direct_forward_position_by_position(tokenizer, model):
    batch = samples(tokenizer)
    teacher_prompts = [
        build_teacher_prompt_ids(lambda m: chat_ids(tokenizer, m), msgs, KNOWLEDGE, TEMPLATE, prompt)
        for msgs, prompt, _, _ in batch
    ]
    responses = [torch.tensor(resp) for _, _, resp, _ in batch]
    sequences = [torch.tensor(p + r.tolist()) for p, r in zip(teacher_prompts, responses, strict=True)]
    ids = [
        torch.randint(0, len(tokenizer), (r.numel(), 5), generator=torch.Generator().manual_seed(i))
        for i, r in enumerate(responses)
    ]

    scores = score_responses(
        model, sequences, responses, TEMPERATURE, ids=ids, k=7, micro_batch_size=2, log_tail=True
    )

    for score, prompt, response, given in zip(scores, teacher_prompts, responses, ids, strict=True):
        reference = direct_log_probs(model, prompt, response.tolist())
        torch.testing.assert_close(score.topk_logprobs, reference.gather(-1, given), rtol=1e-5, atol=1e-5)
        # The tail-aware loss's teacher number: the log-mass outside the given ids.
        outside = reference.scatter(-1, given, float("-inf")).logsumexp(-1)
        torch.testing.assert_close(score.log_tail, outside, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            score.sampled_logprobs, reference.gather(-1, response[:, None]).squeeze(-1), rtol=1e-5, atol=1e-5
        )
        torch.testing.assert_close(
            score.entropy, -(reference.exp() * reference).sum(-1), rtol=1e-5, atol=1e-5
        )
        assert torch.equal(score.topk_ids, torch.topk(reference, 7, dim=-1).indices)


def test_micro_batches_follow_the_count_or_the_token_budget():
    lengths = [5, 3, 9, 2, 2, 2, 4]
    assert micro_batches(lengths, 3) == [(0, 3), (3, 6), (6, 7)]
    # A budget of 12 padded tokens: (5, 3) pads to 2 x 5; 9 then goes alone; four of length <= 4 would be 16.
    spans = micro_batches(lengths, 3, max_tokens=12)
    assert spans == [(0, 2), (2, 3), (3, 6), (6, 7)]
    for start, stop in spans:
        assert (stop - start) * max(lengths[start:stop]) <= 12 or stop - start == 1
    assert micro_batches([20, 1], 8, max_tokens=12) == [(0, 1), (1, 2)]  # too long for the budget: alone
    assert micro_batches([], 4) == []


def test_a_token_budget_changes_the_micro_batches_not_the_scores(tokenizer, model):
    """With verl's use_dynamic_bsz the passes cut micro-batches by its token budget; each sequence's
    scores stay those of a direct forward (right padding and the attention mask keep them apart)."""
    calls = []

    def counting(**inputs):
        calls.append(tuple(inputs["input_ids"].shape))
        return model(**inputs)

    batch = samples(tokenizer) * 3
    sequences = [torch.tensor(prompt + response) for _, prompt, response, _ in batch]
    responses = [torch.tensor(response) for _, _, response, _ in batch]
    longest = max(seq.numel() for seq in sequences)
    scores = score_responses(counting, sequences, responses, TEMPERATURE, k=5, max_tokens=2 * longest)
    assert len(calls) == 3 and all(rows * width <= 2 * longest for rows, width in calls), calls
    for score, (_, prompt, response, _) in zip(scores, batch, strict=True):
        assert_sampled_logprobs_match_a_direct_forward(score, model, prompt, response)


def test_micro_batches_take_rows_of_like_length_together(tokenizer, model):
    """Rows are cut into micro-batches shortest first, so a short row is not padded to a long one's width;
    the scores come back in the caller's order."""
    calls = []

    def counting(**inputs):
        calls.append(tuple(inputs["input_ids"].shape))
        return model(**inputs)

    short, long = [1, 2, 3], list(range(4, 40))
    reply = [41, 42]
    sequences = [torch.tensor(p + reply) for p in (long, short, long, short)]
    responses = [torch.tensor(reply)] * 4
    scores = score_responses(counting, sequences, responses, TEMPERATURE, micro_batch_size=2)
    assert sorted(calls) == [(2, len(short) + 2), (2, len(long) + 2)]
    for score, sequence in zip(scores, sequences, strict=True):
        prompt = sequence[:-2].tolist()
        reference = direct_log_probs(model, prompt, reply)
        torch.testing.assert_close(
            score.sampled_logprobs, reference.gather(-1, torch.tensor(reply)[:, None]).squeeze(-1)
        )


def stream_batch(tokenizer):
    """Six teacher rows over two knowledge streams: single-turn and multi-turn prompts (a played turn and
    the environment's answer before the one to score), each stream's knowledge first in the first user
    message, so the stream's rows share system message + knowledge and differ after it."""
    knowledge = {
        "a": KNOWLEDGE + " Walls never move. " * 12,
        "b": "- EXPERIENCE ITEM: keys open doors of their own colour. " * 10,
    }
    system = {"role": "system", "content": "You play a grid game."}
    prompts = [
        [system, {"role": "user", "content": "Game 1. Move."}],
        [
            system,
            {"role": "user", "content": "Game 2. Move."},
            {"role": "assistant", "content": "[down]"},
            {"role": "user", "content": "You moved down. Move."},
        ],
        [system, {"role": "user", "content": "Game 3, a longer board description. Move."}],
    ]
    replies = ["[right]", "[up] then [left]", "[down][down]"]
    rows = []
    for stream in ("a", "b"):
        for messages, reply in zip(prompts, replies, strict=True):
            teacher_prompt = chat_ids(tokenizer, with_knowledge(messages, knowledge[stream], TEMPLATE))
            rows.append((stream, teacher_prompt, tokenizer.encode(reply + "<|im_end|>")))
    return rows


class Recorder:
    """The model, recording each call's input width, logits rows and whether it ran against a cache, and
    the attention implementation of every call (``attentions``)."""

    def __init__(self, model):
        self.model, self.config, self.calls, self.attentions = model, model.config, [], []

    def parameters(self):
        return self.model.parameters()

    def __call__(self, **inputs):
        self.attentions.append(self.config._attn_implementation)
        output = self.model(**inputs)
        cached = inputs.get("past_key_values") is not None
        self.calls.append((inputs["input_ids"].shape, output.logits.shape[1], cached))
        return output


def test_rows_of_a_stream_share_its_prefix_and_score_as_a_whole_forward(tokenizer, model):
    """The shared pass runs each stream's common prefix once and only suffixes against it; every score
    equals a direct one-sequence forward to 1e-5 in fp32, multi-turn prompts included."""
    batch = stream_batch(tokenizer)
    sequences = [torch.tensor(prompt + reply) for _, prompt, reply in batch]
    responses = [torch.tensor(reply) for _, _, reply in batch]
    ids = [
        torch.randint(0, len(tokenizer), (r.numel(), 5), generator=torch.Generator().manual_seed(i))
        for i, r in enumerate(responses)
    ]
    recorder = Recorder(model)
    scores = score_responses(
        recorder, sequences, responses, TEMPERATURE, ids=ids, k=7, groups=[s for s, _, _ in batch]
    )

    for score, (_, prompt, reply), given in zip(scores, batch, ids, strict=True):
        reference = direct_log_probs(model, prompt, reply)
        torch.testing.assert_close(score.topk_logprobs, reference.gather(-1, given), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(
            score.sampled_logprobs,
            reference.gather(-1, torch.tensor(reply)[:, None]).squeeze(-1),
            rtol=1e-5,
            atol=1e-5,
        )
        torch.testing.assert_close(
            score.entropy, -(reference.exp() * reference).sum(-1), rtol=1e-5, atol=1e-5
        )
        assert torch.equal(score.topk_ids, torch.topk(reference, 7, dim=-1).indices)
    # The scores above came from the suffix attention (no padding mask, grouped heads as they are).
    assert set(recorder.attentions) == {SUFFIX_ATTENTION} and model.config._attn_implementation == "sdpa"

    # Per stream: one prefix forward (one row, logits of its last position only), then one micro-batch
    # of its three suffixes against the prefix's cache, its LM head on the response rows only.
    prefixes = [common_prefix_length([p for s, p, _ in batch if s == stream]) for stream in ("a", "b")]
    assert all(length > 100 for length in prefixes), prefixes  # the knowledge is in the shared prefix
    assert [(tuple(shape), rows, cached) for shape, rows, cached in recorder.calls[::2]] == [
        ((1, length), 1, False) for length in prefixes
    ]
    for (shape, rows, cached), length, stream in zip(recorder.calls[1::2], prefixes, ("a", "b"), strict=True):
        stream_rows = [(p, r) for s, p, r in batch if s == stream]
        assert cached and shape[0] == 3
        assert shape[1] == max(len(p) + len(r) for p, r in stream_rows) - length
        assert rows < shape[1] and rows <= max(len(r) for _, r in stream_rows) + max(
            len(p) for p, _ in stream_rows
        ) - min(len(p) for p, _ in stream_rows)
    assert len(recorder.calls) == 4


def test_a_kept_prefix_is_not_run_again_and_scores_stay_a_whole_forwards(tokenizer, model):
    """With a prefix cache (the frozen teacher's, kept across steps) the second call over the same streams
    makes no prefix forward: only each stream's suffix micro-batch, against the kept keys and values; its
    scores equal a direct forward to 1e-5, as the first call's do. A call whose rows differ after the
    stream's knowledge (fewer rows) reuses the entry too."""
    batch = stream_batch(tokenizer)
    sequences = [torch.tensor(prompt + reply) for _, prompt, reply in batch]
    responses = [torch.tensor(reply) for _, _, reply in batch]
    groups = [s for s, _, _ in batch]
    cache = PrefixCache(budget_bytes=2**30)
    recorder = Recorder(model)
    first = score_responses(
        recorder, sequences, responses, TEMPERATURE, k=5, groups=groups, prefix_cache=cache
    )
    assert [cached for *_, cached in recorder.calls] == [False, True, False, True]
    assert len(cache) == 2 and (cache.hits, cache.misses) == (0, 2) and cache.bytes > 0

    recorder.calls.clear()
    second = score_responses(
        recorder, sequences, responses, TEMPERATURE, k=5, groups=groups, prefix_cache=cache
    )
    assert [cached for *_, cached in recorder.calls] == [True, True]
    assert (cache.hits, cache.misses) == (2, 2)
    for got, want, (_, prompt, reply) in zip(second, first, batch, strict=True):
        assert torch.equal(got.topk_ids, want.topk_ids)
        assert_sampled_logprobs_match_a_direct_forward(got, model, prompt, reply)

    recorder.calls.clear()
    two = [0, 2]  # two rows of stream "a", sharing more than all three do
    score_responses(
        recorder,
        [sequences[i] for i in two],
        [responses[i] for i in two],
        TEMPERATURE,
        groups=["a", "a"],
        prefix_cache=cache,
    )
    assert [cached for *_, cached in recorder.calls] == [True] and cache.hits == 3


@pytest.mark.parametrize("prefix", [0, 9])
def test_the_suffix_attention_equals_masked_attention_at_every_real_position(prefix):
    """``_suffix_sdpa`` on right-padded rows (lengths 6, 4, 1 after a shared prefix), four query heads on
    two key/value heads, equals softmax attention under the full mask (prefix visible, causal within the
    row, padding hidden) at every real position. Random scores of unit scale, so one key too many or too
    few moves the output far beyond the tolerance (the tiny model's near-uniform attention would not)."""
    generator = torch.Generator().manual_seed(0)
    lengths, width, heads, kv_heads, dim = [6, 4, 1], 6, 4, 2, 8
    query = torch.randn(3, heads, width, dim, generator=generator, dtype=torch.float64)
    key, value = (
        torch.randn(3, kv_heads, prefix + width, dim, generator=generator, dtype=torch.float64) for _ in "kv"
    )
    got, _ = _suffix_sdpa(torch.nn.Module(), query, key, value, attention_mask=None, scaling=dim**-0.5)

    keys, values = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (key, value))
    scores = query @ keys.transpose(-1, -2) * dim**-0.5
    for row, length in enumerate(lengths):
        visible = torch.zeros(width, prefix + width, dtype=torch.bool)
        for i in range(length):
            visible[i, : prefix + i + 1] = True
        weights = torch.softmax(scores[row].masked_fill(~visible, float("-inf")), dim=-1)[:, :length]
        want = (weights @ values[row]).transpose(0, 1)  # [length, heads, dim]
        torch.testing.assert_close(got[row, :length], want, rtol=1e-10, atol=1e-10)


def test_the_suffix_attention_runs_only_on_sdpa_on_cpu_and_the_models_setting_comes_back(
    tokenizer, model, tiny_model_dir
):
    """Inside ``score_responses`` an sdpa model on CPU attends with the suffix attention (the exactness
    tests above compare its scores with the model's own sdpa forward, right-padded rows, grouped heads
    and a shared prefix included); the model's setting is back afterwards, also after an error. An eager
    model keeps its own attention."""
    with suffix_attention(model) as engaged:
        assert engaged and model.config._attn_implementation == SUFFIX_ATTENTION
    assert model.config._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError, match="inside"), suffix_attention(model):
        raise RuntimeError("inside")
    assert model.config._attn_implementation == "sdpa"

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager").eval()
    with suffix_attention(eager) as engaged:
        assert not engaged and eager.config._attn_implementation == "eager"
    batch = stream_batch(tokenizer)
    recorder = Recorder(eager)
    scores = score_responses(
        recorder,
        [torch.tensor(prompt + reply) for _, prompt, reply in batch],
        [torch.tensor(reply) for _, _, reply in batch],
        TEMPERATURE,
        groups=[s for s, _, _ in batch],
    )
    assert set(recorder.attentions) == {"eager"}
    for score, (_, prompt, reply) in zip(scores, batch, strict=True):
        assert_sampled_logprobs_match_a_direct_forward(score, model, prompt, reply)


def test_prefix_cache_cuts_an_entry_to_what_rows_share_and_keeps_to_its_budget():
    """Entries cut to what later rows share; when full, the cache keeps what it holds (streams come round
    in a fixed order, which would defeat least-recently-used eviction)."""

    def layers(length, value=0.0):
        return [
            (torch.full((1, 2, length, 4), value), torch.full((1, 2, length, 4), value)) for _ in range(3)
        ]

    per_token = 3 * 2 * (2 * 4 * 4)  # layers x (keys, values) x heads x dim x float32 bytes
    cache = PrefixCache(budget_bytes=25 * per_token)
    cache.insert(list(range(10)), layers(10))
    assert cache.lookup(list(range(10)) + [99])[0] == 10  # rows sharing more: the whole entry
    length, kept = cache.lookup(list(range(6)) + [50, 51, 52])  # sharing 6 of 9 tokens: cut to 6
    assert length == 6 and kept[0][0].shape[2] == 6 and cache.bytes == 6 * per_token
    assert cache.lookup(list(range(3)) + [7] * 9) is None  # under half: computed anew, not cut
    assert cache.lookup(list(range(6)))[0] == 6  # the cut entry stays cut
    cache.insert([20 + i for i in range(12)], layers(12))
    cache.insert([40 + i for i in range(10)], layers(10))  # over budget: not kept, the others stay
    assert len(cache) == 2 and cache.bytes == 18 * per_token
    assert cache.lookup(list(range(6)))[0] == 6 and cache.lookup([40 + i for i in range(10)]) is None
    cache.clear()
    assert len(cache) == 0 and cache.lookup([20, 21]) is None


def test_sharing_leaves_a_prompt_token_to_every_row_and_balances_the_ranks_calls(tokenizer, model):
    """A row whose whole prompt is the group's common prefix still has the position that predicts its
    first response token in its suffix; ``balance_calls`` adds one-token forwards up to the ranks'
    count without changing a score."""
    _, prompt, reply = stream_batch(tokenizer)[0]
    rows = [(prompt, reply), (prompt, tokenizer.encode("[left]<|im_end|>")), (prompt + reply, reply)]
    sequences = [torch.tensor(p + r) for p, r in rows]
    responses = [torch.tensor(r) for _, r in rows]
    recorder = Recorder(model)
    scores = score_responses(
        recorder, sequences, responses, TEMPERATURE, groups=["a"] * 3, balance_calls=lambda n: n + 3
    )
    assert recorder.calls[0][0] == (1, len(prompt) - 1)
    assert len(recorder.calls) == 2 + 3 and all(shape == (1, 1) for shape, _, _ in recorder.calls[2:])
    for score, (p, r) in zip(scores, rows, strict=True):
        assert_sampled_logprobs_match_a_direct_forward(score, model, p, r)


def test_common_prefix_is_counted_in_tokens():
    assert common_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]]) == 2
    assert common_prefix_length([[7, 8], [7, 8]]) == 2
    assert common_prefix_length([[1], [2]]) == 0 and common_prefix_length([]) == 0


def test_sequence_layout_puts_response_row_i_where_verl_reads_it():
    rows = [torch.arange(3.0) + 1, torch.arange(2.0) + 10]
    nested = to_sequence_layout(rows, prompt_lengths=[4, 1])
    response_mask = torch.nested.as_nested_tensor([torch.ones(3), torch.ones(2)], layout=torch.jagged)
    back = response_from_nested(nested, response_mask)
    for got, want in zip(back.unbind(), rows, strict=True):
        assert torch.equal(got, want)
    assert nested.unbind()[0].tolist() == [0, 0, 0, 1, 2, 3, 0]


def verl_micro_batch(
    tokenizer, model, knowledge: str, k: int, teacher_topk: bool = False
) -> tuple[TensorDict, torch.Tensor]:
    """A micro-batch as verl's engine hands it to the loss, with student and teacher passes filled in,
    plus the packed student logits the engine would pass as ``student_logits`` (raw: the update runs the
    engine at temperature 1.0 and the loss divides by T in fp32). ``teacher_topk``: the passes of a loss
    over the teacher's own top-k (the student keeps no ids, the teacher ships its ids and log-probs)."""
    batch = samples(tokenizer)
    prompts = [torch.tensor(p) for _, p, _, _ in batch]
    responses = [torch.tensor(r) for _, _, r, _ in batch]
    masks = [torch.tensor(m) for _, _, _, m in batch]
    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    student = score_responses(model, sequences, responses, TEMPERATURE, k=None if teacher_topk else k)
    teacher_prompts = [
        build_teacher_prompt_ids(lambda m: chat_ids(tokenizer, m), msgs, knowledge, TEMPLATE, prompt)
        for msgs, prompt, _, _ in batch
    ]
    at = (
        {"k": k, "own_topk_logprobs": True}
        if teacher_topk
        else {"ids": [s.topk_ids for s in student], "log_tail": True}
    )
    teacher = score_responses(
        model,
        [torch.tensor(p + r.tolist()) for p, r in zip(teacher_prompts, responses, strict=True)],
        responses,
        TEMPERATURE,
        **at,
    )
    nested = lambda tensors: torch.nested.as_nested_tensor(tensors, layout=torch.jagged)  # noqa: E731
    ids = {TEACHER_TOPK_IDS: teacher} if teacher_topk else {TOPK_IDS: student}
    data = TensorDict(
        {
            "prompts": nested(prompts),
            "responses": nested(responses),
            "response_mask": nested(masks),
            "input_ids": nested(sequences),
            **{
                key: to_response_layout([s.topk_ids for s in scores], torch.int32)
                for key, scores in ids.items()
            },
            TEACHER_TOPK_LOGPROBS: to_response_layout([t.topk_logprobs for t in teacher]),
            TEACHER_SAMPLED_LOGPROBS: to_response_layout([t.sampled_logprobs for t in teacher]),
            TEACHER_ENTROPY: to_response_layout([t.entropy for t in teacher]),
            **({} if teacher_topk else {TEACHER_LOG_TAIL: to_response_layout([t.log_tail for t in teacher])}),
        },
        batch_size=[len(batch)],
    )
    tu.assign_non_tensor(
        data, dp_size=1, batch_num_tokens=int(sum(m.sum() for m in masks)), global_batch_size=len(batch)
    )
    with torch.no_grad():
        packed = torch.cat([model(input_ids=s[None]).logits[0] for s in sequences])
    return data, packed.unsqueeze(0)


def actor_loss_and_grad(loss_fn, data, student_logits):
    student_logits = student_logits.detach().requires_grad_()
    outputs = loss_fn(student_logits=student_logits, data=data)
    cu = data["input_ids"].offsets()
    model_output = {
        key: torch.nested.nested_tensor_from_jagged(v.squeeze(0), cu) for key, v in outputs.items()
    }
    loss, metrics = loss_fn(model_output=model_output, data=data)
    (grad,) = torch.autograd.grad(loss, student_logits)
    return loss, grad, metrics


def direct_loss_and_grads(model, rows, per_token_loss):
    """The token-mean over model tokens of ``per_token_loss(student, teacher)`` ([R] from [R, V] log-probs at
    the rollout temperature) from one-sequence forwards, and its gradient in each sample's rows of the
    packed student logits: (mean, [(first packed row, gradient)]). ``rows``: (student prompt ids, teacher
    prompt ids, response ids, response mask) per sample, packed in that order."""
    values, grads, offset = [], [], 0
    for prompt, teacher_prompt, response, mask in rows:
        teacher = direct_log_probs(model, teacher_prompt, response)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0]
        student_rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(response)].clone().requires_grad_()
        student = torch.log_softmax(student_rows / TEMPERATURE, dim=-1)
        per_token = per_token_loss(student, teacher)[torch.tensor(mask, dtype=torch.bool)]
        values.append(per_token.detach())
        (row_grad,) = torch.autograd.grad(per_token.sum(), student_rows)
        grads.append((offset + len(prompt) - 1, row_grad))
        offset += len(prompt) + len(response)
    count = sum(v.numel() for v in values)
    return torch.cat(values).mean(), [(start, row_grad / count) for start, row_grad in grads]


def assert_packed_grads(grad, expected):
    """The actor loss's gradient in the packed student logits equals ``direct_loss_and_grads``'."""
    for start, row_grad in expected:
        torch.testing.assert_close(grad[0, start : start + row_grad.shape[0]], row_grad, rtol=1e-4, atol=1e-7)


def test_empty_knowledge_gives_zero_kl_and_zero_gradient_with_k_at_least_vocab(tokenizer, model):
    """k >= V makes the top-k reverse KL the exact one, which is 0 with a 0 gradient when teacher ==
    student. (With k < V the loss is 0 but its gradient is not: it pushes mass off the top-k.)"""
    vocab = len(tokenizer)
    data, student_logits = verl_micro_batch(tokenizer, model, knowledge="", k=vocab)
    loss_fn = ConsolidationActorLoss(ConsolidationConfig(k=vocab), TEMPERATURE)
    loss, grad, metrics = actor_loss_and_grad(loss_fn, data, student_logits)
    assert abs(loss.item()) < 1e-6 and abs(metrics["oel/kl"]) < 1e-6
    assert grad.abs().max().item() < 1e-6
    assert metrics["oel/student_topk_mass"] == pytest.approx(1.0, abs=1e-5)


def test_bf16_logits_take_one_temperature_path_and_empty_knowledge_gives_no_kl(tokenizer, tiny_model_dir):
    """bf16 weights, empty knowledge, teacher == student: the passes and the loss all divide the bf16 logits
    by T in fp32, so the KL is only the floor of the passes' different forwards (padded micro-batches
    against one sequence at a time). The path this replaced, the engine dividing in bf16 (0.7 becomes
    0.69921875, the quotient rounded again) and the loss at temperature 1, is far above that floor."""
    bf16 = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.bfloat16).eval()
    k = 256
    data, raw_logits = verl_micro_batch(tokenizer, bf16, knowledge="", k=k)
    assert raw_logits.dtype == torch.bfloat16
    loss, _, _ = actor_loss_and_grad(
        ConsolidationActorLoss(ConsolidationConfig(k=k), TEMPERATURE), data, raw_logits
    )
    engine_scaled = raw_logits / torch.tensor(TEMPERATURE).to(torch.bfloat16)  # verl's bf16 division
    assert engine_scaled.dtype == torch.bfloat16
    old, _, _ = actor_loss_and_grad(
        ConsolidationActorLoss(ConsolidationConfig(k=k), 1.0), data, engine_scaled
    )
    print(f"bf16, empty knowledge: top-{k} reverse KL {loss.item():.3g} (bf16 division: {old.item():.3g})")
    assert abs(loss.item()) < 1e-4
    assert old.item() > 10 * max(abs(loss.item()), 1e-6)


@pytest.mark.parametrize("name", ["topk_reverse_kl", "topk_reverse_kl_tail"])
def test_actor_loss_equals_the_per_sample_topk_reverse_kl_on_model_tokens_only(tokenizer, model, name):
    """Both top-k losses as verl's update calls them (packed raw logits, the teacher worker's log-probs at
    the student's top-k ids), against one-sequence forwards; the tail-aware one adds its tail bucket."""
    k = 16
    data, student_logits = verl_micro_batch(tokenizer, model, knowledge=KNOWLEDGE, k=k)
    loss, _, metrics = actor_loss_and_grad(
        ConsolidationActorLoss(ConsolidationConfig(loss=name, k=k), TEMPERATURE), data, student_logits
    )

    per_token, masks = [], []
    logged = {"student_entropy": [], "teacher_entropy": [], "student_topk_mass": [], "teacher_topk_mass": []}
    for msgs, prompt, response, mask in samples(tokenizer):
        student = direct_log_probs(model, prompt, response)
        teacher_prompt = chat_ids(tokenizer, with_knowledge(msgs, KNOWLEDGE, TEMPLATE))
        teacher = direct_log_probs(model, teacher_prompt, response)
        ids = torch.topk(student, k, dim=-1).indices
        p, q = student.gather(-1, ids), teacher.gather(-1, ids)
        tail = 0.0
        if name == "topk_reverse_kl_tail":
            # Each model's log-mass outside the ids, summed over those tokens (1 - Σ p is round-off here).
            log_tail_p, log_tail_q = (
                x.scatter(-1, ids, float("-inf")).logsumexp(-1) for x in (student, teacher)
            )
            tail = log_tail_p.exp() * (log_tail_p - log_tail_q)
        per_token.append((p.exp() * (p - q)).sum(-1) + tail)
        masks.append(torch.tensor(mask, dtype=torch.bool))
        logged["student_entropy"].append(-(student.exp() * student).sum(-1))
        logged["teacher_entropy"].append(-(teacher.exp() * teacher).sum(-1))
        logged["student_topk_mass"].append(p.exp().sum(-1))
        logged["teacher_topk_mass"].append(q.exp().sum(-1))
    model_tokens = torch.cat(masks)
    expected = torch.cat(per_token)[model_tokens].mean()
    assert loss.item() > 1e-4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["oel/kl"] == pytest.approx(expected.item(), rel=1e-4)
    # The logged metrics (the loss's by-products, the teacher pass's entropy) are over model tokens too.
    for name, values in logged.items():
        assert metrics[f"oel/{name}"] == pytest.approx(
            torch.cat(values)[model_tokens].mean().item(), rel=1e-4
        )
    # Environment tokens (mask 0) are left out of the packed loss positions.
    assert int(packed_loss_mask(data).sum()) == int(sum(sum(m) for *_, m in samples(tokenizer)))


def test_forward_kl_over_the_teachers_top_k_through_the_actor_path_matches_the_direct_formula(
    tokenizer, model
):
    """``oel.loss: forward_kl``: the teacher pass picks ITS top-k ids (with the knowledge) and ships its
    log-probs there; the update's loss is Σ_{v in TopK_T} p_T(v) (log p_T(v) − log p_θ(v)) over model
    tokens, against one-sequence forwards, value and gradient."""
    k = 16
    data, student_logits = verl_micro_batch(tokenizer, model, knowledge=KNOWLEDGE, k=k, teacher_topk=True)
    assert TOPK_IDS not in data.keys()  # the student pass keeps no ids for this loss
    config = ConsolidationConfig(loss="forward_kl", k=k)
    assert config.uses_teacher_topk and not config.uses_topk
    actor_loss, grad, metrics = actor_loss_and_grad(
        ConsolidationActorLoss(config, TEMPERATURE), data, student_logits
    )

    def forward_kl_over_teacher_topk(student, teacher):
        ids = torch.topk(teacher, k, dim=-1).indices  # the teacher's own top-k
        q, p = teacher.gather(-1, ids), student.gather(-1, ids)
        return (q.exp() * (q - p)).sum(-1)

    rows = [
        (prompt, chat_ids(tokenizer, with_knowledge(msgs, KNOWLEDGE, TEMPLATE)), response, mask)
        for msgs, prompt, response, mask in samples(tokenizer)
    ]
    expected, grads = direct_loss_and_grads(model, rows, forward_kl_over_teacher_topk)
    assert expected.item() > 1e-4  # the knowledge changes the teacher (measured 8.7e-4 on the random model)
    assert actor_loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["oel/kl"] == pytest.approx(expected.item(), rel=1e-4)
    assert_packed_grads(grad, grads)


@pytest.mark.parametrize("knowledge", [KNOWLEDGE, ""])
def test_full_reverse_kl_runs_the_teacher_in_the_update_and_matches_the_direct_formula(
    tokenizer, model, knowledge
):
    """``oel.loss: full_reverse_kl``: the teacher pass ships only the teacher's prompt ids; the update runs
    the frozen teacher on them (``response_logits``, as the worker does with its ref model) and the loss
    is the exact reverse KL over the vocabulary at model tokens, against one-sequence forwards, value and
    gradient. Without knowledge (teacher input == student input) it is 0 with a 0 gradient."""
    config = ConsolidationConfig.from_mapping({"loss": "full_reverse_kl"})
    assert config.teacher_in_update and not config.uses_topk and not config.uses_teacher_topk
    batch = samples(tokenizer)
    prompts = [torch.tensor(p) for _, p, _, _ in batch]
    responses = [torch.tensor(r) for _, _, r, _ in batch]
    masks = [torch.tensor(m) for _, _, _, m in batch]
    sequences = [torch.cat([p, r]) for p, r in zip(prompts, responses, strict=True)]
    teacher_prompts = [
        torch.tensor(build_teacher_prompt_ids(lambda m: chat_ids(tokenizer, m), msgs, knowledge, TEMPLATE, p))
        for msgs, p, _, _ in batch
    ]
    nested = lambda tensors: torch.nested.as_nested_tensor(tensors, layout=torch.jagged)  # noqa: E731
    data = TensorDict(
        {
            "prompts": nested(prompts),
            "responses": nested(responses),
            "response_mask": nested(masks),
            "input_ids": nested(sequences),
            TEACHER_PROMPT_IDS: nested([p.to(torch.int32) for p in teacher_prompts]),
        },
        batch_size=[len(batch)],
    )
    tu.assign_non_tensor(
        data, dp_size=1, batch_num_tokens=int(sum(m.sum() for m in masks)), global_batch_size=len(batch)
    )
    calls = []

    def teacher_logits(micro_batch):
        calls.append(micro_batch)
        rows = [
            torch.cat([p.long(), r.long()])
            for p, r in zip(
                micro_batch[TEACHER_PROMPT_IDS].unbind(), micro_batch["responses"].unbind(), strict=True
            )
        ]
        return response_logits(model, rows, list(micro_batch["responses"].unbind()), groups=[0] * len(rows))

    with pytest.raises(ValueError, match="pass teacher_logits"):
        ConsolidationActorLoss(config, TEMPERATURE)
    with torch.no_grad():
        packed = torch.cat([model(input_ids=s[None]).logits[0] for s in sequences])
    actor_loss, grad, metrics = actor_loss_and_grad(
        ConsolidationActorLoss(config, TEMPERATURE, teacher_logits), data, packed.unsqueeze(0)
    )
    assert len(calls) == 1  # the teacher runs once per micro-batch, in the per-token call

    rows = [(p, t.tolist(), r, m) for (_, p, r, m), t in zip(batch, teacher_prompts, strict=True)]
    expected, grads = direct_loss_and_grads(
        model, rows, lambda student, teacher: (student.exp() * (student - teacher)).sum(-1)
    )
    if knowledge:
        assert expected.item() > 1e-4  # the knowledge changes the teacher
        assert actor_loss.item() == pytest.approx(expected.item(), rel=1e-4)
        assert metrics["oel/kl"] == pytest.approx(expected.item(), rel=1e-4)
        assert "oel/teacher_entropy" in metrics  # the loss's by-product: no teacher pass shipped it
        assert_packed_grads(grad, grads)
    else:
        # Teacher == student: float32 round-off of two forwards of other shapes only.
        assert abs(actor_loss.item()) < 1e-6 and grad.abs().max().item() < 1e-6


@pytest.mark.parametrize("loss", ["k1", "k3"])
def test_sampled_token_losses_through_the_actor_path_match_the_direct_formula(tokenizer, model, loss):
    """k1 and k3 as verl's update calls them (packed raw logits, the teacher's log-prob of each sampled
    token from the batch): the loss is the token mean of the estimator over model tokens, and the
    gradient is k1's score-function gradient or k3's straight one, against one-sequence forwards."""
    data, student_logits = verl_micro_batch(tokenizer, model, knowledge=KNOWLEDGE, k=4)
    actor_loss, grad, metrics = actor_loss_and_grad(
        ConsolidationActorLoss(ConsolidationConfig(loss=loss), TEMPERATURE), data, student_logits
    )

    values, grads = [], []
    offset = 0
    for msgs, prompt, response, mask in samples(tokenizer):
        teacher_prompt = chat_ids(tokenizer, with_knowledge(msgs, KNOWLEDGE, TEMPLATE))
        teacher = direct_log_probs(model, teacher_prompt, response)
        ids = torch.tensor([prompt + response])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0]
        rows = logits[len(prompt) - 1 : len(prompt) - 1 + len(response)].clone().requires_grad_()
        student = torch.log_softmax(rows / TEMPERATURE, dim=-1)
        picked = torch.tensor(response)[:, None]
        log_p, log_q = student.gather(-1, picked)[:, 0], teacher.gather(-1, picked)[:, 0]
        keep = torch.tensor(mask, dtype=torch.bool)
        if loss == "k1":
            estimate = (log_p - log_q).detach()
            surrogate = (estimate * log_p)[keep]  # gradient k1 * grad log p(y)
        else:
            estimate = torch.expm1(log_q - log_p) - (log_q - log_p)
            surrogate = estimate[keep]
        values.append(estimate.detach()[keep])
        (row_grad,) = torch.autograd.grad(surrogate.sum(), rows)
        grads.append((offset + len(prompt) - 1, row_grad))
        offset += len(prompt) + len(response)
    count = sum(v.numel() for v in values)
    expected = torch.cat(values).mean()
    assert abs(expected.item()) > 1e-3  # the knowledge changes the teacher
    assert actor_loss.item() == pytest.approx(expected.item(), rel=1e-4)
    assert metrics["oel/kl"] == pytest.approx(expected.item(), rel=1e-4)
    for start, row_grad in grads:
        got = grad[0, start : start + row_grad.shape[0]]
        torch.testing.assert_close(got, row_grad / count, rtol=1e-4, atol=1e-7)


def test_the_tail_aware_loss_is_picked_from_yaml_and_takes_the_paper_losss_data():
    """``oel.loss: topk_reverse_kl_tail`` alone: the student pass keeps its top-k ids, the teacher is scored
    at them (``uses_topk``) and ships its log-mass outside them, and the loss gets ``oel.k``, as for
    ``topk_reverse_kl``."""
    config = ConsolidationConfig.from_mapping({"loss": "topk_reverse_kl_tail", "k": 16})
    assert config.uses_topk and config.loss_options() == {"chunk_size": 256, "k": 16}
    # ... plus one number per token from the teacher: its log-mass outside those ids.
    assert config.uses_teacher_tail and not ConsolidationConfig(loss="topk_reverse_kl").uses_teacher_tail
    assert not ConsolidationConfig.from_mapping({"loss": "k1"}).uses_topk
    # forward_kl: over the teacher's own top-k, the only support a teacher worker can ship.
    config = ConsolidationConfig.from_mapping({"loss": "forward_kl", "k": 8})
    assert config.uses_teacher_topk and not config.uses_topk
    assert config.loss_options() == {"chunk_size": 256, "k": 8, "support": "teacher_topk"}


def test_config_names_the_offending_key():
    with pytest.raises(ConsolidationConfigError, match="oel.loss='reverse_kl'"):
        ConsolidationConfig(loss="reverse_kl")
    with pytest.raises(ConsolidationConfigError, match="oel.k=0"):
        ConsolidationConfig(k=0)
    with pytest.raises(ConsolidationConfigError, match="oel.share_prefix='yes'"):
        ConsolidationConfig(share_prefix="yes")
    with pytest.raises(ConsolidationConfigError, match="oel.teacher_prefix_cache_mib=-1"):
        ConsolidationConfig(teacher_prefix_cache_mib=-1)
    with pytest.raises(ConsolidationConfigError, match="oel.teacher_prefix_cache_mib=1.5"):
        ConsolidationConfig(teacher_prefix_cache_mib=1.5)
    with pytest.raises(ConsolidationConfigError, match="oel.share_prefix=false shares none"):
        ConsolidationConfig(teacher_prefix_cache_mib=64, share_prefix=False)
    with pytest.raises(ConsolidationConfigError, match="oel.bogus"):
        ConsolidationConfig.from_mapping({"bogus": 1})
