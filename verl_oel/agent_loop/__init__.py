"""verl agent loops that play the text games of :mod:`verl_oel.envs` through verl's rollout server.

:func:`register_agent_loops` runs when verl imports its agent-loop registry (see
``verl_oel/plugin.py``), so rows with ``agent_name: oel_game``, ``oel_extract_stream`` or ``oel_replay`` are
played by these loops in every agent-loop worker.
"""

from importlib import import_module
from types import ModuleType


def register_agent_loops(_registry: ModuleType | None = None) -> None:
    import_module("verl_oel.agent_loop.game_loop")
    import_module("verl_oel.agent_loop.extraction_loop")
    import_module("verl_oel.agent_loop.replay_loop")
