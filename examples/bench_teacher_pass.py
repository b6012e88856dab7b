"""Time and peak memory of the teacher pass: the full-logits padded pass it replaced, and the shared one.

Torch and transformers only (no verl, no Ray), so it runs on a bare GPU machine. The model is randomly
initialised from a named architecture's config (no hub, nothing downloaded): its weights change neither
the work nor the memory of a forward. Each row reads knowledge (K tokens, one of ``--streams`` streams)
+ its own prompt (P) + its own response (R), all random token ids; the pass returns, per response token,
the log-prob of the sampled token, the full-vocabulary entropy and the log-probs at 256 given ids (the
student's top-k), as ``verl_oel.distill.teacher.score_responses`` does for the worker.

- ``old``: the pass before the prefix was shared: one right-padded forward of the micro-batch's whole
  sequences, the LM head on every position ([B, K+P+R, V] logits), response rows sliced out.
- ``new``: ``score_responses`` with the rows grouped by stream: each stream's knowledge prefix runs once,
  the suffixes (prompt + response) run against its keys and values, the LM head on response rows only.

Each pass runs in its own child process (fresh allocator, fresh peak): peak memory is CUDA's
``max_memory_allocated`` above the loaded model, or on CPU the child's peak RSS above its RSS with the
model loaded. Times are the best of ``--repeats`` after one warm-up run. ``max_abs_diff`` compares the two
passes' log-probs; random weights give near-uniform distributions, where it checks little (the exactness
test is ``tests/distill/test_teacher_pass.py``, on a trained tokenizer's chat prompts).

    python examples/bench_teacher_pass.py                         # CPU: a small Qwen3, short lengths
    python examples/bench_teacher_pass.py --architecture qwen3-4b --knowledge 8192 --prompt 2048 \\
        --response 1024 --batch 4 --dtype bfloat16                # the paper's lengths, on a GPU

The last line printed is one JSON object with both passes' figures and their ratios.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, Qwen3Config

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_oel.distill.teacher import _chunked_scores, score_responses  # noqa: E402

# Qwen3-4B's published architecture (its config.json), and a small model of the same family for CPU.
ARCHITECTURES = {
    "qwen3-4b": dict(
        hidden_size=2560,
        intermediate_size=9728,
        num_hidden_layers=36,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=128,
        vocab_size=151936,
        tie_word_embeddings=True,
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
    "qwen3-small": dict(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        vocab_size=32768,
        tie_word_embeddings=True,
        max_position_embeddings=16384,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
    ),
}
TOP_K = 256
TEMPERATURE = 0.7


def full_logits_pass(model, sequences, responses, ids, pad_token_id=0, chunk_size=256):
    """The pass as it was: one right-padded forward of all rows, logits on every position."""
    lengths = [seq.numel() for seq in sequences]
    device = sequences[0].device
    input_ids = torch.full((len(sequences), max(lengths)), pad_token_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for row, seq in enumerate(sequences):
        input_ids[row, : seq.numel()] = seq
        attention_mask[row, : seq.numel()] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    ).logits
    scores = []
    for row, (length, response) in enumerate(zip(lengths, responses, strict=True)):
        rows = logits[row, length - response.numel() - 1 : length - 1]
        scores.append(_chunked_scores(rows, response, TEMPERATURE, None, ids[row], chunk_size))
    return scores


def _rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize() / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _inputs(args, vocab, device):
    generator = torch.Generator().manual_seed(args.seed)
    draw = lambda n: torch.randint(1, vocab, (n,), generator=generator)  # noqa: E731
    knowledge = [draw(args.knowledge) for _ in range(args.streams)]
    streams = [row % args.streams for row in range(args.batch)]
    responses = [draw(args.response) for _ in range(args.batch)]
    sequences = [
        torch.cat([knowledge[s], draw(args.prompt), r]) for s, r in zip(streams, responses, strict=True)
    ]
    ids = [torch.randint(0, vocab, (args.response, TOP_K), generator=generator) for _ in range(args.batch)]
    move = lambda tensors: [t.to(device) for t in tensors]  # noqa: E731
    return move(sequences), move(responses), move(ids), streams


def _child(args, which, queue):
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(args.seed)
    config = Qwen3Config(**ARCHITECTURES[args.architecture], use_sliding_window=False)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    sequences, responses, ids, streams = _inputs(args, config.vocab_size, device)

    def run():
        with torch.no_grad():
            if which == "old":
                return full_logits_pass(model, sequences, responses, ids)
            return score_responses(
                model,
                sequences,
                responses,
                TEMPERATURE,
                ids=ids,
                groups=streams,
                micro_batch_size=args.batch,
            )

    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    times = []
    for _ in range(1 + args.repeats):
        start = time.perf_counter()
        scores = run()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20 if cuda else _peak_rss_mib() - base
    queue.put(
        {
            "seconds": round(min(times[1:]), 4),
            "peak_mib": round(peak, 1),
            # As bytes: a tensor would travel as a shared-memory handle that dies with this process.
            "sampled": torch.cat([s.sampled_logprobs for s in scores]).float().cpu().numpy().tobytes(),
            "topk": torch.cat([s.topk_logprobs.reshape(-1) for s in scores]).float().cpu().numpy().tobytes(),
        }
    )


def measure(args, which):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(args, which, queue))
    process.start()
    result = queue.get()
    process.join()
    if process.exitcode:
        raise SystemExit(f"the {which} pass's process failed ({process.exitcode})")
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--architecture", choices=sorted(ARCHITECTURES), default="qwen3-small")
    parser.add_argument("--knowledge", type=int, default=1024, help="knowledge tokens (K)")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens after the knowledge (P)")
    parser.add_argument("--response", type=int, default=128, help="response tokens (R)")
    parser.add_argument("--batch", type=int, default=4, help="rows, one micro-batch")
    parser.add_argument("--streams", type=int, default=1, help="knowledge streams among the rows")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if not 1 <= args.streams <= args.batch:
        parser.error(f"--streams={args.streams}: between 1 and --batch={args.batch}")

    old, new = measure(args, "old"), measure(args, "new")
    values = lambda result, key: torch.frombuffer(bytearray(result[key]), dtype=torch.float32)  # noqa: E731
    diff = max(float((values(old, key) - values(new, key)).abs().max()) for key in ("sampled", "topk"))
    figures = {
        "architecture": args.architecture,
        "weights": f"random init, seed {args.seed}",
        "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        "dtype": args.dtype,
        "K": args.knowledge,
        "P": args.prompt,
        "R": args.response,
        "batch": args.batch,
        "streams": args.streams,
        "old": {"seconds": old["seconds"], "peak_mib": old["peak_mib"]},
        "new": {"seconds": new["seconds"], "peak_mib": new["peak_mib"]},
        "time_ratio": round(new["seconds"] / old["seconds"], 3),
        "peak_ratio": round(new["peak_mib"] / old["peak_mib"], 3) if old["peak_mib"] > 0 else None,
        "max_abs_diff": diff,
    }
    print(
        f"{args.architecture} ({figures['dtype']}, {figures['device']}), "
        f"K/P/R={args.knowledge}/{args.prompt}/"
        f"{args.response}, batch {args.batch}, {args.streams} stream(s): old {old['seconds']:.3f} s, "
        f"{old['peak_mib']:.0f} MiB peak; new {new['seconds']:.3f} s, {new['peak_mib']:.0f} MiB; "
        f"max |diff| {diff:.2e}"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
