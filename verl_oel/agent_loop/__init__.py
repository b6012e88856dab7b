"""verl agent loops that play the text games of :mod:`verl_oel.envs` through verl's rollout server.

Each loop registers itself in verl's agent-loop registry when imported, and the plugin imports them all
when verl imports that registry (see ``verl_oel/plugin.py``), so rows with ``agent_name: oel_game``,
``oel_extract_stream``, ``oel_replay`` or ``oel_ifbench`` are played by these loops in every agent-loop
worker.
"""

# Imported before any loop module runs: importing it loads verl and our plugin, whose registration
# imports every loop; were a loop module the first to import it, the registration would re-enter that
# half-imported module (``import verl_oel.agent_loop.game_loop`` as a process's first import failed so).
import verl.experimental.agent_loop.agent_loop  # noqa: F401
