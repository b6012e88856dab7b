"""The consolidation step against verl's own GRPO step with a ref model: time and peak memory per phase.

Five verl launches, one after the other, each a subprocess (``verl-oel train``, as the tests launch verl)
on the same model, prompts, lengths, batch and sampling seeds:

- ``grpo``: verl's GRPO step unchanged, with a KL loss (``actor.use_kl_loss=true``), so verl computes the
  ref model's log-probs every step: trainer mode ``grpo_with_phase_memory`` (``PPOTrainerSync`` run by
  ``ConsolidationWorker``, never configured for consolidation, so verl's own passes; it logs each phase's
  peak memory);
- ``consolidation K=m``, m = 0, 1, 4 (``--multiples``): the ``oel_consolidation`` step, every row with
  the same knowledge text (one stream), built with the model's tokenizer so that the knowledge block adds
  exactly m x (prompt + response) tokens to the teacher's prompt. The teacher keeps the stream's prefix
  from one step to the next (``oel.teacher_prefix_cache_mib``, ``--teacher-prefix-cache-mib``): the
  first step, a warm-up step, computes it;
- ``consolidation K=4 prefix per step``: the largest knowledge again with that set to 0, so the prefix
  is computed every step (left out with ``--teacher-prefix-cache-mib 0``).

Responses are exactly ``--response`` tokens (``rollout.ignore_eos=true``), prompts exactly ``--prompt``
tokens (chat template included). Per phase, from verl's ``file`` tracking backend: ``timing_s/<phase>``
(gen, old_log_prob, ref / teacher, update_actor, update_weights, step) and the FSDP worker process's peak
memory (``perf/peak_rss_mib/<phase>`` on CPU, ``perf/peak_gpu_allocated_mib/<phase>`` on GPUs; see
``verl_oel/distill/phase_memory.py``), the median over the steps after the first ``--warmup`` ones.

    python examples/bench_consolidation_step.py                      # SmolLM2-135M, 2 CPU cores: ~20 min
    python examples/bench_consolidation_step.py --model DIR --prompt 1024 --response 256

Each launch holds ~16 GiB over its processes with the defaults (run nothing big beside it: Ray's OOM
killer stops vLLM's workers and verl then hangs until ``--timeout``). The last line printed is one JSON
object: ``step_ratio`` (consolidation step / GRPO step), ``teacher_s``, ``teacher_peak_over_ref_peak``
(and over the peaks' rises), each keyed by knowledge multiple, the GRPO and consolidation phase times,
the model, lengths, steps, seeds and each launch's seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from verl_oel.agent_loop.replay_loop import AGENT_NAME as REPLAY_AGENT  # noqa: E402
from verl_oel.agent_loop.replay_loop import SEED_KEY  # noqa: E402
from verl_oel.atomic_io import write_parquet_atomic  # noqa: E402
from verl_oel.distill.config import ConsolidationConfig  # noqa: E402
from verl_oel.knowledge.injection import with_knowledge  # noqa: E402

DEFAULT_MODEL_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "verl_oel" / "models"
PHASES = ("gen", "old_log_prob", "ref", "teacher", "adv", "update_actor", "update_weights", "step")
MEMORY_PHASES = ("old_log_prob", "ref", "teacher", "update_actor")
# Words that are one token each after a space in most BPE vocabularies; only those that really are in
# the model's are used, so a text of n of them is n tokens.
WORDS = (
    "apple river north door stone light green house water table chair window paper music horse"
    " garden winter summer city road bread silver forest market letter mountain ocean island"
    " bridge castle tower field flower cloud story number family friend school teacher doctor"
    " animal money power street morning evening night space time world country village"
).split()


def _model_dir(args) -> Path:
    if args.model:
        return Path(args.model).resolve()
    from verl_oel.models import build_smollm2

    return build_smollm2(DEFAULT_MODEL_CACHE / "smollm2")


class Texts:
    """Prompts and knowledge texts of exact token counts, with the model's tokenizer and chat template."""

    def __init__(self, model_dir: Path, seed: int) -> None:
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.words = [w for w in WORDS if len(self.tokenizer.encode(" " + w, add_special_tokens=False)) == 1]
        if len(self.words) < 8:
            raise SystemExit(f"{model_dir}: too few one-token words in its vocabulary ({self.words})")
        self.rng = random.Random(seed)
        self.template = ConsolidationConfig().knowledge_template

    def _words(self, n: int) -> str:
        return "".join(" " + self.rng.choice(self.words) for _ in range(n))

    def chat_length(self, messages: list[dict]) -> int:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=False)
        return len(ids)

    def _fit(self, length_of, head: str, target: int) -> str:
        """``head`` + n words whose ``length_of`` is exactly ``target`` (the words add one token each)."""
        words = max(target - length_of(head), 0)
        for _ in range(8):
            text = head + self._words(words)
            got = length_of(text)
            if got == target:
                return text
            words += target - got
        raise SystemExit(f"cannot build a text of exactly {target} tokens (last try {got})")

    def prompt(self, tokens: int) -> list[dict]:
        def length(text: str) -> int:
            return self.chat_length([{"role": "user", "content": text}])

        return [{"role": "user", "content": self._fit(length, "Continue this list of words:", tokens)}]

    def knowledge(self, prompt: list[dict], tokens: int) -> str:
        """A knowledge text whose block (template included) adds exactly ``tokens`` to ``prompt``."""
        if tokens == 0:
            return ""
        base = self.chat_length(prompt)

        def added(text: str) -> int:
            return self.chat_length(with_knowledge(prompt, text, self.template)) - base

        return self._fit(added, "- EXPERIENCE ITEM: these words came up:", tokens)


def write_data(args, texts: Texts, out: Path, knowledge_tokens: dict[str, int]) -> dict[str, Path]:
    """One dataset per launch: the same prompts and seeds, the launch's knowledge (every row: one text)."""
    prompts = [texts.prompt(args.prompt) for _ in range(args.prompts)]
    # One knowledge text per multiple, built on the first prompt (every prompt has the same token count
    # and the knowledge block's own tokens do not depend on the prompt's words).
    knowledge = {key: texts.knowledge(prompts[0], tokens) for key, tokens in knowledge_tokens.items()}
    folders = {}
    for key, text in knowledge.items():
        for index, prompt in enumerate(prompts):
            added = texts.chat_length(with_knowledge(prompt, text, texts.template)) if text else None
            if added is not None and added - args.prompt != knowledge_tokens[key]:
                raise SystemExit(f"knowledge {key}: prompt {index} gets {added - args.prompt} tokens")
        rows = [
            {
                "data_source": "verl_oel/bench",
                "prompt": prompts[index],
                "ability": "bench",
                "reward_model": {"style": "rule", "ground_truth": "apple"},
                "extra_info": {"index": step * args.prompts + index, SEED_KEY: args.seed + 1000 + index},
                "agent_name": REPLAY_AGENT,
                "oel_knowledge": text,
            }
            for step in range(args.steps)
            for index in range(args.prompts)
        ]
        folder = out / "data" / key
        write_parquet_atomic(rows, folder / "train.parquet")
        write_parquet_atomic(rows[: args.prompts], folder / "val.parquet")
        folders[key] = folder
    return folders


def common_overrides(args, model_dir: Path, data: Path, max_knowledge: int) -> list[str]:
    batch = args.prompts * args.n
    return [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files={data}/train.parquet",
        f"data.val_files={data}/val.parquet",
        f"data.max_prompt_length={args.prompt}",
        f"data.max_response_length={args.response}",
        f"data.train_batch_size={args.prompts}",
        "data.shuffle=false",
        f"data.seed={args.seed}",
        f"actor_rollout_ref.rollout.n={args.n}",
        "actor_rollout_ref.rollout.temperature=0.7",
        # Every response exactly --response tokens: the same work in every launch and step.
        "actor_rollout_ref.rollout.ignore_eos=true",
        # The same vLLM engine in every launch, long enough for the teacher's longest sequence.
        f"actor_rollout_ref.rollout.max_model_len={args.prompt + args.response + max_knowledge + 64}",
        f"actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu={batch}",
        f"actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu={batch}",
        # One optimizer step per batch, the whole batch one micro-batch (as the consolidation step does).
        f"actor_rollout_ref.actor.ppo_mini_batch_size={args.prompts}",
        f"actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu={batch}",
        "actor_rollout_ref.actor.ppo_epochs=1",
        "actor_rollout_ref.actor.optim.lr=1e-6",
        f"actor_rollout_ref.actor.data_loader_seed={args.seed}",
        "trainer.use_v1=true",
        f"trainer.total_training_steps={args.steps}",
        "trainer.total_epochs=1",
        "trainer.save_freq=-1",
        "reward.num_workers=1",
        "reward.custom_reward_function.path=pkg://verl_oel.reward.smoke",
        "reward.custom_reward_function.name=compute_score",
    ]


def launches(args, model_dir: Path, data: dict[str, Path], knowledge_tokens: dict[str, int]):
    """(name, recipe, overrides) of each launch, GRPO first."""
    max_knowledge = max(knowledge_tokens.values())
    grpo = [
        *common_overrides(args, model_dir, data["0"], max_knowledge),
        "trainer.v1.trainer_mode=grpo_with_phase_memory",
        "algorithm.adv_estimator=grpo",
        "actor_rollout_ref.actor.use_kl_loss=true",
        "actor_rollout_ref.actor.kl_loss_coef=0.001",
        "actor_rollout_ref.actor.kl_loss_type=low_var_kl",
        "actor_rollout_ref.actor.entropy_coeff=0",
    ]
    yield "grpo", "grpo_cpu_smoke", grpo

    def consolidation(key: str, cache_mib: int) -> list[str]:
        return [
            *common_overrides(args, model_dir, data[key], max_knowledge),
            "trainer.v1.trainer_mode=oel_consolidation",
            f"oel.k={args.k}",
            f"oel.max_knowledge_length={max(knowledge_tokens[key], 1)}",
            # "++": add the key, which the recipe leaves at its default.
            f"++oel.teacher_prefix_cache_mib={cache_mib}",
        ]

    for key in knowledge_tokens:
        yield f"consolidation_{key}", "consolidation_cpu", consolidation(key, args.teacher_prefix_cache_mib)
    if args.teacher_prefix_cache_mib:
        # The largest knowledge again with the prefix computed every step: what the kept prefix saves.
        largest = max(knowledge_tokens, key=knowledge_tokens.get)
        yield f"consolidation_{largest}_prefix_per_step", "consolidation_cpu", consolidation(largest, 0)


def read_metrics(path: Path) -> dict[int, dict]:
    """verl's ``file`` tracking backend: one JSON line per step, ``{"step": n, "data": {...}}``."""
    steps: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        steps.setdefault(record["step"], {}).update(record["data"])
    return steps


def run_launch(name: str, recipe: str, overrides: list[str], out: Path, timeout: float) -> dict[int, dict]:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    metrics = folder / "metrics.jsonl"
    metrics.unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "verl_oel.cli",
        "train",
        "--config-name",
        recipe,
        f"trainer.default_local_dir={folder}/ckpt",
        "trainer.logger=[console,file]",
        *overrides,
    ]
    started = time.monotonic()
    with open(folder / "launch.log", "w") as log:
        proc = subprocess.run(
            command,
            env={**os.environ, "VERL_FILE_LOGGER_PATH": str(metrics)},
            stdout=log,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        )
    seconds = time.monotonic() - started
    if proc.returncode != 0 or not metrics.exists():
        tail = (folder / "launch.log").read_text()[-3000:]
        raise SystemExit(f"launch {name} failed ({proc.returncode}); {folder}/launch.log ends:\n{tail}")
    print(f"launch {name}: {seconds:.0f} s (verl's log: {folder}/ckpt/logs/)", flush=True)
    return read_metrics(metrics)


def summarise(steps: dict[int, dict], warmup: int) -> dict[str, Any]:
    """Median over the measured steps of each phase's time and peak memory."""
    measured = [steps[s] for s in sorted(steps)[warmup:]]
    if not measured:
        raise SystemExit(f"no step left after {warmup} warm-up step(s) (steps logged: {sorted(steps)})")

    def median(key: str) -> float | None:
        values = [m[key] for m in measured if key in m]
        return round(statistics.median(values), 3) if values else None

    on_gpu = any(key.startswith("perf/peak_gpu_allocated_mib/") for key in measured[0])
    kind = "gpu_allocated" if on_gpu else "rss"
    return {
        "seconds": {p: v for p in PHASES if (v := median(f"timing_s/{p}")) is not None},
        "peak_mib": {p: v for p in MEMORY_PHASES if (v := median(f"perf/peak_{kind}_mib/{p}")) is not None},
        "peak_rise_mib": {
            p: v for p in MEMORY_PHASES if (v := median(f"perf/peak_{kind}_rise_mib/{p}")) is not None
        },
        "memory_kind": kind,
        "response_length": median("response_length/mean"),
        "prompt_length": median("prompt_length/mean"),
        "steps_measured": len(measured),
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="an HF model folder (default: SmolLM2-135M-Instruct)")
    parser.add_argument("--prompt", type=int, default=256, help="prompt tokens, chat template included (P)")
    parser.add_argument("--response", type=int, default=64, help="response tokens (R)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per batch")
    parser.add_argument("--n", type=int, default=2, help="responses per prompt")
    parser.add_argument("--multiples", default="0,1,4", help="knowledge tokens as multiples of P + R")
    parser.add_argument("--steps", type=int, default=3, help="training steps per launch")
    parser.add_argument("--warmup", type=int, default=1, help="first steps left out of the medians")
    parser.add_argument("--k", type=int, default=256, help="the consolidation loss's top-k")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench_consolidation_step", help="launches' folders")
    parser.add_argument("--timeout", type=float, default=1200, help="seconds per launch")
    parser.add_argument(
        "--teacher-prefix-cache-mib",
        type=int,
        default=256,
        help="oel.teacher_prefix_cache_mib of the consolidation launches: the stream's prefix is computed at "
        "the first step (a warm-up step) and kept; with a budget, one more launch at the largest knowledge "
        "with 0 (the prefix computed every step); 0: no such launch",
    )
    parser.add_argument(
        "--reuse",
        default="",
        help="launches (grpo, consolidation_0, ...) whose metrics an earlier run with the same flags left "
        "in --out, read instead of launched again (after a launch failed)",
    )
    args = parser.parse_args(argv)
    if args.steps <= args.warmup:
        parser.error(f"--steps={args.steps} must exceed --warmup={args.warmup}")
    started = time.monotonic()
    out = Path(args.out).resolve()
    model_dir = _model_dir(args)
    texts = Texts(model_dir, args.seed)
    multiples = [int(m) for m in args.multiples.split(",")]
    knowledge_tokens = {str(m): m * (args.prompt + args.response) for m in multiples}
    data = write_data(args, texts, out, knowledge_tokens)

    results, launch_s = {}, {}
    reuse = set(filter(None, args.reuse.split(",")))
    for name, recipe, overrides in launches(args, model_dir, data, knowledge_tokens):
        if name in reuse:
            steps = read_metrics(out / name / "metrics.jsonl")
            if sorted(steps) != list(range(1, args.steps + 1)):
                raise SystemExit(f"--reuse {name}: {out / name}/metrics.jsonl has steps {sorted(steps)}")
            print(f"launch {name}: reused from {out / name}/metrics.jsonl", flush=True)
            launch_s[name] = "reused"
        else:
            launch_started = time.monotonic()
            steps = run_launch(name, recipe, overrides, out, args.timeout)
            launch_s[name] = round(time.monotonic() - launch_started, 1)
        results[name] = summarise(steps, args.warmup)
    grpo = results["grpo"]

    print(
        f"\n{model_dir.name}, P/R = {args.prompt}/{args.response}, {args.prompts} prompts x n={args.n}, "
        f"{args.steps} steps (first {args.warmup} dropped, median of the rest), "
        f"peak = {grpo['memory_kind']} of the FSDP worker"
    )
    header = ["launch", *PHASES, *(f"peak {p}" for p in MEMORY_PHASES)]
    print(" | ".join(header))
    for name, result in results.items():
        cells = [name]
        cells += [f"{result['seconds'][p]:.2f}" if p in result["seconds"] else "-" for p in PHASES]
        peaks, rises = result["peak_mib"], result["peak_rise_mib"]
        cells += [f"{peaks[p]:.0f} (+{rises[p]:.0f})" if p in peaks else "-" for p in MEMORY_PHASES]
        print(" | ".join(cells))

    def per_key(value_of):
        return {str(m): value_of(results[f"consolidation_{m}"]) for m in multiples}

    grpo_s = grpo["seconds"]
    peak_over = per_key(lambda r: _ratio(r["peak_mib"].get("teacher"), grpo["peak_mib"].get("ref")))
    rise_over = per_key(lambda r: _ratio(r["peak_rise_mib"].get("teacher"), grpo["peak_rise_mib"].get("ref")))
    figures = {
        "model": str(model_dir),
        "P": args.prompt,
        "R": args.response,
        "knowledge_tokens": knowledge_tokens,
        "knowledge_streams": 1,
        "prompts": args.prompts,
        "n": args.n,
        "k": args.k,
        "steps": args.steps,
        "warmup_steps_dropped": args.warmup,
        "statistic": "median",
        "seed": args.seed,
        "sampling_seeds": [args.seed + 1000 + i for i in range(args.prompts)],
        "memory_kind": grpo["memory_kind"],
        "step_ratio": per_key(lambda r: _ratio(r["seconds"].get("step"), grpo_s.get("step"))),
        "teacher_prefix_cache_mib": args.teacher_prefix_cache_mib,
        "teacher_s": per_key(lambda r: r["seconds"].get("teacher")),
        "teacher_s_prefix_per_step": {
            name.split("_")[1]: result["seconds"].get("teacher")
            for name, result in results.items()
            if name.endswith("_prefix_per_step")
        },
        "teacher_over_ref_s": per_key(lambda r: _ratio(r["seconds"].get("teacher"), grpo_s.get("ref"))),
        "teacher_peak_over_ref_peak": {
            **peak_over,
            "max": max((v for v in peak_over.values() if v is not None), default=None),
        },
        "teacher_peak_rise_over_ref_peak_rise": {
            **rise_over,
            "max": max((v for v in rise_over.values() if v is not None), default=None),
        },
        "grpo": grpo,
        "consolidation": {
            name.removeprefix("consolidation_"): result
            for name, result in results.items()
            if name.startswith("consolidation_")
        },
        "launch_s": launch_s,
        "wall_s": round(time.monotonic() - started, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
