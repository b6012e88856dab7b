"""TextWorld 1.7 games, generated in-process from (family, settings, seed) and cached on disk.

Families: the coin collector, treasure hunter and cooking challenges that TextWorld ships, and custom
worlds as `tw-make custom` builds them (rooms, objects, quest length). Generation compiles Inform7
(about a second per game), so each game is built once and kept under a key hashing everything that
shapes it; settings that only change how it is played (turn limit, shown commands) stay out of the key.

The player types commands; TextWorld's parser answers anything, so a command is "invalid" when it is
not among the game's admissible commands at that moment. It is still sent: the game's own reply
("You can't see any such thing.") is the feedback the model learns from.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import textworld
import textworld.challenges

from verl_oel.atomic_io import publish_folder, staged_folder
from verl_oel.envs.base import GameSettings, Outcome, StepResult, TextGame, register_game, strip_thinking

# Bumped when the way games are built here changes, so old cache entries are not reused.
_CACHE_FORMAT = 1

_INFOS = textworld.EnvInfos(admissible_commands=True, won=True, lost=True, extras=["walkthrough"])

# TextWorld replaces Inform's banner with a large ASCII-art title printed before the objective; its
# lines hold only these characters, and no line of game text does.
_BANNER = re.compile(r"\A(?:[ _|\\$/<>]*\n)+")
# Jericho appends the input prompt '>' and the status bar (room, score) after the game's text.
_INPUT_PROMPT = re.compile(r"(?:\A|\n)>[^\n]*\Z")
_RESTART_QUESTION = "Would you like to RESTART, RESTORE a saved game, QUIT or UNDO the last command?"
_COMMAND_PREFIX = re.compile(r"^(?:command|action)\s*:", re.IGNORECASE)
# Quoting, markdown, a '>' prompt, brackets and a full stop around a command; TextWorld's parser
# would read them as part of the command.
_WRAPPING = "`*\"'>[]. !\t"

_NO_COMMAND = "No command was found in your reply."


def default_cache_dir() -> Path:
    """`$VERL_OEL_CACHE/textworld` if that variable is set, else `~/.cache/verl_oel/textworld`."""
    root = os.environ.get("VERL_OEL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "verl_oel") / "textworld"


def cached_game_location(cache_dir: Path, key: str) -> Path:
    """Where the game cached under `key` is (or will be) kept."""
    return cache_dir / key / "game.z8"


def cached_game_file(cache_dir: Path, key: str, build: Callable[[Path], None]) -> Path:
    """The game file cached under `key`, calling `build(path)` to create it when it is missing.

    Safe when several processes ask for the same game at once: each builds into its own staged
    folder and publishes it without replacing, so the first one wins and the others drop their copy
    (identical, since the key fixes the game).
    """
    game_file = cached_game_location(cache_dir, key)
    if game_file.is_file():
        return game_file
    with staged_folder(game_file.parent) as building:
        build(building / game_file.name)
        publish_folder(building, game_file.parent, replace=False)
    return game_file


def parse_command(reply: str) -> str | None:
    """The command in a reply: its last non-empty line outside thinking, lower-cased, or None.

    Models put reasoning first and the command last, sometimes labelled ('Command: ...') or wrapped.
    """
    for line in reversed(strip_thinking(reply).splitlines()):
        command = _COMMAND_PREFIX.sub("", line.strip(_WRAPPING)).strip(_WRAPPING)
        command = " ".join(command.split()).lower()
        if command:
            return command
    return None


def clean_feedback(text: str) -> str:
    """TextWorld's text without the banner, the input prompt, the status bar or the restart question."""
    text = _INPUT_PROMPT.sub("", _BANNER.sub("", text).rstrip()).replace(_RESTART_QUESTION, "")
    lines = [line.strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


@dataclass(frozen=True)
class TextWorldSettings(GameSettings):
    """Settings shared by the TextWorld families; the family's own fields shape the generated game."""

    show_admissible: bool = True
    cache_dir: str | None = None

    # Fields that change how a game is played or stored, not which game is generated.
    _PLAY_ONLY: ClassVar[frozenset[str]] = frozenset({"max_turns", "show_admissible", "cache_dir"})

    def generation_settings(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._PLAY_ONLY}


@dataclass(frozen=True)
class CoinCollectorSettings(TextWorldSettings):
    """Find the coin; the level sets the number of rooms on the way (1-100) and distractors (101-300)."""

    level: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.level <= 300:
            raise ValueError(f"level must be in [1, 300], got {self.level}")


@dataclass(frozen=True)
class TreasureHunterSettings(TextWorldSettings):
    """Fetch one object; levels 1-10 are open rooms, 11-20 add doors and containers, 21-30 locks."""

    level: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.level <= 30:
            raise ValueError(f"level must be in [1, 30], got {self.level}")


@dataclass(frozen=True)
class CookingSettings(TextWorldSettings):
    """The First TextWorld Problem's cooking games, with `tw-make tw-cooking`'s options as fields.

    Unlike tw-make, one ingredient must be fetched by default (`take=1`), so the game is not solved
    by "prepare meal, eat meal" alone.
    """

    recipe: int = 1
    take: int = 1
    go: int = 1
    open: bool = False
    cook: bool = False
    cut: bool = False
    drop: bool = False
    recipe_seed: int = 0
    split: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.recipe < 1:
            raise ValueError(f"recipe must be at least 1, got {self.recipe}")
        if not 0 <= self.take <= self.recipe:
            raise ValueError(f"take must be in [0, recipe={self.recipe}], got {self.take}")
        if self.go not in (1, 6, 9, 12):
            raise ValueError(f"go must be 1, 6, 9 or 12, got {self.go}")
        if self.split not in (None, "train", "valid", "test"):
            raise ValueError(f"split must be None, 'train', 'valid' or 'test', got {self.split!r}")


@dataclass(frozen=True)
class CustomWorldSettings(TextWorldSettings):
    """A world like `tw-make custom --world-size --nb-objects --quest-length` builds."""

    nb_rooms: int = 5
    nb_objects: int = 10
    quest_length: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("nb_rooms", "nb_objects", "quest_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


class TextWorldGame(TextGame):
    """A TextWorld game; the registered name is also the TextWorld challenge it is made by."""

    settings: TextWorldSettings
    generates_games = True

    def __init__(self, settings: GameSettings | None = None) -> None:
        super().__init__(settings)
        self._env: Any = None
        self._admissible: tuple[str, ...] = ()
        self._walkthrough: tuple[str, ...] = ()

    @property
    def instruction(self) -> str:
        text = (
            "You are playing a text adventure game. Read what the game says and act to reach the goal "
            "it gives you. Each turn, end your reply with exactly one game command on its own last line "
            "(for example: go north, open door, take key from table)."
        )
        if self.settings.show_admissible:
            text += " Each turn lists the commands the game accepts at that moment."
        return text

    @property
    def admissible_commands(self) -> tuple[str, ...]:
        """The commands the game accepts now (also when they are not shown to the player)."""
        return self._admissible

    @property
    def walkthrough(self) -> tuple[str, ...]:
        """A winning command sequence from the start of the current game (for tests and sanity checks)."""
        return self._walkthrough

    def cached_game_path(self, seed: int) -> Path:
        """Where the compiled game for `seed` is cached (see `game_file`); nothing is generated."""
        return cached_game_location(*self._cache_entry(seed))

    def game_file(self, seed: int) -> Path:
        """The compiled game for `seed`, generated and cached on first use."""
        cache_dir, key = self._cache_entry(seed)
        return cached_game_file(cache_dir, key, lambda path: self._generate(path, seed))

    def _cache_entry(self, seed: int) -> tuple[Path, str]:
        """The cache folder (`settings.cache_dir`, else `default_cache_dir()`) and `seed`'s key in it."""
        cache_key = json.dumps(
            {
                "family": self.name,
                "settings": self.settings.generation_settings(),
                "seed": seed,
                "textworld": textworld.__version__,
                "format": _CACHE_FORMAT,
            },
            sort_keys=True,
        )
        key = f"{self.name}-{hashlib.sha256(cache_key.encode()).hexdigest()[:16]}"
        cache_dir = Path(self.settings.cache_dir) if self.settings.cache_dir else default_cache_dir()
        return cache_dir, key

    def _release(self) -> None:
        if self._env is not None:
            self._env.close()
            self._env = None

    def _generate(self, path: Path, seed: int) -> None:
        options = textworld.GameOptions()
        options.seeds = seed
        options.path = str(path)
        textworld.generator.compile_game(self._make_game(options), options)

    def _make_game(self, options: textworld.GameOptions) -> textworld.Game:
        _, make, _ = textworld.challenges.CHALLENGES[self.name]
        return make(self.settings.generation_settings(), options)

    def _start(self, seed: int) -> str:
        self._release()
        self._env = textworld.start(str(self.game_file(seed)), request_infos=_INFOS)
        state = self._env.reset()
        self._admissible = tuple(state["admissible_commands"])
        self._walkthrough = tuple(state["extra.walkthrough"])
        return clean_feedback(state.feedback)

    def _play(self, reply: str) -> StepResult:
        command = parse_command(reply)
        if command is None:
            return StepResult(_NO_COMMAND, 0.0, False, None, invalid=True)
        invalid = command not in self._admissible
        state, _, done = self._env.step(command)
        self._admissible = tuple(state["admissible_commands"])
        observation = clean_feedback(state.feedback)
        if state["won"]:
            return StepResult(observation, 1.0, True, command, invalid, Outcome(True, "completed the quest"))
        if done:
            return StepResult(observation, 0.0, True, command, invalid, Outcome(False, "lost the game"))
        return StepResult(observation, 0.0, False, command, invalid)

    def _prompt_footer(self) -> str:
        if not self.settings.show_admissible:
            return ""
        return "Admissible commands: " + ", ".join(self._admissible)


@register_game("tw-coin_collector")
class CoinCollector(TextWorldGame):
    settings_cls = CoinCollectorSettings


@register_game("tw-treasure_hunter")
class TreasureHunter(TextWorldGame):
    settings_cls = TreasureHunterSettings


@register_game("tw-cooking")
class Cooking(TextWorldGame):
    settings_cls = CookingSettings


@register_game("tw-custom")
class CustomWorld(TextWorldGame):
    settings_cls = CustomWorldSettings
    settings: CustomWorldSettings

    def _make_game(self, options: textworld.GameOptions) -> textworld.Game:
        options.nb_rooms = self.settings.nb_rooms
        options.nb_objects = self.settings.nb_objects
        options.quest_length = self.settings.quest_length
        return textworld.generator.make_game(options)
