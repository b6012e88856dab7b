"""Where a launch's servers listen, and who may use them.

Every verl launch starts Ray (its GCS, raylet, dashboard agent, runtime-env agent, log monitor and one
process per worker, each with its own gRPC or HTTP port) and one vLLM OpenAI-compatible HTTP server per
rollout replica. verl binds that server to ``ray.util.get_node_ip_address()``
(``verl/workers/rollout/vllm_rollout/vllm_async_server.py``), and its Ray runtime env turns on vLLM's
runtime LoRA endpoints (``VLLM_ALLOW_RUNTIME_LORA_UPDATING=true``). Left so, anyone who reaches the
machine can generate with the model being trained and load adapters from the machine's paths into it.

A single-node run needs none of it off the machine, so by default (``network.listen: auto`` with
``trainer.nnodes: 1``) the launch asks Ray for a single-machine cluster:
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (Ray's own switch, meant for laptops, read by
``ray._private.services.get_node_ip_address``) makes Ray's node address, and so every Ray port and the
address verl gives vLLM, ``127.0.0.1``, in the driver and in every worker, without patching verl or
Ray. Measured with Ray 2.60: a bare ``ray.init`` opened 3 sockets on ``0.0.0.0``, 6 on ``::`` and 2 on
the machine's address; with the switch, all of them are on loopback.

Every launch also gets a per-run vLLM API key (``VLLM_API_KEY``, inherited by the local Ray workers,
never written to a log or a command line): loopback is still reachable by the machine's other users.
vLLM checks it on ``/v1/*`` only (its SageMaker route ``/invocations`` also serves completions, without
it), so loopback is the fence and the key a second, partial one.
verl's own clients do not use HTTP (they call the server's Ray actor), so nothing of verl needs the key.
Runtime LoRA loading stays off unless the recipe trains LoRA (``actor_rollout_ref.model.lora_rank``),
verl's only use of it.

No launch reports usage: vLLM's engine, unless told otherwise, sends usage statistics to its project's
server at start and every 10 minutes after, and appends them to ``~/.config/vllm/usage_stats.json``, one
file shared by every run of the user on the machine (``vllm/usage/usage_lib.py``; rank 0's GPU worker
reports, vLLM's CPU worker skips it); Ray's ``ray.init`` collects its own. A training run has no
business on a network it was not asked to use, so each launch sets both projects' documented off
switches (``VLLM_NO_USAGE_STATS=1``, ``RAY_USAGE_STATS_ENABLED=0``); as with every variable here, one the
user has set wins.

Multi-node runs (``trainer.nnodes > 1``, or ``ray_kwargs.ray_init.address`` joining a cluster) must be
reachable from the other nodes: ``auto`` leaves Ray's addresses alone there, and the key reaches only
workers on the launching node (others inherit the environment of their ``ray start``). The README's
security note says what that exposes and how to fence it.
"""

from __future__ import annotations

import secrets

from omegaconf import DictConfig, OmegaConf

LISTEN_KEY = "network.listen"
AUTO, LOOPBACK, NODE = "auto", "loopback", "node"
LISTEN_CHOICES = (AUTO, LOOPBACK, NODE)

SINGLE_MACHINE_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
"""Ray's switch: when "0", ``get_node_ip_address`` answers loopback instead of the routing address."""

API_KEY = "VLLM_API_KEY"
RUNTIME_LORA = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"
NO_USAGE_REPORTS = {"VLLM_NO_USAGE_STATS": "1", "RAY_USAGE_STATS_ENABLED": "0"}
"""vLLM's and Ray's own switches for their usage statistics (sent over the network, see above)."""


def _select(config: DictConfig, key: str):
    return OmegaConf.select(config, key, default=None)


def _multi_node(config: DictConfig) -> bool:
    # "local" is Ray's "start a cluster of my own, join none" (ray.init's docstring).
    joins_a_cluster = _select(config, "ray_kwargs.ray_init.address") not in (None, "", "local")
    return int(_select(config, "trainer.nnodes") or 1) > 1 or joins_a_cluster


def listen_mode(config: DictConfig) -> str:
    """``loopback`` or ``node``: what ``network.listen`` resolves to for this recipe."""
    mode = str(_select(config, LISTEN_KEY) or AUTO)
    if mode == AUTO:
        return NODE if _multi_node(config) else LOOPBACK
    return mode


def check_network(config: DictConfig) -> list[str]:
    """Problems with ``network.listen``, each naming its key (empty when it can work)."""
    mode = str(_select(config, LISTEN_KEY) or AUTO)
    if mode not in LISTEN_CHOICES:
        return [f"{LISTEN_KEY}={mode!r}: must be one of {', '.join(LISTEN_CHOICES)}"]
    if mode == LOOPBACK and _multi_node(config):
        return [
            f"{LISTEN_KEY}=loopback with trainer.nnodes={_select(config, 'trainer.nnodes')} / "
            f"ray_kwargs.ray_init.address={_select(config, 'ray_kwargs.ray_init.address')}: the other nodes "
            "could not reach this node's servers; use auto or node and fence the nodes' network"
        ]
    return []


def uses_lora(config: DictConfig) -> bool:
    return int(_select(config, "actor_rollout_ref.model.lora_rank") or 0) > 0 or bool(
        _select(config, "actor_rollout_ref.model.lora_adapter_path")
    )


def network_env(config: DictConfig) -> dict[str, str]:
    """Environment for the launch's driver (Ray's local processes and workers inherit it); a variable the
    caller already set wins, so a user can always choose otherwise."""
    env = {API_KEY: secrets.token_urlsafe(32), **NO_USAGE_REPORTS}
    if listen_mode(config) == LOOPBACK:
        env[SINGLE_MACHINE_RAY] = "0"
    if not uses_lora(config):
        # verl's runtime env sets it to "true" unless the driver's environment has it (constants_ppo.py).
        env[RUNTIME_LORA] = "false"
    return env
