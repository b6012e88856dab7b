"""What a warm build can do, measured with transformers on held-out families (no verl, ~1-2 minutes).

For a built warm model (``verl-oel build-model warm --out DIR``, or any folder it wrote), it plays:

- the one-turn ``hidden-rule`` doors of held-out families ``ship`` and ``river`` (40 games each), with the
  family's rule as a knowledge item and without knowledge: pass rate, and the share of replies that open a
  door of the room;
- the multi-turn ``hidden-rule-corridor`` (3 rooms of 5 doors, 7 turns) of the same families (64 games
  each), with and without the rule: pass rate, turns per game, and the share of turns that named no door
  of the room;
- extraction: the rule written from its own games (one-turn: 20 lost without the rule and 20 won with it;
  corridor: the 64 games played without the rule), with no knowledge so far: the share of replies that are
  an experience item naming the family's sign.

Everything sampled at the evaluation's settings (temperature 0.7, top-p 0.8, top-k 20), fixed seeds: the
same build gives the same figures. The last line is JSON.

    python examples/warm_model_skills.py ~/.cache/verl_oel/test-models/warm-seed0
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_oel.knowledge import DEFAULT_MARKER, parse_items, render_items
from verl_oel.models.warm import (
    EVAL_SAMPLING,
    GREEDY,
    extract_replies,
    play_corridor_games,
    play_games,
    rule_item,
)

FAMILIES = ("ship", "river")
ONE_TURN_SEEDS = range(10_000, 10_040)
CORRIDOR_SEEDS = range(20_000, 20_064)


def _rate(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 3)


def _names_the_rule(replies: list[str], family: str) -> float:
    return _rate(
        reply.startswith(DEFAULT_MARKER) and any(f"[{family}]" in item for item in parse_items(reply).items)
        for reply in replies
    )


def skills(model_dir: Path) -> dict:
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    figures: dict = {
        "model": str(model_dir),
        "sha256": hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()[:16],
    }
    for family in FAMILIES:
        rule = render_items([rule_item(family)])
        with_rule = play_games(model, tokenizer, family, ONE_TURN_SEEDS, rule, EVAL_SAMPLING)
        without = play_games(model, tokenizer, family, ONE_TURN_SEEDS, "", EVAL_SAMPLING)
        played = without[:20] + play_games(model, tokenizer, family, ONE_TURN_SEEDS[20:], rule, GREEDY)
        corridor_rule = play_corridor_games(model, tokenizer, family, CORRIDOR_SEEDS, rule, EVAL_SAMPLING)
        corridor = play_corridor_games(model, tokenizer, family, CORRIDOR_SEEDS, "", EVAL_SAMPLING)
        figures[family] = {
            "one_turn": {
                "pass_with_rule": _rate(r["won"] for r in with_rule),
                "pass_without": _rate(r["won"] for r in without),
                "door_of_the_room_without": _rate(not r["invalid"] for r in without),
                "extraction_names_rule": _names_the_rule(
                    extract_replies(model, tokenizer, played, "", EVAL_SAMPLING), family
                ),
            },
            "corridor": {
                "pass_with_rule": _rate(r["won"] for r in corridor_rule),
                "turns_with_rule": round(sum(r["turns"] for r in corridor_rule) / len(corridor_rule), 2),
                "pass_without": _rate(r["won"] for r in corridor),
                "turns_without": round(sum(r["turns"] for r in corridor) / len(corridor), 2),
                "no_door_turns_without": round(
                    sum(r["invalid_turns"] for r in corridor) / sum(r["turns"] for r in corridor), 3
                ),
                "extraction_names_rule": _names_the_rule(
                    extract_replies(model, tokenizer, corridor, "", EVAL_SAMPLING), family
                ),
            },
        }
        print(family, json.dumps(figures[family]), flush=True)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="a warm build's folder")
    print(json.dumps(skills(parser.parse_args().model.expanduser())))


if __name__ == "__main__":
    main()
