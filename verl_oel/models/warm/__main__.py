"""The warm build's training process (started by ``train._train_in_child_process``, not by hand):
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
from verl_oel.models.warm.train import KERNEL_VARIABLES, mkl_branch, train_warm_model


def main(argv: list[str] | None = None) -> None:
    """Trains one build with the CPU's own float kernels, and saves it."""
    parser = argparse.ArgumentParser(prog="python -m verl_oel.models.warm")
    parser.add_argument("--seed", type=int, required=True, help="the build's seed")
    parser.add_argument("--spec", required=True, help="WarmModelSpec as JSON (dataclasses.asdict)")
    parser.add_argument("--out", type=Path, required=True, help="an existing empty folder to save into")
    args = parser.parse_args(argv)
    # The parent starts this process without them; one set here would choose other kernels, other bytes.
    chosen = sorted(name for name in KERNEL_VARIABLES if name in os.environ)
    if chosen:
        raise SystemExit(f"warm build: float kernels chosen by the environment ({', '.join(chosen)})")
    # oneDNN picks its kernels by CPU too; the fp32 build does not need it (measured: same bytes).
    torch.backends.mkldnn.enabled = False
    spec = WarmModelSpec.from_dict(json.loads(args.spec))
    model, tokenizer = train_warm_model(spec, args.seed)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    # Which bytes this CPU built: the one line to compare when two machines' behaviour tests disagree.
    weights = hashlib.sha256((args.out / "model.safetensors").read_bytes()).hexdigest()
    print(
        f"warm build: seed {args.seed} on {_cpu_model()} (ATen {torch.backends.cpu.get_cpu_capability()}, "
        f"MKL branch {mkl_branch()}), model.safetensors sha256 {weights}",
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
