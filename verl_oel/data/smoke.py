"""The GRPO smoke task: "say a word" prompts, enough to run verl's trainer end to end."""

from __future__ import annotations

import random
from pathlib import Path

from verl_oel.atomic_io import write_parquet_atomic

_WORDS = ("apple", "river", "north", "door", "coin", "key", "lake", "stone", "light", "box")


def smoke_rows(n: int, seed: int, split: str) -> list[dict]:
    rng = random.Random(f"smoke-{split}-{seed}")
    rows = []
    for index in range(n):
        word = rng.choice(_WORDS)
        rows.append(
            {
                "data_source": "verl_oel/smoke",
                "prompt": [{"role": "user", "content": f"Say the word {word}."}],
                "ability": "smoke",
                "reward_model": {"style": "rule", "ground_truth": word},
                "extra_info": {"split": split, "index": index},
            }
        )
    return rows


def write_smoke_data(out_dir: str | Path, n_train: int = 32, n_val: int = 8, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    write_parquet_atomic(smoke_rows(n_train, seed, "train"), out_dir / "train.parquet")
    write_parquet_atomic(smoke_rows(n_val, seed, "val"), out_dir / "val.parquet")
    return out_dir
