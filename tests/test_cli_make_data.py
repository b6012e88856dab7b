"""``verl-oel make-data``: the game splits a GRPO recipe trains, validates and tests on."""

from __future__ import annotations

import json

import pandas as pd
from oel_testing import run_verl_oel

from verl_oel.seeds import game_seeds


def test_each_split_holds_its_own_seeds_and_the_settings(tmp_path):
    sizes = {"train": 3, "val": 2, "test": 2}
    proc = run_verl_oel(
        [
            "make-data",
            "--game",
            "frozenlake",
            "--out",
            str(tmp_path),
            "--seed",
            "1",
            "--setting",
            "max_turns=4",
        ]
        + [arg for split, n in sizes.items() for arg in (f"--{split}-size", str(n))],
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    for split, n in sizes.items():
        rows = pd.read_parquet(tmp_path / f"{split}.parquet")
        episodes = [json.loads(info["oel_game"]) for info in rows["extra_info"]]
        assert [e["seed"] for e in episodes] == game_seeds(split, n, 1), split
        assert all(e["settings"] == {"max_turns": 4} and e["game"] == "frozenlake" for e in episodes)
        assert set(rows["agent_name"]) == {"oel_game"} and {i["split"] for i in rows["extra_info"]} == {split}


def test_a_setting_the_game_rejects_exits_2_naming_it(tmp_path):
    proc = run_verl_oel(
        ["make-data", "--game", "frozenlake", "--out", str(tmp_path), "--setting", "max_turns=0"], timeout=120
    )
    assert proc.returncode == 2 and "max_turns" in proc.stderr
    assert not list(tmp_path.glob("*.parquet"))
