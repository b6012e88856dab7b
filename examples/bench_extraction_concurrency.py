"""Wall time of S knowledge streams built concurrently vs one after another.

Same games, same model, same sampling seeds; both through verl's real rollout stack. The
streams' own wall-clock spans are compared (verl's start-up is excluded, it is the same for
both). Usage:

    .venv/bin/python examples/bench_extraction_concurrency.py --streams 4 --games 2
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

from verl_oel.models.build import build_tiny_model
from verl_oel.oel.extraction_run import run_extraction
from verl_oel.oel.extraction_stage import ExtractionConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the tiny model, built)")
    parser.add_argument("--game", default="frozenlake")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--games", type=int, default=2)
    parser.add_argument("--max-turn-tokens", type=int, default=16)
    parser.add_argument("--max-item-tokens", type=int, default=32)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(args.model) if args.model else build_tiny_model(Path(tmp) / "tiny", seed=0)
        config = ExtractionConfig(
            game=args.game,
            num_streams=args.streams,
            games_per_stream=args.games,
            budget_tokens=1024,
            max_turn_tokens=args.max_turn_tokens,
            max_item_tokens=args.max_item_tokens,
        )
        walls, spans = {}, {}
        for label, concurrent in (("concurrent", True), ("sequential", False)):
            result = run_extraction(model, replace(config, concurrent=concurrent), 1, Path(tmp) / label)
            walls[label], spans[label] = result.wall_seconds, result.stream_spans
    print(f"{args.streams} streams x {args.games} games of {args.game}")
    print(f"  concurrent : {walls['concurrent']:8.1f} s")
    print(f"  sequential : {walls['sequential']:8.1f} s")
    print(f"  sequential / concurrent = {walls['sequential'] / walls['concurrent']:.2f}x")
    for label, label_spans in spans.items():
        shown = ", ".join(f"{start:.1f}-{end:.1f}" for start, end in label_spans)
        print(f"  {label} stream spans (s): {shown}")


if __name__ == "__main__":
    main()
