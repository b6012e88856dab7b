"""The extraction stage on its own: one validation-only verl launch that builds a round's knowledge.

The OEL trainer runs extraction inside its own verl launch (``trainer.py``); this standalone launcher
is for measuring the stage alone (``examples/bench_extraction_concurrency.py``) and for its CPU test.
It sits apart from ``extraction_stage.py`` because it launches verl, and the stage's config must stay
importable by the recipe checks that every launch runs first.
"""

from __future__ import annotations

from pathlib import Path

from verl_oel.atomic_io import write_parquet_atomic
from verl_oel.launch import run_recipe, validation_only_overrides
from verl_oel.oel.extraction_stage import (
    ExtractionConfig,
    ExtractionResult,
    collect_extraction,
    extraction_rows,
    stream_specs,
)


def run_extraction(
    model: Path,
    config: ExtractionConfig,
    round: int,
    out_dir: Path,
    recipe: str = "grpo_cpu_games",
    overrides: list[str] | None = None,
) -> ExtractionResult:
    """Build the round's streams with ``model``; returns what was written under ``out_dir``."""
    out_dir = out_dir.resolve()
    specs = stream_specs(config, round, out_dir)
    rows = extraction_rows(specs, config.concurrent)
    data = write_parquet_atomic(rows, out_dir / "streams.parquet")
    code = run_recipe(
        recipe,
        [
            *validation_only_overrides(model, data, len(rows), out_dir / "verl"),
            "trainer.logger=[console]",
            *(overrides or []),
        ],
        log_file=out_dir / "verl.log",
    )
    if code != 0:
        raise RuntimeError(f"extraction run failed with exit code {code}; see {out_dir / 'verl.log'}")
    return collect_extraction(out_dir, config, round)
