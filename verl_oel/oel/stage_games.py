"""The games of every unfinished stage of a run, generated ahead in worker processes while stages run.

A TextWorld game costs about a second of Inform7 to generate (``verl_oel.envs.game_generation``); the
TextWorld GPU recipe plays ~6,800 new games a round, which the rollout would otherwise generate one by
one while the GPUs idle. When the trainer starts, every unfinished stage's games are queued on one pool
of ``oel.game_generation_workers`` processes, in the order the stages run; the pool works through the
queue while the stages run, so a stage's games are usually ready long before it starts. Each stage
waits only for its own games, and its summary says what that took.

Games are deterministic from (family, settings, seed), and a stage's games are read from the rows it
will write (``stage_episodes``), so a resumed run queues what its remaining stages play and plays
exactly the games an uninterrupted run would. Nothing is queued for families whose games need no
generation (the grid games), and no process is started then.
"""

from __future__ import annotations

from verl_oel.envs.game_generation import GameGenerator, GenerationBatch
from verl_oel.oel.config import OELConfig
from verl_oel.oel.run_state import NextStage, RunState
from verl_oel.oel.stage_data import stage_episodes


class StageGames:
    """Queue every unfinished stage's games now; `wait_for` a stage's when it starts. Use as a context
    manager, so the pool stops with the trainer (queued games are dropped, running ones finish)."""

    def __init__(self, loop: OELConfig, state: RunState) -> None:
        workers = loop.generation_workers
        self._generator = GameGenerator(workers) if workers > 0 else None
        self._batches: dict[NextStage, GenerationBatch] = {}
        if self._generator is None:
            return
        try:
            for step in state.plan():
                if state.is_done(step.round, step.stage):
                    continue
                batch = self._generator.submit(stage_episodes(loop, state.layout, step.round, step.stage))
                if len(batch):
                    self._batches[step] = batch
        except BaseException:
            self.close()
            raise

    def wait_for(self, step: NextStage) -> dict[str, int | float]:
        """Block until the stage's games are on disk; the figures for its summary (``games_generated``,
        ``games_cached``, ``game_generation_s``, ``game_generation_wait_s``), none for a stage that plays
        no generated game or when ``oel.game_generation_workers`` is 0. A game that failed to generate
        raises ``GameGenerationError`` naming it."""
        batch = self._batches.pop(step, None)
        if self._generator is None or batch is None:
            return {}
        return self._generator.wait(batch).summary()

    def close(self) -> None:
        if self._generator is not None:
            self._generator.close()

    def __enter__(self) -> StageGames:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
