"""Hidden-rule corridor: the doors game made multi-turn, so knowing the rule shortens play.

A corridor of ``num_rooms`` rooms, each with a few doors marked with signs (the ``hidden-rule``
family's rooms, signs and colours). Every game of a FAMILY follows the family's one hidden rule: in
every room, exactly one door carries the family's sign and leads on to the next room (out of the last
one: a win). Any other door is LOCKED: the player stays in the room and has spent a turn. So a player
without the rule wins slowly or runs out of turns, and a player with it walks straight through, in
``num_rooms`` turns. As in ``hidden-rule``, the rule is never shown before the game ends, and it is
always stated at the end (a plaque, in the last observation and in the outcome reason), on a win or a
loss, so every trajectory lets an extractor write it down.

Sizes: with the defaults (3 rooms of 5 doors, 7 turns), a player who picks a door of the room uniformly
at random each turn wins 16 % of games in 6.8 turns on average (2.3 times the minimum of 3), and one that
never retries a locked door wins 29 % in 6.7 turns (3,000 seeds; ``tests/envs/test_hidden_rule_corridor.py``
measures both on 1,000). The action is a sign in brackets, and only the last bracketed word of the answer
counts; a reply naming no door of the current room is an invalid action and spends a turn.

Each turn prompt holds the game log (every action and the game's answer), then the room the player is in,
listed once (the prompt's footer): the doors a reply chooses from are the last ones the prompt lists. With
each answer listing its room instead, the room the player was in stood somewhere in the log, and the warmed
tiny model stopped following the rule in its prompt after the first room (README, "A multi-turn game").
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from verl_oel.envs.base import GameSettings, Outcome, StepResult, TextGame, register_game
from verl_oel.envs.hidden_rule import COLOURS, FAMILIES, SIGNS, parse_last_sign, rule_text

WIN_REASON = "walked out of the last room"
OUT_OF_TURNS_REASON = "ran out of turns"


@dataclass(frozen=True)
class HiddenRuleCorridorSettings(GameSettings):
    """One family (its hidden sign), the corridor's rooms and doors per room, and the turn limit."""

    max_turns: int = 7
    family: str = "book"
    num_rooms: int = 3
    num_doors: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {', '.join(FAMILIES)}; got {self.family!r}")
        if not 2 <= self.num_doors <= len(SIGNS):
            raise ValueError(f"num_doors must be in [2, {len(SIGNS)}], got {self.num_doors}")
        if self.num_rooms < 1:
            raise ValueError(f"num_rooms must be at least 1, got {self.num_rooms}")
        if self.max_turns < self.num_rooms:
            raise ValueError(
                f"max_turns ({self.max_turns}) must be at least num_rooms ({self.num_rooms}): "
                "no player could win"
            )


def room_text(number: int, rooms: int, doors: list[tuple[str, str]]) -> str:
    """A room as the player sees it: its place in the corridor, then one line per door."""
    lines = "\n".join(f"- a {colour} door marked [{sign}]" for colour, sign in doors)
    return f"You are in room {number} of {rooms}, with {len(doors)} doors:\n{lines}"


@register_game("hidden-rule-corridor")
class HiddenRuleCorridorGame(TextGame):
    """Rooms in a row; in each, the family's sign opens the way on, every other door is locked."""

    settings_cls = HiddenRuleCorridorSettings
    settings: HiddenRuleCorridorSettings

    def __init__(self, settings: GameSettings | None = None) -> None:
        super().__init__(settings)
        self._rooms: list[list[tuple[str, str]]] = []  # each room's (colour, sign), in the order shown
        self._room = 0  # the index of the room the player is in

    @property
    def instruction(self) -> str:
        return (
            "You are playing Corridor. You walk through a row of rooms; each door is marked with a sign. "
            "Open one door a turn by writing its sign in brackets, e.g. [sign]; only the last bracketed "
            "word of your reply counts. In each room one door leads on to the next room; every other "
            "door is locked and costs you a turn. Leave the last room before your turns run out."
        )

    @property
    def exit_sign(self) -> str:
        return self.settings.family

    @property
    def room_index(self) -> int:
        """The room the player is in (0-based); ``num_rooms`` once the game is won."""
        return self._room

    @property
    def doors(self) -> tuple[tuple[str, str], ...]:
        """The current room's doors as (colour, sign), in the order the observation lists them."""
        return tuple(self._rooms[self._room]) if self._room < len(self._rooms) else ()

    def _start(self, seed: int) -> str:
        settings = self.settings
        rng = random.Random(
            f"hidden-rule-corridor/{settings.family}/{settings.num_rooms}/{settings.num_doors}/{seed}"
        )
        others = [sign for sign in SIGNS if sign != settings.family]
        self._rooms = []
        for _ in range(settings.num_rooms):
            signs = [settings.family, *rng.sample(others, settings.num_doors - 1)]
            rng.shuffle(signs)
            self._rooms.append([(rng.choice(COLOURS), sign) for sign in signs])
        self._room = 0
        return f"You stand at the start of a corridor of {settings.num_rooms} rooms."

    def _play(self, reply: str) -> StepResult:
        sign = parse_last_sign(reply)
        turns_left = self.max_turns - len(self._turns) - 1
        if sign is None or sign not in {door_sign for _, door_sign in self._rooms[self._room]}:
            action = None if sign is None else f"[{sign}]"
            answer = "No door in this room is marked like that; you lose the turn."
            return self._answer(answer, action, invalid=True, turns_left=turns_left)
        action = f"[{sign}]"
        if sign != self.settings.family:
            answer = f"The door marked [{sign}] is locked; you stay in room {self._room + 1}."
            return self._answer(answer, action, invalid=False, turns_left=turns_left)
        self._room += 1
        if self._room == self.settings.num_rooms:
            observation = (
                f"You open the door marked [{sign}] and walk out of the last room. You win! {self._plaque()}"
            )
            reason = f"{WIN_REASON}; the plaque says {rule_text(self.settings.family)}"
            return StepResult(observation, 1.0, True, action, False, Outcome(won=True, reason=reason))
        answer = f"You open the door marked [{sign}] and walk on into room {self._room + 1}."
        return self._answer(answer, action, invalid=False, turns_left=turns_left)

    def _answer(self, text: str, action: str | None, invalid: bool, turns_left: int) -> StepResult:
        """A turn that did not win: the game goes on, or, with no turn left, ends with the plaque."""
        if turns_left > 0:
            return StepResult(text, 0.0, False, action, invalid)
        observation = f"{text} You have no turns left, and the game is over. {self._plaque()}"
        reason = f"{OUT_OF_TURNS_REASON}; the plaque says {rule_text(self.settings.family)}"
        return StepResult(observation, 0.0, True, action, invalid, Outcome(won=False, reason=reason))

    def _prompt_footer(self) -> str:
        """The room the player is in, shown once, after the log: the log holds what happened (each
        action and its result), the footer what is true now, so the only doors a turn prompt lists are
        the ones the reply chooses from."""
        return room_text(self._room + 1, self.settings.num_rooms, self._rooms[self._room])

    def _plaque(self) -> str:
        return f"A plaque on the wall says {rule_text(self.settings.family)}."

    def _release(self) -> None:
        self._rooms = []
        self._room = 0
