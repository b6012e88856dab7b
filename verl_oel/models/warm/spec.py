"""What the warm build is: its version, its knowledge phrasings and its supervised phases' settings."""

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
WARM_VERSION = 6
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
    """The warm model's shape (the tiny model's by default) and its supervised phases, in one build that
    serves the one-turn doors and the multi-turn corridor alike.

    Phase 1 (``copy_steps``) trains on SHORT synthetic prompts built from the same lines the real
    prompts hold around a sign (door lines, knowledge items, the record's reply and result line), over
    ``copy_words``: cheap steps in which the copying circuit forms. Phase 2
    (``steps``) trains on exactly the pipeline's prompts of the WARM families, still mixed with some
    synthetic examples (``copy_batch_late``); in ``relabel_share`` of its examples every sign is renamed
    to a random word, so that copying, not remembering the 26 warm signs, is what lowers the loss.
    Phase 3 (``log_copy_steps``, then ``corridor_steps``) adds the multi-turn corridor of the warm
    families, whose turn prompts hold a game log (``corridor_data.py``), still mixed with phase 2's
    one-turn examples.

    The step counts are the one build's of both games, ~10 minutes on 2 cores (README "The warm build"):
    phase 1 at 36 examples a step for 700 steps, whose copying forms by step ~500 (a smaller batch formed it
    later or not at all, by the float bits of the run: 24 a step ended phase 1 at 0.25, 0.50 and 0.64 loss
    per token of the knowledge copies in three runs, and the last build lost its skills); phase 2 at 100
    steps, because phase 3b goes on training the same one-turn examples for 200 more.
    """

    model: TinyModelSpec = TinyModelSpec()
    extra_copy_words: int = 34
    copy_steps: int = 700
    copy_batch: int = 36
    copy_lr: float = 5e-3
    # One-turn pipeline prompts: 100 steps here and 200 more inside phase 3b (at 150 steps with no phase 3,
    # the skills hung on last float bits, 2026-12-02).
    steps: int = 100
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
    # 2's examples from the corridor instead was measured worse on every corridor skill): ``log_copy_steps``
    # of short copies with a game log between the knowledge and the room, then ``corridor_steps`` of
    # corridor turn prompts and game records mixed with phase 2's examples. 8 corridor records a step, not
    # 4: what the extractor must learn there is the model's own lost games (``corridor_stubborn_share``);
    # a fine-tune with 4 reached 66 % on them after 100 steps, 97 % with 8 after 200.
    log_copy_steps: int = 80
    log_copy_batch: int = 24
    log_copy_lr: float = 2e-3
    corridor_steps: int = 200
    corridor_lr: float = 1e-3
    corridor_warmup_steps: int = 10
    corridor_batch: int = 8
    corridor_extraction_batch: int = 8
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
                "corridor_door_counts": tuple(values["corridor_door_counts"]),
                "families": tuple(values["families"]),
            }
        )
