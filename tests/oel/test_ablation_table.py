"""The ablation script's table (``examples/oel_cpu_ablations.py``): read back from finished runs on disk,
one row per method and round, mean ± sd over the seeds with each seed's value, "-" where a round has no
knowledge."""

import importlib.util
from pathlib import Path

import pytest

from verl_oel.oel import NextStage, OODResult, RoundEval, RunSpec, RunState, save_round_eval

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "oel_cpu_ablations.py"


def load_script():
    spec = importlib.util.spec_from_file_location("oel_cpu_ablations", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finished_run(run_dir: Path, seed: int, evals: list[RoundEval]) -> Path:
    """A run driven through all its stages, each evaluation saving its round's eval.json."""
    spec = RunSpec(base_model="/models/warm", rounds=len(evals) - 1, seed=seed, config={})
    with RunState.open(run_dir, spec) as state:
        while (step := state.next_stage()) is not None:
            if step.stage == "evaluation":
                save_round_eval(state.layout, evals[step.round])
            state.mark_done(*step, {"seconds": 1.0})
        assert state.next_stage() is None
    return run_dir


def ood(*rates: tuple[float, float]) -> tuple[OODResult, ...]:
    return tuple(
        OODResult(name=f"family{i}", num_games=32, pass_rate=p, valid_action_rate=v)
        for i, (p, v) in enumerate(rates)
    )


def evals(base: float, after: float, tokens: float, items: int = 2, with_ood: bool = True) -> list[RoundEval]:
    return [
        RoundEval(
            round=0,
            num_games=32,
            pass_rate_no_knowledge=base,
            tokens_per_turn=4.0,
            ood=ood((0.25, 1.0), (0.25, 0.5)) if with_ood else (),
        ),
        RoundEval(
            round=1,
            num_games=32,
            pass_rate_no_knowledge=after,
            tokens_per_turn=tokens,
            turns_per_game=tokens / 4,
            response_tokens_per_game=tokens * tokens / 4,
            pass_rate_with_knowledge=1.0,
            knowledge_items=items,
            ood=ood((0.0, 0.25), (0.125, 0.5)) if with_ood else (),
        ),
    ]


def test_table_reads_finished_runs_and_gives_mean_sd_and_each_seed(tmp_path):
    script = load_script()
    runs = {
        0: finished_run(tmp_path / "seed0", 0, evals(0.25, 0.9375, 4.0)),
        1: finished_run(tmp_path / "seed1", 1, evals(0.1875, 1.0, 8.0, items=0)),
        2: finished_run(tmp_path / "seed2", 2, evals(0.25, 1.0, 4.0, with_ood=False)),
    }
    results = {"oel-cpu-demo": {seed: script.round_results(path) for seed, path in runs.items()}}
    # The OOD columns average the entries: pass (0 + 0.125) / 2, valid actions (0.25 + 0.5) / 2.
    assert results["oel-cpu-demo"][1][1] == script.RoundResult(1.0, 1.0, 8.0, 0, 0.0625, 0.375, 2.0, 16.0)
    assert results["oel-cpu-demo"][2][1] == script.RoundResult(1.0, 1.0, 4.0, 2, None, None, 1.0, 4.0)

    lines = script.table(results, [0, 1]).splitlines()
    assert "seeds [0, 1]" in lines[0]
    assert lines[-2:] == [
        # Round 0's eval.json holds no turns per game (written before they were measured): "-".
        "| OEL | 0 | 22 ± 4 (25, 19) | - | 4.0 ± 0.0 (4.0, 4.0) | - | - | - | 25 ± 0 (25, 25) "
        "| 75 ± 0 (75, 75) |",
        "| OEL | 1 | 97 ± 4 (94, 100) | 100 ± 0 (100, 100) | 6.0 ± 2.8 (4.0, 8.0) | 1.5 ± 0.7 (1.0, 2.0) "
        "| 10.0 ± 8.5 (4.0, 16.0) | 1 ± 1 (2, 0) | 6 ± 0 (6, 6) | 38 ± 0 (38, 38) |",
    ]
    # A run without OOD games shows "-" there.
    assert script.table(results, [2]).splitlines()[-1].endswith("| 2 ± 0 (2) | - | - |")


def test_an_unfinished_run_is_not_tabled(tmp_path):
    script = load_script()
    spec = RunSpec(base_model="/models/warm", rounds=1, seed=0, config={})
    with RunState.open(tmp_path / "run", spec) as state:
        save_round_eval(state.layout, evals(0.25, 1.0, 4.0)[0])
        state.mark_done(*NextStage(0, "evaluation"), {"seconds": 1.0})
    with pytest.raises(FileNotFoundError, match="round_001"):
        script.round_results(tmp_path / "run")
