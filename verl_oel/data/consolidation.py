"""A fixed consolidation prompt set: the same few prompts every step, each with a knowledge text.

Consolidation needs prompts only (no environment); the knowledge goes in the ``oel_knowledge`` column
(string, empty = no knowledge), which verl carries into the batch and the teacher pass reads.
"""

from __future__ import annotations

from pathlib import Path

from verl_oel.atomic_io import write_parquet_atomic

DEMO_KNOWLEDGE = (
    "- EXPERIENCE ITEM: Answer with the requested word only, in lower case.\n"
    "- EXPERIENCE ITEM: Never add punctuation or explanations."
)
_WORDS = ("apple", "river", "north", "door")


def consolidation_rows(knowledge: str, words: tuple[str, ...] = _WORDS) -> list[dict]:
    return [
        {
            "data_source": "verl_oel/consolidation",
            "prompt": [{"role": "user", "content": f"Say the word {word}."}],
            "ability": "consolidation",
            "reward_model": {"style": "rule", "ground_truth": word},
            "extra_info": {"index": index},
            "oel_knowledge": knowledge,
        }
        for index, word in enumerate(words)
    ]


def write_consolidation_data(out_dir: str | Path, knowledge: str = DEMO_KNOWLEDGE) -> Path:
    """train.parquet and val.parquet with the same fixed prompts and ``knowledge`` for each."""
    out_dir = Path(out_dir)
    rows = consolidation_rows(knowledge)
    write_parquet_atomic(rows, out_dir / "train.parquet")
    write_parquet_atomic(rows, out_dir / "val.parquet")
    return out_dir
