"""Before a run (re)starts: every finished stage's outputs are still on disk and readable.

A resumed run trusts its done markers: it never reruns a marked stage, it reads the stage's files. A run
directory damaged between attempts (a truncated knowledge file, a deleted checkpoint, a stage marker whose
files are gone, a truncated ``stages.json``) would otherwise fail hours later, in the stage that reads the
file, or, worse, after verl's start-up, with an error that names neither the file nor the cure.
``check_finished_outputs`` reads what is still to be read of each marked stage (cheap: JSON files,
parquet footers and safetensors headers, no weights) and raises ``DamagedRunError`` naming the file, the
stage that wrote it and what to do, before anything is launched or written. Nothing is repaired or
removed: the user decides.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from verl_oel.knowledge import load_stream, stream_path
from verl_oel.oel.round_eval import load_ifbench_record, load_round_eval
from verl_oel.oel.run_state import (
    CHECKPOINT,
    CONSOLIDATION,
    DEPLOYMENT,
    EVALUATION,
    EXTRACTION,
    DamagedRunError,
    RunLayout,
    RunState,
    read_stage_markers,
)


def check_finished_outputs(state: RunState) -> None:
    """Raise ``DamagedRunError`` at the first finished stage (in run order) whose outputs are damaged."""
    layout = state.layout
    for round in layout.existing_rounds():
        try:
            markers = read_stage_markers(layout, round)
        except (OSError, ValueError, KeyError, TypeError) as error:
            problem = f"is unreadable ({error})"
            raise _damaged(state, round, None, layout.stages_json(round), problem) from error
        for stage, marker in markers.items():
            summary = marker.get("summary", {}) if isinstance(marker, dict) else {}
            for path, read in _outputs(layout, round, stage, summary, markers):
                if not path.exists():
                    raise _damaged(state, round, stage, path, "is missing")
                try:
                    read(path)
                except Exception as error:  # noqa: BLE001 - any failure to read it is the damage reported
                    raise _damaged(state, round, stage, path, f"is unreadable ({error})") from error


def _outputs(
    layout: RunLayout, round: int, stage: str, summary: dict[str, Any], markers: dict[str, Any]
) -> list[tuple[Path, Callable[[Path], Any]]]:
    """(file, reader) for what a later stage, a resumed launch or the report reads of a finished stage
    (its work files, e.g. the games it played, are not checked: nothing reads them again)."""
    if stage == EXTRACTION:  # the round's knowledge: read by its later stages and by people
        root = layout.knowledge_root(round)
        return [(stream_path(root, round, i), load_stream) for i in range(int(summary.get("streams", 0)))]
    if stage == DEPLOYMENT and CONSOLIDATION not in markers and "skipped" not in summary:
        # consolidation trains on these rows (a round with nothing to consolidate played none)
        return [(layout.deployment_dir(round) / "prompts.parquet", _parquet_footer)]
    if stage == CONSOLIDATION and CHECKPOINT not in markers and "hf_model" in summary:
        # Until the round's checkpoint is published, consolidation's HF folder is the round's model: the
        # checkpoint stage copies it and a resumed launch starts from it.
        return _hf_folder(Path(summary["hf_model"]))
    if stage == EVALUATION:  # the round's record, which the report reads, and its IFBench verdicts
        outputs = [(layout.eval_json(round), load_round_eval)]
        if "ood/ifbench/prompts" in summary:
            outputs.append((layout.ifbench_json(round), load_ifbench_record))
        return outputs
    if stage == CHECKPOINT:  # the round's model: the next round starts from it
        return _hf_folder(layout.checkpoint_dir(round))
    return []


def _hf_folder(folder: Path) -> list[tuple[Path, Callable[[Path], Any]]]:
    if not folder.is_dir():
        return [(folder, Path.iterdir)]  # reported missing: the whole folder is gone
    weights = sorted(folder.glob("*.safetensors"))
    return [
        (folder / "config.json", _json),
        (folder / "tokenizer_config.json", _json),
        *((shard, _safetensors_header) for shard in weights or [folder / "model.safetensors"]),
    ]


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _parquet_footer(path: Path) -> None:
    import pyarrow.parquet as pq

    pq.read_metadata(path)


def _safetensors_header(path: Path) -> None:
    """The header and the file's size agree (a truncated file fails here): no tensor is read."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as weights:
        weights.keys()


def _damaged(state: RunState, round: int, stage: str | None, path: Path, problem: str) -> DamagedRunError:
    layout = state.layout
    where = f"round {round}'s {stage} stage, marked done" if stage else f"round {round}'s stage markers"
    # Earlier rounds were checked whole, so the round's start model is there.
    start = state.spec.base_model if round <= 1 else state.round_model(round - 1)
    folder = layout.round_dir(round).relative_to(layout.run_dir)
    return DamagedRunError(
        f"{path} ({where}) {problem}. The run directory {layout.run_dir} is damaged; nothing was run or "
        f"changed. Restore the file, or delete {folder} and every later round's folder to redo those rounds "
        f"from {start}, or start a new run elsewhere (trainer.default_local_dir=DIR)."
    )
