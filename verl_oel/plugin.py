"""Entry point of verl's ``verl.plugins`` group.

verl imports this module at the end of ``import verl`` in every process: the driver, the
TaskRunner, each worker, the vLLM server and its engine process. Whatever verl-oel registers
(platform, engines, losses, agent loops, reward managers) is therefore visible everywhere.
verl swallows plugin import errors into a debug log, so ``tests/platform`` checks that this
module actually loaded, in the driver and inside Ray workers.
"""

from importlib import import_module
from types import ModuleType

from verl_oel.platform import cpu_platform_selected
from verl_oel.platform.import_hooks import is_importing, when_imported

if cpu_platform_selected():
    from verl_oel.platform.activate import activate_cpu_platform

    activate_cpu_platform()


def _register_agent_loops(_registry: ModuleType) -> None:
    """The game agent loops register themselves in verl's agent-loop registry when imported."""
    import_module("verl_oel.agent_loop.game_loop")
    import_module("verl_oel.agent_loop.extraction_loop")
    import_module("verl_oel.agent_loop.replay_loop")
    import_module("verl_oel.agent_loop.ifbench_loop")


# Importing the loops only when verl imports that registry keeps the plugin cheap in processes that
# never roll out.
when_imported("verl.experimental.agent_loop.agent_loop", _register_agent_loops)


def _register_trainers(_registry: ModuleType) -> None:
    """The consolidation trainer (``trainer.v1.trainer_mode: oel_consolidation``) and the OEL loop trainer
    (``oel``), its subclass, register themselves in verl's v1 trainer registry when imported.

    When the consolidation trainer's own first import of verl's v1 package is what runs this hook, its
    subclass cannot be imported before it finishes; it registers itself, and the loop trainer registers
    when it is imported (verl's processes import the v1 package before either, so get both)."""
    if not is_importing("verl_oel.distill.trainer"):
        import_module("verl_oel.oel.trainer")


when_imported("verl.trainer.ppo.v1", _register_trainers)

LOADED = True
