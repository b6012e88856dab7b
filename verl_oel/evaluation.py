"""Held-out evaluation of a model on a game, through verl's own rollout stack.

The evaluation is verl's validation pass (``trainer.val_only=True``) on the fixed test split:
the same agent loop, vLLM server and reward function as training, with the paper's sampling
(temperature 0.7, top-p 0.8, top-k 20, from the recipe's ``val_kwargs``). Knowledge, when
given, goes where the consolidation teacher reads it (``verl_oel.knowledge.injection``).
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .atomic_io import write_json_atomic
from .data.games import GameDataSpec, write_game_data
from .launch import run_recipe, validation_only_overrides


@dataclass(frozen=True)
class EvalRequest:
    model: Path
    game: str
    settings: dict[str, Any] = field(default_factory=dict)
    knowledge_file: Path | None = None
    num_games: int = 128
    base_seed: int = 0
    mode: str = "per_turn"
    max_turn_tokens: int | None = None
    out_dir: Path = Path("runs/eval")
    recipe: str = "grpo_cpu_games"
    overrides: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class EvalResult:
    game: str
    num_games: int
    with_knowledge: bool
    pass_rate: float
    tokens_per_turn: float
    turns: float
    invalid_actions: float

    def summary_line(self) -> str:
        knowledge = "with knowledge" if self.with_knowledge else "no knowledge"
        return (
            f"{self.game} ({self.num_games} held-out games, {knowledge}): pass rate "
            f"{100 * self.pass_rate:.1f}%, {self.tokens_per_turn:.1f} response tokens/turn, "
            f"{self.turns:.2f} turns, {self.invalid_actions:.2f} invalid actions per game"
        )


def read_knowledge(path: Path) -> str:
    """A knowledge file: a saved stream (``.json``, rendered as the teacher sees it) or text."""
    if path.suffix == ".json":
        from .knowledge import load_stream

        return load_stream(path).render()
    return path.read_text()


def validation_metric(metrics: dict[str, float], data_source: str, name: str) -> float:
    """verl names validation metrics ``val-{core,aux}/<data_source>/<name>/mean@<n>``."""
    for key, value in metrics.items():
        parts = key.split("/")
        if key.startswith("val-") and f"/{data_source}/{name}/" in key and parts[-1].startswith("mean@"):
            return float(value)
    raise KeyError(f"validation metric {name!r} for {data_source!r} not found among {sorted(metrics)}")


def evaluate(request: EvalRequest) -> EvalResult:
    out = request.out_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    knowledge = read_knowledge(request.knowledge_file) if request.knowledge_file else ""
    data_spec = GameDataSpec(
        game=request.game,
        settings=request.settings,
        base_seed=request.base_seed,
        sizes={"test": request.num_games},
        mode=request.mode,
        knowledge=knowledge,
        max_turn_tokens=request.max_turn_tokens,
    )
    test_file = write_game_data(data_spec, out / "data")["test"]
    metrics_file = out / "metrics.jsonl"
    with tempfile.TemporaryDirectory(dir=out) as scratch:
        code = run_recipe(
            request.recipe,
            [
                *validation_only_overrides(request.model, test_file, request.num_games, Path(scratch)),
                "trainer.logger=[console,file]",
                *request.overrides,
            ],
            extra_env={"VERL_FILE_LOGGER_PATH": str(metrics_file)},
            log_file=out / "verl.log",
        )
    if code != 0:
        raise RuntimeError(f"evaluation run failed with exit code {code}; see {out / 'verl.log'}")
    metrics: dict[str, float] = {}
    for line in metrics_file.read_text().splitlines():
        metrics.update(json.loads(line)["data"])
    data_source = f"verl_oel/{request.game}"
    result = EvalResult(
        game=request.game,
        num_games=request.num_games,
        with_knowledge=bool(knowledge.strip()),
        pass_rate=validation_metric(metrics, data_source, "pass"),
        tokens_per_turn=validation_metric(metrics, data_source, "tokens_per_turn"),
        turns=validation_metric(metrics, data_source, "turns"),
        invalid_actions=validation_metric(metrics, data_source, "invalid_actions"),
    )
    write_json_atomic(out / "eval.json", asdict(result))
    return result
