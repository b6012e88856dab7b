"""What the warm build is: its version, its knowledge phrasings and its three supervised phases' settings."""

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
    """The warm model's shape (the tiny model's by default) and its three supervised phases.

    Phase 1 (``copy_steps``) trains on SHORT synthetic prompts built from the same lines the real
    prompts hold around a sign (door lines, knowledge items, the record's reply and result line), over
    ``copy_words``: cheap steps in which the copying circuit forms. Phase 2
    (``steps``) trains on exactly the pipeline's prompts of the WARM families, still mixed with some
    synthetic examples (``copy_batch_late``); in ``relabel_share`` of its examples every sign is renamed
    to a random word, so that copying, not remembering the 26 warm signs, is what lowers the loss.
    Phase 3 (``log_copy_steps``, then ``corridor_steps``) adds the multi-turn corridor of the warm
    families, whose turn prompts hold a game log (``corridor_data.py``).
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
    # Phase 3, the multi-turn corridor (``corridor_data.py``), after phases 1 and 2 (drawing half of phase
    # 2's examples from the corridor instead was measured worse on every corridor skill, README "A
    # multi-turn game"): ``log_copy_steps`` of short copies with a game log between the knowledge and the
    # room, then ``corridor_steps`` of corridor turn prompts and game records mixed with phase 2's examples.
    # Off (0 steps) in the default build, whose bytes and cache key stay those of the build without it
    # (``spec_settings``); on in ``CORRIDOR_SPEC``, the corridor recipe's build (``warm-corridor``).
    log_copy_steps: int = 0
    log_copy_batch: int = 24
    log_copy_lr: float = 2e-3
    corridor_steps: int = 0
    corridor_lr: float = 1e-3
    corridor_warmup_steps: int = 10
    corridor_batch: int = 8
    corridor_extraction_batch: int = 4
    log_copy_batch_late: int = 4
    # Share of corridor turn prompts WITH the rule in the knowledge (the rest: the room's first door).
    corridor_knowledge_share: float = 0.6
    corridor_door_counts: tuple[int, ...] = (4, 5)
    # Share of corridor records whose player names one sign every turn and loses in the first room: what
    # the warmed model's own games without the rule look like (``corridor_extraction_example``).
    corridor_stubborn_share: float = 0.5

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


PHASE_3_FIELDS = (
    "log_copy_steps",
    "log_copy_batch",
    "log_copy_lr",
    "corridor_steps",
    "corridor_lr",
    "corridor_warmup_steps",
    "corridor_batch",
    "corridor_extraction_batch",
    "log_copy_batch_late",
    "corridor_knowledge_share",
    "corridor_door_counts",
    "corridor_stubborn_share",
)

# The corridor recipe's warm build (``verl-oel build-model warm-corridor``): the default build's two
# phases (its saved weights: ``build_warm_model``'s ``warm_dir``), then phase 3 (measured: README, "A
# multi-turn game"), with 8 corridor records a step, not 4: what the extractor must learn there is the
# model's own lost games (``corridor_stubborn_share``), and a fine-tune from the build with 4 reached 66 %
# on them after 100 steps, 97 % with 8 after 200.
CORRIDOR_SPEC = WarmModelSpec(log_copy_steps=200, corridor_steps=200, corridor_extraction_batch=8)


def has_phase_3(spec: WarmModelSpec) -> bool:
    return spec.log_copy_steps > 0 or spec.corridor_steps > 0


def spec_settings(spec: WarmModelSpec) -> dict[str, Any]:
    """The spec as the build's cache key records it: ``dataclasses.asdict``, without phase 3's fields when
    the build has no phase 3 (it draws no example and no random number for it, so it is the build from
    before phase 3 existed, and keeps that build's key and cached folder)."""
    settings = dataclasses.asdict(spec)
    if not has_phase_3(spec):
        for name in PHASE_3_FIELDS:
            del settings[name]
    return settings
