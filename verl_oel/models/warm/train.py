"""The warm-up's training loop and the cached build (``build_warm_model``), which trains in a fresh
interpreter whose float kernels are pinned (``PINNED_NUMERICS``) so that every x86-64 CPU with AVX2
builds the same bytes."""

from __future__ import annotations

import ctypes
import dataclasses
import json
import logging
import math
import os
import random
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors.torch
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
    has_phase_3,
    spec_settings,
)

logger = logging.getLogger(__name__)

# The build's float kernels, the same on every x86-64 CPU with AVX2. Unpinned, torch picks them by CPU
# (ATen's AVX512 or AVX2 vector kernels, MKL's code path for the CPU model) and 1,300 training steps
# amplify the last-bit differences into a different model: seed 0 built natively on an AMD EPYC passed
# 8 of the 12 behaviour tests of ``tests/models/test_warm_model.py``, where the CI machine's earlier
# CPU had built one that passed all (2026-12-02). ATen reads ``ATEN_CPU_CAPABILITY`` and MKL its
# conditional-numerical-reproducibility mode ``MKL_CBWR`` once, when the library first runs, so the
# training runs in a child interpreter that has them from its start (``_train_in_pinned_process``).
# AVX2 rather than AVX512: every x86-64 server CPU of the last decade has it, and it costs this build
# no time (measured: 18.7 s against 17.4 s for a 46-step build; ATen's portable kernels took 34 s).
# MKL's ``COMPATIBLE`` branch (SSE2 without the approximate rcpps/rsqrtps) because it is the only
# branch MKL runs on non-Intel CPUs too: it documents its ISA branches (``AVX2``, ...) as Intel-only,
# and on an AMD EPYC ``MKL_CBWR=AVX2,STRICT`` silently ran the AUTO branch (``mkl_branch()`` read 2),
# so the AMD and Intel machines that both had the earlier ``AVX2,STRICT`` pin built different models
# (sha256 eb20e08b... and 5c8c55a0...; the Intel one failed 5 behaviour tests). It costs this build
# 1.8x (26.5 s against 14.9 s for a 46-step build).
PINNED_NUMERICS = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "COMPATIBLE"}

# ``mkl_cbwr_get(MKL_CBWR_BRANCH)``'s value for the branch above: what the training process checks MKL
# really runs, since MKL falls back to AUTO (2) without a word for a branch it does not run on a CPU.
MKL_COMPATIBLE_BRANCH = 3


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


def _collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and the positions whose next token is a reply token."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (prompt, reply) in enumerate(examples):
        seq = prompt + reply
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        for offset, token in enumerate(reply):
            rows.append(row)
            cols.append(len(prompt) + offset - 1)
            targets.append(token)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "rows": torch.tensor(rows),
        "cols": torch.tensor(cols),
        "targets": torch.tensor(targets),
    }


def _reply_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the reply tokens, projecting only those positions to the vocabulary."""
    # Right padding under a causal mask: no real token attends to a pad, so no padding mask is needed
    # (a padding mask sends attention down a much slower path on CPU).
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    logits = model.lm_head(hidden[batch["rows"], batch["cols"]])
    loss = torch.nn.functional.cross_entropy(logits, batch["targets"], reduction="sum")
    return loss, int(batch["targets"].numel())


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
        total, count, parts = torch.zeros(()), 0, []
        for examples in phase.draw():
            if examples:
                loss, n = _reply_loss(model, _collate(examples, pad_id))
                total, count = total + loss, count + n
                parts.append(loss.item() / n)
        loss = total / count
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


def train_warm_model(
    spec: WarmModelSpec, seed: int, log_every: int = 50, phases_1_2_from: Path | None = None
) -> tuple[Any, Any]:
    """Runs the supervised phases in memory; returns (model, tokenizer). Deterministic per seed.

    With ``phases_1_2_from`` (the saved build of this seed and spec without phase 3) phases 1 and 2 are
    not trained again: their weights are loaded and their example draws replayed without training, so
    that phase 3 draws what it would after training them, and the result is the same bytes."""
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
    ]
    with _deterministic_torch(seed):
        model = _new_model(spec.model, tokenizer)
        model.train()
        if phases_1_2_from is None:
            for phase in phases:
                _run_phase(phase, model, spec, pad_id, log_every)
        else:
            _load_weights(model, phases_1_2_from)
            for phase in phases:
                _replay_draws(phase, log_every)
        if has_phase_3(spec):
            for phase in _corridor_phases(spec, rng, tokenizer, words, game_words):
                _run_phase(phase, model, spec, pad_id, log_every)
        model.eval()
    return model, tokenizer


def _load_weights(model: Any, folder: Path) -> None:
    """Copies a saved build's weights into ``model`` (same shape), bit for bit."""
    state = safetensors.torch.load_file(str(folder / "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # The output projection is tied to the embedding, so the file holds it once.
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise BuildModelError(
            f"{folder} is not a warm build of this shape (missing {missing}, unexpected {unexpected})"
        )


def _replay_draws(phase: _Phase, log_every: int) -> None:
    """Draws a phase's examples without training on them: the data generator's random state after it."""
    progress = StepProgress(f"warm-up {phase.name} (replaying its draws)", phase.steps) if log_every else None
    for step in range(phase.steps):
        phase.draw()
        if progress is not None:
            progress.update(step + 1, "")
    if progress is not None:
        progress.close()


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
    warm_dir: str | Path | None = None,
) -> Path:
    """Builds (or finds already built) the warmed tiny model in ``out_dir``; returns its path.

    A build with phase 3 continues the build of the same seed and spec without it (``warm_dir``, by
    default ``warm-seed<seed>`` beside ``out_dir``; built there first when that folder does not hold it,
    and then reused by the builds that ask for it): the same bytes as training all phases in one go
    (``train_warm_model``), for the cost of phase 3 alone where the warm build is cached."""
    spec = spec or WarmModelSpec()
    out_dir = Path(os.path.abspath(out_dir))
    if has_phase_3(spec):
        warm_spec = dataclasses.replace(spec, log_copy_steps=0, corridor_steps=0)
        warm_dir = Path(os.path.abspath(warm_dir or out_dir.parent / f"warm-seed{seed}"))
        if warm_dir == out_dir:
            raise BuildModelError(
                f"the warm build that phase 3 continues needs its own folder, not {out_dir}"
            )
    elif warm_dir is not None:
        raise BuildModelError(
            f"warm_dir={warm_dir} names the build that phase 3 continues; this spec has none"
        )
    try:
        vocab_sha256 = qwen_vocab_sha256()
    except FileNotFoundError as err:
        raise BuildModelError(str(err)) from err
    settings = {
        "kind": "warm",
        "warm_version": WARM_VERSION,
        "seed": seed,
        "spec": spec_settings(spec),
        "game": GAME,
        "held_out_families": list(HELD_OUT_FAMILIES),
        "build_threads": BUILD_THREADS,
        "qwen_vocab_sha256": vocab_sha256,
        "versions": library_versions(),
    }

    pinned = _can_pin_numerics()
    settings["numerics"] = dict(PINNED_NUMERICS) if pinned else "native"
    if not pinned:
        logger.warning(
            "this CPU has no AVX2: the warm model is built with its native float kernels, so it is not "
            "the model the project's tests measured and may not pass them"
        )

    def write(folder: Path) -> None:
        # Only when this build is not cached: a cached one needs no warm build.
        phases_1_2_from = build_warm_model(warm_dir, seed, warm_spec) if has_phase_3(spec) else None
        _train_in_pinned_process(spec, seed, folder, pinned, phases_1_2_from)

    return build_folder(out_dir, settings, write, force)


def _can_pin_numerics() -> bool:
    """True on a CPU that runs ATen's AVX2 kernels (x86-64 with AVX2; AVX512 CPUs have it too).

    Asks the CPU (torch's cpuinfo), not the kernels this process dispatches to: those follow this
    process's own ``ATEN_CPU_CAPABILITY``, which must not decide the build's."""
    return bool(torch.cpu._is_avx2_supported())


def _train_in_pinned_process(
    spec: WarmModelSpec, seed: int, folder: Path, pinned: bool, phases_1_2_from: Path | None
) -> None:
    """Trains and saves into ``folder`` in a child interpreter started with ``PINNED_NUMERICS`` (its
    progress lines go to this process's console)."""
    env = {**os.environ, **(PINNED_NUMERICS if pinned else {})}
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
    if pinned:
        command.append("--expect-pinned")
    if phases_1_2_from is not None:
        command += ["--phases-1-2-from", str(phases_1_2_from)]
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise BuildModelError(
            f"the warm model's training process exited with code {code} (its output is above)"
        )
