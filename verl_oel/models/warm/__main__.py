"""The warm build's training process (started by ``train._train_in_pinned_process``, not by hand):
``python -m verl_oel.models.warm --seed N --spec JSON --out DIR`` trains one build and saves it."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

import torch

from verl_oel.models.warm.spec import WarmModelSpec
from verl_oel.models.warm.train import MKL_COMPATIBLE_BRANCH, PINNED_NUMERICS, mkl_branch, train_warm_model


def main(argv: list[str] | None = None) -> None:
    """Trains one build with the numerics the parent pinned, and saves it."""
    parser = argparse.ArgumentParser(prog="python -m verl_oel.models.warm")
    parser.add_argument("--seed", type=int, required=True, help="the build's seed")
    parser.add_argument("--spec", required=True, help="WarmModelSpec as JSON (dataclasses.asdict)")
    parser.add_argument("--out", type=Path, required=True, help="an existing empty folder to save into")
    parser.add_argument(
        "--phases-1-2-from",
        type=Path,
        default=None,
        help="the saved build of this seed and spec without phase 3, to continue instead of retraining",
    )
    parser.add_argument(
        "--expect-pinned", action="store_true", help="exit with an error unless the numerics are pinned"
    )
    args = parser.parse_args(argv)
    if args.expect_pinned:
        # The environment as the parent set it, and ATen really dispatching to those kernels.
        capability = torch.backends.cpu.get_cpu_capability()
        unset = [key for key, value in PINNED_NUMERICS.items() if os.environ.get(key) != value]
        if unset or capability != PINNED_NUMERICS["ATEN_CPU_CAPABILITY"].upper():
            raise SystemExit(f"warm build: numerics not pinned ({unset or 'ATen capability ' + capability})")
        branch = mkl_branch()
        if branch not in (None, MKL_COMPATIBLE_BRANCH):
            raise SystemExit(
                f"warm build: MKL runs code branch {branch}, not its CPU-independent COMPATIBLE branch "
                f"({MKL_COMPATIBLE_BRANCH}) (MKL_CBWR={os.environ.get('MKL_CBWR')})"
            )
    # oneDNN picks its kernels by CPU too; the fp32 build does not need it (measured: same bytes).
    torch.backends.mkldnn.enabled = False
    spec = WarmModelSpec.from_dict(json.loads(args.spec))
    model, tokenizer = train_warm_model(spec, args.seed, phases_1_2_from=args.phases_1_2_from)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    # Which bytes this CPU built: the one line to compare when two machines' behaviour tests disagree.
    weights = hashlib.sha256((args.out / "model.safetensors").read_bytes()).hexdigest()
    print(
        f"warm build: seed {args.seed} on {_cpu_model()} (MKL branch {mkl_branch()}), "
        f"model.safetensors sha256 {weights}",
        flush=True,
    )


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
