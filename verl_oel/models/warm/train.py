"""The warm-up's training loop and the cached build (``build_warm_model``), which trains in a fresh
interpreter with the CPU's own float kernels, whatever the caller's environment asks for
(``KERNEL_VARIABLES``)."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers

from verl_oel.console import StepProgress
from verl_oel.envs.hidden_rule import (
    HELD_OUT_FAMILIES,
)
from verl_oel.models.build_folder import (
    BuildModelError,
    TinyModelSpec,
    build_folder,
    library_versions,
    tiny_config,
)
from verl_oel.models.tokenizer import build_qwen_prefix_tokenizer, qwen_vocab_sha256
from verl_oel.models.warm.corridor_data import (
    corridor_extraction_example,
    corridor_turn_example,
    log_copy_example,
)
from verl_oel.models.warm.data import copy_batches, copy_words, extraction_example, game_example
from verl_oel.models.warm.spec import (
    BUILD_THREADS,
    GAME,
    WARM_VERSION,
    WarmModelSpec,
)

# Environment variables that choose float kernels (ATen's vector width, MKL's code branch, oneDNN's
# instruction set). Torch reads them once, when the library first runs, so the build trains in a child
# interpreter started without them (``_train_in_child_process``): the CPU's own kernels, the same bytes
# whatever the caller's environment says.
#
# The bytes still depend on the CPU: 1,080 training steps amplify last-bit differences into another model.
# Builds once pinned ATen's AVX2 kernels and MKL's COMPATIBLE branch (2026-12-02 to 12-07), which gave two
# AMD EPYC CPUs one model but an Intel Xeon another (sha256 04941547... against 137d2f76... for the default
# build of that time), and cost the build 1.93x (phase 3b, 2.47 s a step against 1.27 s): a cost for a
# reproducibility it did not deliver. ``tests/models/test_warm_model.py`` names the reference CPU's bytes.
KERNEL_VARIABLES = (
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_DEBUG_CPU_TYPE",
    "ONEDNN_MAX_CPU_ISA",
    "DNNL_MAX_CPU_ISA",
)


def mkl_branch() -> int | None:
    """The code branch MKL runs in this process (``mkl_cbwr_get``), or None without MKL.

    torch links MKL statically and exports its service layer's name for it, ``mkl_serv_cbwr_get``.
    MKL reads ``MKL_CBWR`` when it first runs, so one small product runs first."""
    if not torch.backends.mkl.is_available():
        return None
    library = Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"
    try:
        getter = ctypes.CDLL(str(library)).mkl_serv_cbwr_get
    except (OSError, AttributeError):
        return None
    torch.mm(torch.ones(2, 2), torch.ones(2, 2))  # MKL initialises (and reads MKL_CBWR) on first use
    return int(getter(1))  # 1: MKL_CBWR_BRANCH


# A forward and backward call's fixed cost in padded tokens (measured on 2 cores: one call more costs about
# what 100 more padded tokens cost). ``_length_buckets`` trades calls for padding with it.
CALL_COST_TOKENS = 100


def _length_buckets(lengths: Sequence[int], call_cost: int = CALL_COST_TOKENS) -> list[tuple[int, int]]:
    """Splits ``lengths`` (sorted ascending) into consecutive ranges, minimising padded tokens plus
    ``call_cost`` per range: each range is one right-padded batch as wide as its longest example.

    Exact dynamic programme over the split points (a step has at most a few hundred examples). Phase 3a's
    short copies beside long game logs pad 2.1x the attention work of their real tokens in one batch per
    group; bucketing a step's examples by length took its steps from 0.93 to 0.61 s (phase 3b 1.76 to 1.53
    s; phases 1 and 2, whose examples are alike in length, unchanged), 2 cores, AVX512."""
    best = [0] + [math.inf] * len(lengths)
    start = [0] * (len(lengths) + 1)
    for end in range(1, len(lengths) + 1):
        for begin in range(end):
            cost = best[begin] + (end - begin) * lengths[end - 1] + call_cost
            if cost < best[end]:
                best[end], start[end] = cost, begin
    ranges, end = [], len(lengths)
    while end > 0:
        ranges.append((start[end], end))
        end = start[end]
    return ranges[::-1]


def _collate(examples: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids and the positions whose next token is a reply token, with those tokens."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (prompt, reply) in enumerate(examples):
        seq = prompt + reply
        ids[row, : len(seq)] = torch.tensor(seq)
        for offset, token in enumerate(reply):
            rows.append(row)
            cols.append(len(prompt) + offset - 1)
            targets.append(token)
    return {
        "input_ids": ids,
        "rows": torch.tensor(rows),
        "cols": torch.tensor(cols),
        "targets": torch.tensor(targets),
    }


def _reply_token_losses(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Cross-entropy of every reply token, projecting only those positions to the vocabulary."""
    # Right padding under a causal mask: no real token attends to a pad, so no padding mask is needed
    # (a padding mask sends attention down a much slower path on CPU).
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    logits = model.lm_head(hidden[batch["rows"], batch["cols"]])
    return torch.nn.functional.cross_entropy(logits, batch["targets"], reduction="none")


def _step_loss(
    model: Any, groups: list[list[tuple[list[int], list[int]]]], pad_id: int
) -> tuple[torch.Tensor, list[float]]:
    """The mean cross-entropy over every reply token of a step's example groups, and each non-empty
    group's own mean (for the log). The examples are batched by length across groups
    (``_length_buckets``), which changes the batches, not the loss."""
    examples = [(index, example) for index, group in enumerate(groups) for example in group]
    examples.sort(key=lambda item: len(item[1][0]) + len(item[1][1]))
    lengths = [len(prompt) + len(reply) for _, (prompt, reply) in examples]
    sums, counts = [0.0] * len(groups), [0] * len(groups)
    total, count = torch.zeros(()), 0
    for begin, end in _length_buckets(lengths):
        chunk = examples[begin:end]
        losses = _reply_token_losses(model, _collate([example for _, example in chunk], pad_id))
        total, count = total + losses.sum(), count + losses.numel()
        owners = [index for index, (_, reply) in chunk for _ in reply]
        for owner, value in zip(owners, losses.detach().tolist(), strict=True):
            sums[owner] += value
            counts[owner] += 1
    return total / count, [sums[i] / counts[i] for i in range(len(groups)) if counts[i]]


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Fixed threads, seeds and algorithms for the build; the caller's settings come back afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(BUILD_THREADS)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def _new_model(spec: TinyModelSpec, tokenizer: Any) -> transformers.Qwen3ForCausalLM:
    return transformers.Qwen3ForCausalLM(tiny_config(spec, tokenizer))


@dataclasses.dataclass(frozen=True)
class _Phase:
    """One supervised phase: AdamW over ``steps`` steps, each on the example groups ``draw()`` gives."""

    name: str
    steps: int
    lr: float
    warmup_steps: int
    draw: Callable[[], list[list[tuple[list[int], list[int]]]]]


def _run_phase(phase: _Phase, model: Any, spec: WarmModelSpec, pad_id: int, log_every: int) -> None:
    """AdamW with warm-up and cosine decay over the phase's steps."""
    steps, warmup_steps = phase.steps, phase.warmup_steps
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=phase.lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay
    )

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    running, note = [], ""
    # A bar on a terminal, else four lines (25/50/75/100%): the build is short on the demo's console.
    progress = StepProgress(f"warm-up {phase.name}", steps) if log_every else None
    for step in range(steps):
        loss, parts = _step_loss(model, phase.draw(), pad_id)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        scheduler.step()
        running.append(parts)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            means = [sum(values) / len(values) for values in zip(*running, strict=True)]
            note = f"reply loss per token {' / '.join(f'{m:.3f}' for m in means)}"
            running = []
        if progress is not None:
            progress.update(step + 1, note)
    if progress is not None:
        progress.close()


def train_warm_model(spec: WarmModelSpec, seed: int, log_every: int = 50) -> tuple[Any, Any]:
    """Runs the supervised phases in memory; returns (model, tokenizer). Deterministic per seed and CPU."""
    tokenizer = build_qwen_prefix_tokenizer(spec.model.vocab_size, spec.model.max_position_embeddings)
    words = copy_words(tokenizer, spec.extra_copy_words)
    # Renamed games never turn into a held-out family's game: no held-out sign replaces a warm one.
    game_words = [word for word in words if word not in HELD_OUT_FAMILIES]
    rng = random.Random(f"warm/{seed}")
    pad_id = tokenizer.pad_token_id
    phases = [
        # Phase 1: short synthetic copies (knowledge / door / plaque).
        _Phase(
            "copy",
            spec.copy_steps,
            spec.copy_lr,
            spec.warmup_steps,
            lambda: copy_batches(rng, words, tokenizer, spec.copy_batch),
        ),
        # Phase 2: the pipeline's prompts (games / extraction / knowledge / door / plaque).
        _Phase(
            "prompts",
            spec.steps,
            spec.lr,
            spec.warmup_steps,
            lambda: [
                [game_example(rng, spec, tokenizer, game_words) for _ in range(spec.game_batch)],
                [extraction_example(rng, spec, tokenizer, game_words) for _ in range(spec.extraction_batch)],
                *copy_batches(rng, words, tokenizer, spec.copy_batch_late),
            ],
        ),
        *_corridor_phases(spec, rng, tokenizer, words, game_words),
    ]
    with _deterministic_torch(seed):
        model = _new_model(spec.model, tokenizer)
        model.train()
        for phase in phases:
            if phase.steps:
                _run_phase(phase, model, spec, pad_id, log_every)
        model.eval()
    return model, tokenizer


def _corridor_phases(
    spec: WarmModelSpec,
    rng: random.Random,
    tokenizer: Any,
    words: Sequence[str],
    game_words: Sequence[str],
) -> list[_Phase]:
    """Phase 3 (``corridor_data.py``): the multi-turn corridor of the warm families."""
    return [
        # Phase 3a: short copies of the knowledge's sign across a game log.
        _Phase(
            "log copy",
            spec.log_copy_steps,
            spec.log_copy_lr,
            spec.corridor_warmup_steps,
            lambda: [
                [log_copy_example(rng, words, tokenizer) for _ in range(spec.log_copy_batch)],
                *copy_batches(rng, words, tokenizer, spec.copy_batch_late),
            ],
        ),
        # Phase 3b: corridor turns and records, with phase 2's one-turn examples.
        _Phase(
            "corridor",
            spec.corridor_steps,
            spec.corridor_lr,
            spec.corridor_warmup_steps,
            lambda: [
                [corridor_turn_example(rng, spec, tokenizer, game_words) for _ in range(spec.corridor_batch)],
                [game_example(rng, spec, tokenizer, game_words) for _ in range(spec.game_batch)],
                [extraction_example(rng, spec, tokenizer, game_words) for _ in range(spec.extraction_batch)],
                [
                    corridor_extraction_example(rng, spec, tokenizer, game_words)
                    for _ in range(spec.corridor_extraction_batch)
                ],
                *copy_batches(rng, words, tokenizer, spec.copy_batch_late),
                [log_copy_example(rng, words, tokenizer) for _ in range(spec.log_copy_batch_late)],
            ],
        ),
    ]


def build_warm_model(
    out_dir: str | Path,
    seed: int = 0,
    spec: WarmModelSpec | None = None,
    force: bool = False,
) -> Path:
    """Builds (or finds already built) the warmed tiny model in ``out_dir``; returns its path."""
    spec = spec or WarmModelSpec()
    try:
        vocab_sha256 = qwen_vocab_sha256()
    except FileNotFoundError as err:
        raise BuildModelError(str(err)) from err
    settings = {
        "kind": "warm",
        "warm_version": WARM_VERSION,
        "seed": seed,
        "spec": dataclasses.asdict(spec),
        "game": GAME,
        "held_out_families": list(HELD_OUT_FAMILIES),
        "build_threads": BUILD_THREADS,
        "qwen_vocab_sha256": vocab_sha256,
        "versions": library_versions(),
        # The CPU's own kernels: another CPU may build other bytes from the same settings (KERNEL_VARIABLES).
        "numerics": "native",
    }
    return build_folder(
        Path(os.path.abspath(out_dir)),
        settings,
        lambda folder: _train_in_child_process(spec, seed, folder),
        force,
    )


def _train_in_child_process(spec: WarmModelSpec, seed: int, folder: Path) -> None:
    """Trains and saves into ``folder`` in a child interpreter started without ``KERNEL_VARIABLES`` (its
    progress lines go to this process's console)."""
    env = {name: value for name, value in os.environ.items() if name not in KERNEL_VARIABLES}
    command = [
        sys.executable,
        "-m",
        "verl_oel.models.warm",
        "--seed",
        str(seed),
        "--spec",
        json.dumps(dataclasses.asdict(spec)),
        "--out",
        str(folder),
    ]
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise BuildModelError(
            f"the warm model's training process exited with code {code} (its output is above)"
        )
