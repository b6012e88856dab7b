"""Where a launch's servers listen (verl_oel/network.py). The real run's sockets are checked on a CPU
launch in tests/oel/test_oel_run_cpu.py; here, the settings and Ray's answer in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from verl_oel.network import (
    API_KEY,
    RUNTIME_LORA,
    SINGLE_MACHINE_RAY,
    check_network,
    listen_mode,
    network_env,
)
from verl_oel.recipe_checks import RecipeError, check_recipe
from verl_oel.recipe_loader import compose_recipe, list_recipes


def config(listen="auto", nnodes=1, address=None, lora_rank=0):
    return OmegaConf.create(
        {
            "network": {"listen": listen},
            "trainer": {"nnodes": nnodes},
            "ray_kwargs": {"ray_init": {"address": address}},
            "actor_rollout_ref": {"model": {"lora_rank": lora_rank, "lora_adapter_path": None}},
        }
    )


def test_auto_is_loopback_on_one_node_and_the_nodes_address_when_others_must_reach_it():
    assert listen_mode(config()) == "loopback"
    assert listen_mode(config(nnodes=2)) == "node"
    assert listen_mode(config(address="10.0.0.1:6379")) == "node"
    assert listen_mode(config(address="local")) == "loopback"  # Ray's own new cluster, joining none
    assert listen_mode(config(listen="node")) == "node"
    assert SINGLE_MACHINE_RAY in network_env(config())
    assert SINGLE_MACHINE_RAY not in network_env(config(nnodes=2))
    assert SINGLE_MACHINE_RAY not in network_env(config(listen="node"))


def test_every_launch_gets_its_own_key_and_runtime_lora_only_when_it_trains_lora():
    first, second = network_env(config()), network_env(config())
    assert len(first[API_KEY]) >= 40 and first[API_KEY] != second[API_KEY]
    assert network_env(config(nnodes=2))[API_KEY]
    assert first[RUNTIME_LORA] == "false"
    assert RUNTIME_LORA not in network_env(config(lora_rank=8))


def test_a_listen_setting_that_cannot_work_fails_at_start_naming_the_key():
    assert check_network(config()) == [] and check_network(config(listen="node", nnodes=2)) == []
    [problem] = check_network(config(listen="everywhere"))
    assert problem.startswith("network.listen='everywhere'")
    [problem] = check_network(config(listen="loopback", nnodes=2))
    assert problem.startswith("network.listen=loopback") and "trainer.nnodes=2" in problem
    with pytest.raises(RecipeError, match="network.listen=loopback with trainer.nnodes=2"):
        check_recipe(compose_recipe("oel_cpu_tiny", ["trainer.nnodes=2", "network.listen=loopback"]))


@pytest.mark.parametrize("recipe", [name for name in list_recipes() if not name.endswith("_base")])
def test_every_recipe_has_the_key_and_runs_on_loopback_by_default(recipe):
    composed = compose_recipe(recipe, [])
    assert OmegaConf.select(composed, "network.listen") == "auto"
    assert listen_mode(composed) == "loopback"  # every shipped recipe is single-node


@pytest.mark.parametrize("switch", [True, False])
def test_rays_node_address_in_a_worker_is_loopback_with_the_switch(switch):
    """What verl binds vLLM to: ``ray.util.get_node_ip_address()`` in a process without a Ray node of its
    own (a worker), here a fresh interpreter. Without the switch it is the routing address."""
    env = {SINGLE_MACHINE_RAY: "0"} if switch else {}
    code = "import ray.util; print(ray.util.get_node_ip_address())"
    base = {k: v for k, v in os.environ.items() if k != SINGLE_MACHINE_RAY}
    address = subprocess.run(
        [sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True, check=True
    ).stdout.strip()
    if switch:
        assert address == "127.0.0.1"
    elif address.startswith("127."):
        pytest.skip("this machine routes through loopback only: nothing to compare")
    else:
        assert not address.startswith("127.")


@pytest.mark.parametrize("launch_env", [True, False])
def test_a_launch_turns_off_vllms_and_rays_usage_reports(launch_env):
    """vLLM's and Ray's own answers, in a fresh interpreter, to "do I report usage?" (vLLM's engine would
    post to its project's server and append to the user's ``~/.config/vllm/usage_stats.json``), with a
    launch's environment and without it. The CPU run's check: tests/oel/test_oel_run_cpu.py."""
    code = (
        "from vllm.usage.usage_lib import is_usage_stats_enabled as vllm_reports\n"
        "from ray._common.usage.usage_lib import usage_stats_enabled as ray_reports\n"
        "print(vllm_reports(), ray_reports())"
    )
    switches = set(network_env(config())) - {API_KEY, SINGLE_MACHINE_RAY, RUNTIME_LORA}
    base = {k: v for k, v in os.environ.items() if k not in switches | {"DO_NOT_TRACK", "VLLM_DO_NOT_TRACK"}}
    base["VLLM_CONFIG_ROOT"] = "/nonexistent/vllm-config"  # no user's do_not_track file decides for us
    env = {**base, **(network_env(config()) if launch_env else {})}
    answer = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.split()[-2:]
    assert answer == (["False", "False"] if launch_env else ["True", "True"])


def test_the_socket_reader_sees_what_a_process_listens_on_and_where():
    """tests/run_sockets.py, which the CPU run's check relies on: our own listening sockets, read back
    from /proc with their addresses (IPv4, IPv6, IPv4-mapped) and loopback told apart."""
    import socket

    from run_sockets import Listening, listening_sockets

    opened = []
    for family, address in (
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "0.0.0.0"),
        (socket.AF_INET6, "::"),
    ):
        server = socket.socket(family, socket.SOCK_STREAM)
        server.bind((address, 0))
        server.listen()
        opened.append((server, address))
    try:
        seen = {(s.ip, s.port) for s in listening_sockets(os.getsid(0))}
        for server, address in opened:
            assert (address, server.getsockname()[1]) in seen
    finally:
        for server, _ in opened:
            server.close()
    assert Listening("::ffff:127.0.0.1", 1, "x").on_loopback and Listening("::1", 1, "x").on_loopback
    assert not Listening("0.0.0.0", 1, "x").on_loopback and not Listening("::", 1, "x").on_loopback
