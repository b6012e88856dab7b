"""The warm-up's training loop and the cached build (``build_warm_model``)."""

from __future__ import annotations

import dataclasses
import math
import os
import random
from collections.abc import Iterator
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
from verl_oel.models.warm.data import copy_batches, copy_words, extraction_example, game_example
from verl_oel.models.warm.spec import BUILD_THREADS, GAME, WARM_VERSION, WarmModelSpec


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


def _run_phase(
    name: str,
    model: Any,
    steps: int,
    lr: float,
    warmup_steps: int,
    spec: WarmModelSpec,
    draw: Any,
    pad_id: int,
    log_every: int,
) -> None:
    """AdamW with warm-up and cosine decay over ``steps``; ``draw()`` gives a step's example groups."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay
    )

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    running, note = [], ""
    # A bar on a terminal, else four lines (25/50/75/100%): the build is short on the demo's console.
    progress = StepProgress(f"warm-up {name}", steps) if log_every else None
    for step in range(steps):
        total, count, parts = torch.zeros(()), 0, []
        for examples in draw():
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


def train_warm_model(spec: WarmModelSpec, seed: int, log_every: int = 50) -> tuple[Any, Any]:
    """Runs the supervised phases in memory; returns (model, tokenizer). Deterministic per seed."""
    tokenizer = build_qwen_prefix_tokenizer(spec.model.vocab_size, spec.model.max_position_embeddings)
    words = copy_words(tokenizer, spec.extra_copy_words)
    # Renamed games never turn into a held-out family's game: no held-out sign replaces a warm one.
    game_words = [word for word in words if word not in HELD_OUT_FAMILIES]
    rng = random.Random(f"warm/{seed}")
    pad_id = tokenizer.pad_token_id
    with _deterministic_torch(seed):
        model = _new_model(spec.model, tokenizer)
        model.train()
        # Phase 1: short synthetic copies (knowledge / door / plaque).
        _run_phase(
            "copy",
            model,
            spec.copy_steps,
            spec.copy_lr,
            spec.warmup_steps,
            spec,
            lambda: copy_batches(rng, words, tokenizer, spec.copy_batch),
            pad_id,
            log_every,
        )
        # Phase 2: the pipeline's prompts (games / extraction / knowledge / door / plaque).
        _run_phase(
            "prompts",
            model,
            spec.steps,
            spec.lr,
            spec.warmup_steps,
            spec,
            lambda: [
                [game_example(rng, spec, tokenizer, game_words) for _ in range(spec.game_batch)],
                [extraction_example(rng, spec, tokenizer, game_words) for _ in range(spec.extraction_batch)],
                *copy_batches(rng, words, tokenizer, spec.copy_batch_late),
            ],
            pad_id,
            log_every,
        )
        model.eval()
    return model, tokenizer


def build_warm_model(
    out_dir: str | Path, seed: int = 0, spec: WarmModelSpec | None = None, force: bool = False
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
    }

    def write(folder: Path) -> None:
        model, tokenizer = train_warm_model(spec, seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(Path(os.path.abspath(out_dir)), settings, write, force)
