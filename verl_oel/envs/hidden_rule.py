"""Hidden-rule doors: a game family whose one rule is never shown before acting.

A room has a few doors, each painted a colour and marked with a sign (``a red door marked [ship]``).
Every game of a FAMILY follows one hidden rule: the door marked with the family's sign leads out, and
exactly one door in each game carries it. The rule is never in the instruction or the observation,
so a player without it is at chance (1 / number of doors). After acting, the game always states the
rule (a plaque, in the observation and in the outcome reason), on a win or a loss alike, so every
trajectory lets an extractor write the rule down as an experience item.

The action is the sign of a door in brackets, and, as in the grid games, only the LAST bracketed
word of the answer (after thinking) counts. A wrong door ends the game; a reply naming no door of
the room is an invalid action, which only uses up a turn while turns remain.

The family split is public: ``WARM_FAMILIES`` are the rules a test model may be trained on,
``HELD_OUT_FAMILIES`` are never used for that; their signs still appear in warm games as ordinary
(dead-end) doors, so their tokens are familiar. Every sign tokenizes as a single token inside
brackets in the tiny model's Qwen-prefix vocabulary, which keeps the skills a tiny model must
learn (copy a sign) one token wide.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from verl_oel.envs.base import GameSettings, Outcome, StepResult, TextGame, register_game, strip_thinking

WARM_FAMILIES: tuple[str, ...] = (
    "ball",
    "bed",
    "book",
    "box",
    "car",
    "card",
    "cat",
    "coin",
    "house",
    "ice",
    "iron",
    "lock",
    "map",
    "pen",
    "table",
    "wood",
    "light",
    "pond",
    "window",
    "board",
    "root",
    "net",
    "web",
    "block",
    "bar",
    "band",
)
HELD_OUT_FAMILIES: tuple[str, ...] = ("ship", "river", "arrow", "land")
FAMILIES: tuple[str, ...] = WARM_FAMILIES + HELD_OUT_FAMILIES
# Every sign a door can carry: each family's sign is an ordinary door in the other families' games.
SIGNS: tuple[str, ...] = FAMILIES
COLOURS: tuple[str, ...] = ("red", "blue", "green", "white", "black", "gold")

_BRACKETED = re.compile(r"\[\s*([A-Za-z]+)\s*\]")

WIN_REASON = "found the exit"
DEAD_END_REASON = "opened a dead end"
NO_DOOR_REASON = "opened no door"


def rule_text(family: str) -> str:
    """The family's rule as the game states it after acting (and as an item may state it)."""
    return f"[{family}] doors lead out"


def parse_last_sign(reply: str) -> str | None:
    """The last bracketed word in the answer part of ``reply``, lower-cased, or None."""
    words = _BRACKETED.findall(strip_thinking(reply))
    return words[-1].lower() if words else None


@dataclass(frozen=True)
class HiddenRuleSettings(GameSettings):
    """One family (its hidden sign), the number of doors, and 1 turn by default.

    ``max_turns`` above 1 only gives retries after invalid replies: any opened door ends the game.
    """

    max_turns: int = 1
    family: str = "book"
    num_doors: int = 4

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if not 2 <= self.num_doors <= min(len(SIGNS), len(COLOURS) * 4):
            raise ValueError(
                f"num_doors must be in [2, {min(len(SIGNS), len(COLOURS) * 4)}], got {self.num_doors}"
            )


@register_game("hidden-rule")
class HiddenRuleGame(TextGame):
    """Doors marked with signs; the family's sign leads out, and nothing says so before acting."""

    settings_cls = HiddenRuleSettings
    settings: HiddenRuleSettings

    def __init__(self, settings: GameSettings | None = None) -> None:
        super().__init__(settings)
        self._doors: list[tuple[str, str]] = []  # (colour, sign) in the order shown

    @property
    def instruction(self) -> str:
        return (
            "You are playing Doors. Each door is marked with a sign. Open one door by writing its sign "
            "in brackets, e.g. [sign]; only the last bracketed word of your reply counts. One door leads "
            "out; any other door is a dead end."
        )

    @property
    def doors(self) -> tuple[tuple[str, str], ...]:
        """The running game's doors as (colour, sign), in the order the observation lists them."""
        return tuple(self._doors)

    @property
    def exit_sign(self) -> str:
        return self.settings.family

    def _start(self, seed: int) -> str:
        rng = random.Random(f"hidden-rule/{self.settings.family}/{self.settings.num_doors}/{seed}")
        others = rng.sample(
            [sign for sign in SIGNS if sign != self.settings.family], self.settings.num_doors - 1
        )
        signs = [self.settings.family, *others]
        rng.shuffle(signs)
        colours = [rng.choice(COLOURS) for _ in signs]
        self._doors = list(zip(colours, signs, strict=True))
        lines = "\n".join(f"- a {colour} door marked [{sign}]" for colour, sign in self._doors)
        return (
            f"You are in a room with {len(self._doors)} doors:\n{lines}\n"
            "One of them leads out; every other door is a dead end."
        )

    def _play(self, reply: str) -> StepResult:
        sign = parse_last_sign(reply)
        plaque = f"A plaque on the wall says {rule_text(self.settings.family)}."
        if sign is None or sign not in {door_sign for _, door_sign in self._doors}:
            action = None if sign is None else f"[{sign}]"
            if len(self._turns) + 1 < self.max_turns:
                observation = (
                    "No door here is marked like that. Write the sign of one of the doors in brackets."
                )
                return StepResult(observation, 0.0, False, action, True)
            observation = f"You opened no door, and the game is over. {plaque}"
            reason = f"{NO_DOOR_REASON}; the plaque says {rule_text(self.settings.family)}"
            return StepResult(observation, 0.0, True, action, True, Outcome(won=False, reason=reason))
        action = f"[{sign}]"
        if sign == self.settings.family:
            observation = f"You open the door marked [{sign}] and walk out. You win! {plaque}"
            reason = f"{WIN_REASON}; the plaque says {rule_text(self.settings.family)}"
            return StepResult(observation, 1.0, True, action, False, Outcome(won=True, reason=reason))
        observation = f"You open the door marked [{sign}]: a dead end, and the game is over. {plaque}"
        reason = f"{DEAD_END_REASON}; the plaque says {rule_text(self.settings.family)}"
        return StepResult(observation, 0.0, True, action, False, Outcome(won=False, reason=reason))

    def _release(self) -> None:
        self._doors = []
