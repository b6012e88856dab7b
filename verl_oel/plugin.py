"""Entry point of verl's ``verl.plugins`` group.

verl imports this module at the end of ``import verl`` in every process: the driver, the
TaskRunner, each worker, the vLLM server and its engine process. Whatever verl-oel registers
(platform, engines, losses, agent loops, reward managers) is therefore visible everywhere.
verl swallows plugin import errors into a debug log, so ``tests/platform`` checks that this
module actually loaded, in the driver and inside Ray workers.
"""

from importlib import import_module

from verl_oel.agent_loop import register_agent_loops
from verl_oel.platform import cpu_platform_selected
from verl_oel.platform.import_hooks import when_imported

if cpu_platform_selected():
    from verl_oel.platform.activate import activate_cpu_platform

    activate_cpu_platform()

# The game agent loops register themselves in verl's agent-loop registry; importing them only
# when verl imports that registry keeps the plugin cheap in processes that never roll out.
when_imported("verl.experimental.agent_loop.agent_loop", register_agent_loops)

# The consolidation trainer registers itself in verl's v1 trainer registry (selected by
# `trainer.v1.trainer_mode: oel_consolidation`), and so does the OEL loop trainer (`oel`), when verl
# imports that registry.
when_imported("verl.trainer.ppo.v1", lambda _: import_module("verl_oel.oel.trainer"))

LOADED = True
