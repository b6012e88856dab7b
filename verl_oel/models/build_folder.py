"""The folder mechanics every model build shares: cached by a hash of its settings, published whole.

A build is written into a hidden folder beside its target and renamed into place when complete,
so an interrupted build never leaves a folder that looks usable. ``build_info.json`` records a
hash of everything the build depends on; asking for the same build again returns at once. The
tiny and SmolLM2 builds (``build.py``) and the warm build (``warm/train.py``) all go through
:func:`build_folder`.
"""

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import tokenizers
import torch
import transformers

from verl_oel.atomic_io import publish_folder, staged_folder

logger = logging.getLogger(__name__)

# Bump when a builder's output changes for the same settings, so older cached builds are redone.
BUILDER_VERSION = 1
BUILD_INFO_FILE = "build_info.json"
BUILDER_NAME = "verl-oel"


class BuildModelError(RuntimeError):
    """A build that cannot proceed for a reason the user can fix (message says how)."""


@dataclasses.dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model: small enough for 2 CPU cores, long enough for multi-turn games."""

    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 512
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    vocab_size: int = 8192
    max_position_embeddings: int = 8192


def tiny_config(spec: TinyModelSpec, tokenizer: Any) -> transformers.Qwen3Config:
    """The tiny Qwen3's config for ``spec`` (fp32, tied embeddings), shared by the tiny and warm builds."""
    return transformers.Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        head_dim=spec.head_dim,
        max_position_embeddings=spec.max_position_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True,
        dtype="float32",
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def library_versions() -> dict[str, str]:
    """The libraries whose version can change a build's bytes, so that a new one rebuilds."""
    return {
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def _settings_hash(settings: dict[str, Any]) -> str:
    payload = json.dumps({"builder_version": BUILDER_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _read_build_info(folder: Path) -> dict[str, Any] | None:
    """The build record of a folder we built, or None for any other folder."""
    try:
        info = json.loads((folder / BUILD_INFO_FILE).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("builder") == BUILDER_NAME else None


def _is_built(folder: Path, settings_hash: str) -> bool:
    """True when ``folder`` holds our build of these settings with every file at its recorded size."""
    info = _read_build_info(folder)
    if info is None or info.get("settings_hash") != settings_hash:
        return False
    files = info.get("files", {})
    return bool(files) and all(
        (folder / name).is_file() and (folder / name).stat().st_size == size for name, size in files.items()
    )


def build_folder(out: Path, settings: dict[str, Any], write: Callable[[Path], None], force: bool) -> Path:
    """Runs ``write`` into a hidden sibling of ``out``, records the build, and swaps it into place."""
    settings_hash = _settings_hash(settings)
    if not force and _is_built(out, settings_hash):
        logger.info("%s already holds this %s build; skipping", out, settings["kind"])
        return out
    if out.exists() and not out.is_dir():
        raise BuildModelError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and _read_build_info(out) is None and not force:
        raise BuildModelError(
            f"{out} is not empty and holds no verl-oel build (no {BUILD_INFO_FILE}); "
            "choose another --out or pass --force to replace it"
        )

    with staged_folder(out) as staging:
        write(staging)
        files = {path.name: path.stat().st_size for path in sorted(staging.iterdir())}
        info = {
            "builder": BUILDER_NAME,
            "builder_version": BUILDER_VERSION,
            "kind": settings["kind"],
            "settings_hash": settings_hash,
            "settings": settings,
            "files": files,
        }
        (staging / BUILD_INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        publish_folder(staging, out)
    logger.info("built %s model in %s", settings["kind"], out)
    return out
