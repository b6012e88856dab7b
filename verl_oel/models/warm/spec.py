"""What the warm build is: its version, its knowledge phrasings and its two supervised phases' settings."""

from __future__ import annotations

import dataclasses
from typing import Any

from verl_oel.envs.hidden_rule import (
    WARM_FAMILIES,
)
from verl_oel.models.build_folder import (
    TinyModelSpec,
)

# Bump when the warm-up's data or training changes for the same settings, so cached builds are redone.
WARM_VERSION = 5
GAME = "hidden-rule"
CORRIDOR_GAME = "hidden-rule-corridor"
BUILD_THREADS = 2

# Knowledge items: the rule as the extractor writes it, other phrasings of it, and unrelated items.
RULE_PHRASINGS = (
    "[{sign}] doors lead out.",
    "[{sign}] doors lead out",
    "[{sign}] doors lead",
    "[{sign}] doors",
    "Open the door marked [{sign}].",
    "Only [{sign}] doors lead out; the others are dead ends.",
    "The plaque says [{sign}] doors lead out.",
)
OTHER_ITEMS = (
    "Read every door before you choose.",
    "Reply with one bracketed word only.",
    "A dead end ends the game at once.",
    "The colour of a door does not matter.",
    "Each room has exactly one exit.",
    "Think briefly, then act.",
    "Do not repeat a door that failed.",
    "Signs are written in square brackets.",
)


def rule_item(sign: str) -> str:
    """The item the warmed extractor writes for a family (without the marker)."""
    return RULE_PHRASINGS[0].format(sign=sign)


@dataclasses.dataclass(frozen=True)
class WarmModelSpec:
    """The warm model's shape (the tiny model's by default) and its two supervised phases.

    Phase 1 (``copy_steps``) trains on SHORT synthetic prompts built from the same lines the real
    prompts hold around a sign (door lines, knowledge items, the record's reply and result line), over
    ``copy_words``: cheap steps in which the copying circuit forms. Phase 2
    (``steps``) trains on exactly the pipeline's prompts of the WARM families, still mixed with some
    synthetic examples (``copy_batch_late``); in ``relabel_share`` of its examples every sign is renamed
    to a random word, so that copying, not remembering the 26 warm signs, is what lowers the loss.
    """

    model: TinyModelSpec = TinyModelSpec()
    extra_copy_words: int = 34
    copy_steps: int = 1000
    copy_batch: int = 36
    copy_lr: float = 5e-3
    # 300, not 150: at 150 the model's ability to act on a held-out rule hung on last float bits (seed 0
    # with MKL's COMPATIBLE kernels followed the [ship] rule in 72.5 % of sampled games, bar 80 %; other
    # CPUs' kernels lost other skills); at 300, 95 % (100 % greedy) and every behaviour test with margin,
    # also with MKL's automatic kernels in this phase (2026-12-02).
    steps: int = 300
    game_batch: int = 8
    extraction_batch: int = 4
    copy_batch_late: int = 12
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Share of game examples WITH the rule in the knowledge (the rest: no knowledge, the first door).
    knowledge_share: float = 0.7
    # Share of pipeline-prompt examples whose signs are renamed to random words (forces copying).
    relabel_share: float = 0.8
    door_counts: tuple[int, ...] = (3, 4, 4, 5)
    families: tuple[str, ...] = WARM_FAMILIES
    # Share of phase 2's game and extraction examples drawn from the multi-turn corridor
    # (``hidden-rule-corridor``, warm families only): a turn prompt at a random point of a game (the
    # game log so far), or a whole corridor game's record. 0, the default build, draws none (and no
    # random number for it: the default build's bytes and cache key are those of the build without it).
    # Measured at 0.5 (seed 0, 2026-12-07): worse on every corridor skill than the default build (README,
    # "A multi-turn game"); kept as the lever for the warm build the corridor still needs.
    corridor_share: float = 0.0
    corridor_door_counts: tuple[int, ...] = (4, 5)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> WarmModelSpec:
        """The inverse of ``dataclasses.asdict`` (JSON's lists back to tuples)."""
        return cls(
            **{
                **values,
                "model": TinyModelSpec(**values["model"]),
                "door_counts": tuple(values["door_counts"]),
                "corridor_door_counts": tuple(values.get("corridor_door_counts", cls.corridor_door_counts)),
                "families": tuple(values["families"]),
            }
        )


def spec_settings(spec: WarmModelSpec) -> dict[str, Any]:
    """The spec as the build's cache key records it: ``dataclasses.asdict``, without the corridor's fields
    while ``corridor_share`` is 0 (such a build draws no corridor example, so it is the build from before
    those fields existed, and keeps that build's key and cached folder)."""
    settings = dataclasses.asdict(spec)
    if spec.corridor_share == 0:
        del settings["corridor_share"], settings["corridor_door_counts"]
    return settings
