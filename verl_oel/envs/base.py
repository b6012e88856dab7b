"""The one small interface every text game implements, and the registry that names the games.

OEL plays each game turn by turn: the model sees a fresh user message holding the game log so far,
replies with free text (often reasoning first), and the game itself decides which action that reply
means. Parsing lives in the game because each game has its own answer format (a command line for
TextWorld, the last bracketed move for the grid games), and the rollout code must not know it.

Nothing here knows of verl or torch: the agent loop adapts these games, not the other way round.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar, TypeVar

MAX_REASON_BYTES = 128
"""The longest outcome reason a game may give, in UTF-8 bytes: the extraction prompt shows it, and the
launch check's bound on that prompt's length (``verl_oel/oel/prompt_bounds.py``) counts on it."""


@dataclass(frozen=True)
class Outcome:
    """How a finished game ended; `reason` is short and stable so it can be logged and counted."""

    won: bool
    reason: str

    def __post_init__(self) -> None:
        size = len(self.reason.encode("utf-8"))
        if size > MAX_REASON_BYTES:
            raise ValueError(
                f"an outcome reason of {size} bytes (at most {MAX_REASON_BYTES}): {self.reason[:80]!r}..."
            )


@dataclass(frozen=True)
class StepResult:
    """What one reply did.

    `action` is what the game understood from the reply (None when it found none); `invalid` marks a
    reply that was unparseable or whose action the game rejected, so invalid turns can be counted.
    `outcome` is set exactly when `done` is.
    """

    observation: str
    reward: float
    done: bool
    action: str | None
    invalid: bool
    outcome: Outcome | None = None


@dataclass(frozen=True)
class Turn:
    """One played turn as the game log keeps it: the action and the game's answer, not the reasoning."""

    action: str | None
    observation: str


@dataclass(frozen=True)
class GameSettings:
    """Settings every game has. Each family subclasses this (frozen) and may change the defaults."""

    max_turns: int = 50

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be at least 1, got {self.max_turns}")


_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.DOTALL)


def strip_thinking(reply: str) -> str:
    """The part of a reply that is the answer, without `<think>...</think>` reasoning.

    A lone `</think>` means the opening tag was in the prompt (some chat templates put it there), so
    only what follows counts; a lone `<think>` means the reply was cut off while thinking, so nothing
    after it is an answer.
    """
    answer = _THINK_BLOCK.sub("", reply)
    if "</think>" in answer:
        answer = answer.rsplit("</think>", 1)[1]
    return answer.split("<think>", 1)[0]


def render_turn_prompt(
    first_observation: str, turns: Sequence[Turn], max_turns: int, footer: str = ""
) -> str:
    """The single user message for the next turn: the game log so far, then the turn count.

    This is the paper's per-turn mode: every turn is a fresh message holding the whole log, and the
    model's earlier reasoning is not carried, only the actions the game understood. `footer` holds
    what is true only now (e.g. TextWorld's admissible commands), so it is not repeated per turn.
    """
    parts = [first_observation.strip()]
    for number, turn in enumerate(turns, start=1):
        action = turn.action if turn.action is not None else "(no action found in the reply)"
        parts.append(f"Turn {number}, your action: {action}\n{turn.observation.strip()}")
    if footer:
        parts.append(footer.strip())
    parts.append(f"Turn {len(turns) + 1} of {max_turns}. Your action?")
    return "\n\n".join(parts)


class TextGame(ABC):
    """A multi-turn text game that reads the model's raw replies.

    The base class owns what every game shares, so every family ends and logs the same way: the turn
    limit (every reply is a turn, invalid ones included), the game log, and refusing to step a game
    that is over. A family implements `instruction`, `_start`, `_play` and `_release`.
    """

    name: ClassVar[str] = ""
    settings_cls: ClassVar[type[GameSettings]] = GameSettings
    generates_games: ClassVar[bool] = False
    """True for a family whose `reset(seed)` first generates the game and caches it on disk (TextWorld
    compiles Inform7, about a second a game). Such a family implements `cached_game_path` and
    `game_file`, so a stage's games can be generated ahead of play, in parallel
    (`verl_oel.envs.game_generation`), instead of one by one inside the rollout."""

    def __init__(self, settings: GameSettings | None = None) -> None:
        self.settings = settings if settings is not None else self.settings_cls()
        self._first_observation: str | None = None
        self._turns: list[Turn] = []
        self._outcome: Outcome | None = None

    @property
    @abstractmethod
    def instruction(self) -> str:
        """What the player is told once (a system message): the answer format, and rules if shown."""

    @property
    def max_turns(self) -> int:
        return self.settings.max_turns

    @property
    def history(self) -> tuple[Turn, ...]:
        return tuple(self._turns)

    @property
    def outcome(self) -> Outcome | None:
        """How the game ended, or None while it is running."""
        return self._outcome

    def cached_game_path(self, seed: int) -> Path:
        """Where the generated game for `seed` is cached, whether it is there yet or not (builds nothing)."""
        raise NotImplementedError(f"{self.name or type(self).__name__} generates no games (generates_games)")

    def game_file(self, seed: int) -> Path:
        """The generated game for `seed` (at `cached_game_path(seed)`), generated and cached if missing."""
        raise NotImplementedError(f"{self.name or type(self).__name__} generates no games (generates_games)")

    def reset(self, seed: int) -> str:
        """Start the game drawn by `seed` (same seed, same game) and return its first observation."""
        self._turns = []
        self._outcome = None
        self._first_observation = self._start(seed)
        return self._first_observation

    def step(self, reply: str) -> StepResult:
        """Play one raw model reply; the game parses the action out of it."""
        self._require_running()
        result = self._play(reply)
        self._turns.append(Turn(result.action, result.observation))
        if not result.done and len(self._turns) >= self.max_turns:
            result = replace(result, done=True, outcome=Outcome(won=False, reason="ran out of turns"))
        self._outcome = result.outcome
        return result

    def turn_prompt(self) -> str:
        """The user message for the next turn (see `render_turn_prompt`)."""
        self._require_running()
        return render_turn_prompt(self._first_observation, self._turns, self.max_turns, self._prompt_footer())

    def close(self) -> None:
        """Release what the game holds (an interpreter, a board); a closed game can be reset again."""
        self._release()
        self._first_observation = None

    @abstractmethod
    def _start(self, seed: int) -> str:
        """Set up the game for `seed` and return the first observation."""

    @abstractmethod
    def _play(self, reply: str) -> StepResult:
        """Parse `reply`, act on it, and report; the base class applies the turn limit."""

    @abstractmethod
    def _release(self) -> None:
        """Free the running game's resources; called by `close` and safe to call when none are held."""

    def next_message(self) -> str:
        """The user message after a turn in conversation mode: only what is new.

        In a growing conversation the earlier turns are already in context, so the message holds
        the game's answer to the last reply, what is true only now (the footer), and the count.
        """
        self._require_running()
        if not self._turns:
            return self.turn_prompt()
        parts = [self._turns[-1].observation.strip(), self._prompt_footer().strip()]
        parts.append(f"Turn {len(self._turns) + 1} of {self.max_turns}. Your action?")
        return "\n\n".join(part for part in parts if part)

    def _prompt_footer(self) -> str:
        return ""

    def _require_running(self) -> None:
        if self._first_observation is None:
            raise RuntimeError(f"{self.name or type(self).__name__}: call reset(seed) before playing")
        if self._outcome is not None:
            raise RuntimeError(f"{self.name or type(self).__name__}: the game is over; call reset(seed)")


GameT = TypeVar("GameT", bound=type[TextGame])

_GAMES: dict[str, type[TextGame]] = {}


def register_game(name: str) -> Callable[[GameT], GameT]:
    """Class decorator that makes a game available to `make_game(name, ...)`, as verl's registries do."""

    def decorator(cls: GameT) -> GameT:
        if name in _GAMES:
            raise ValueError(f"game {name!r} is already registered (by {_GAMES[name].__qualname__})")
        cls.name = name
        _GAMES[name] = cls
        return cls

    return decorator


def list_games() -> list[str]:
    return sorted(_GAMES)


def make_game(name: str, **settings: Any) -> TextGame:
    """A new game of family `name`; `settings` are fields of that family's settings dataclass.

    Wrong names fail here, naming the bad key and the valid ones, so a typo in a recipe fails at start.
    """
    if name not in _GAMES:
        raise ValueError(f"unknown game {name!r}; known games: {', '.join(list_games())}")
    cls = _GAMES[name]
    known = [field.name for field in fields(cls.settings_cls)]
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(
            f"unknown setting(s) {', '.join(unknown)} for game {name!r}; known settings: {', '.join(known)}"
        )
    return cls(cls.settings_cls(**settings))
