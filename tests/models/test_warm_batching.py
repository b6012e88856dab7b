"""The warm build's step batching: a step's examples are batched by length (``_length_buckets``), which
changes the batches, not the loss (``_step_loss``)."""

import itertools
import random

import pytest
import torch

from verl_oel.models.tokenizer import build_qwen_prefix_tokenizer
from verl_oel.models.warm import WarmModelSpec
from verl_oel.models.warm.train import _collate, _length_buckets, _new_model, _reply_token_losses, _step_loss


def _cost(lengths, ranges, call_cost):
    return sum((end - begin) * lengths[end - 1] + call_cost for begin, end in ranges)


def _all_partitions(n):
    for cuts in itertools.product([False, True], repeat=n - 1):
        bounds = [0] + [i + 1 for i, cut in enumerate(cuts) if cut] + [n]
        yield list(itertools.pairwise(bounds))


@pytest.mark.parametrize("call_cost", [0, 30, 100, 10_000])
def test_length_buckets_cover_the_examples_in_order_at_the_least_cost(call_cost):
    rng = random.Random(call_cost)
    for _ in range(40):
        lengths = sorted(rng.randint(1, 400) for _ in range(rng.randint(1, 8)))
        ranges = _length_buckets(lengths, call_cost)
        assert [begin for begin, _ in ranges] == [0] + [end for _, end in ranges[:-1]]
        assert ranges[-1][1] == len(lengths) and all(begin < end for begin, end in ranges)
        best = min(_cost(lengths, p, call_cost) for p in _all_partitions(len(lengths)))
        assert _cost(lengths, ranges, call_cost) == best
    # The extremes: free calls give one batch per distinct length, dear calls one batch.
    assert _length_buckets([5, 5, 9], 0) == [(0, 2), (2, 3)]
    assert _length_buckets([5, 5, 900], 10_000) == [(0, 3)]


@pytest.fixture(scope="module")
def model_and_pad():
    spec = WarmModelSpec().model
    tokenizer = build_qwen_prefix_tokenizer(spec.vocab_size, spec.max_position_embeddings)
    torch.manual_seed(0)
    return _new_model(spec, tokenizer).eval(), tokenizer.pad_token_id


def test_the_step_loss_is_the_mean_over_every_reply_token_whatever_the_batches(model_and_pad):
    """Groups of short and long examples (a step of phase 3b mixes 20-token copies with 900-token game
    records): the bucketed loss equals the mean of every reply token's loss, each example alone in its
    batch, and so do each group's means."""
    model, pad_id = model_and_pad
    rng = random.Random(1)

    def example(length):
        reply = [rng.randrange(10, 8000) for _ in range(rng.randint(1, 4))]
        return [rng.randrange(10, 8000) for _ in range(length)], reply

    groups = [
        [example(rng.randint(8, 40)) for _ in range(12)],
        [],
        [example(rng.randint(300, 900)) for _ in range(3)],
        [example(rng.choice([10, 600])) for _ in range(5)],
    ]
    with torch.no_grad():
        loss, parts = _step_loss(model, groups, pad_id)
        alone = [[_reply_token_losses(model, _collate([e], pad_id)) for e in group] for group in groups]
    tokens = torch.cat([t for group in alone for t in group])
    assert len(_length_buckets(sorted(len(p) + len(r) for g in groups for p, r in g))) > 1
    torch.testing.assert_close(loss, tokens.mean(), rtol=1e-5, atol=1e-5)
    expected = [torch.cat(group).mean().item() for group in alone if group]
    assert parts == pytest.approx(expected, rel=1e-5, abs=1e-5)
