"""The prompt that turns one played game into new experience items (OEL step 1)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from verl_oel.knowledge.parsing import DEFAULT_MARKER, check_marker


@dataclass(frozen=True)
class GameTurn:
    """What the game showed the model, and the model's whole reply to it."""

    observation: str
    reply: str


@dataclass(frozen=True)
class GameRecord:
    """A finished game as the extractor reads it: kept separate from the environment's own
    types so that knowledge stays free of environment (and verl) imports."""

    instructions: str
    turns: Sequence[GameTurn]
    won: bool
    reason: str


def build_extraction_messages(
    game: GameRecord,
    knowledge: str,
    *,
    show_knowledge: bool = True,
    marker: str = DEFAULT_MARKER,
) -> list[dict[str, str]]:
    """Chat messages asking the model that played ``game`` to write 1-2 new items.

    ``knowledge`` is the stream's rendered text so far (empty before the first item). With
    ``show_knowledge=False`` (the paper's ablation) it is left out of the prompt, and so is
    the request not to repeat it; duplicates are then caught only by the parser.
    One user message and no system message, so that any chat template accepts it.
    """
    check_marker(marker)
    sections = [
        "You have just played a text game. Below are the game's instructions, a record of every "
        "turn (what the game showed you and what you replied) and how the game ended. Study it "
        "and write down lessons that will help you win the next game of this kind, which will "
        "be played on a different map.",
        f"## Game instructions\n\n{game.instructions.strip()}",
        _game_record(game),
    ]
    rules = [
        "Each item states a general rule of the game or a winning strategy that holds on any "
        "map or layout. Do not record facts about this particular map, such as where things "
        "were or which route you took.",
        "Keep each item short and actionable.",
    ]
    if show_knowledge:
        sections.append(f"## Experience so far\n\n{knowledge.strip() or '(nothing recorded yet)'}")
        rules.append(
            'Write only what is new: do not repeat or reword an item listed under "Experience so far".'
        )
    rules.append(f'Only lines that start with "{marker}" are kept; everything else you write is ignored.')
    sections.append(
        "## Your task\n\n"
        f'Write 1 or 2 new experience items, each on its own line starting with "{marker}".\n'
        + "\n".join(f"- {rule}" for rule in rules)
    )
    return [{"role": "user", "content": "\n\n".join(sections)}]


def _game_record(game: GameRecord) -> str:
    parts = ["## Game record"]
    for number, turn in enumerate(game.turns, start=1):
        parts.append(
            f"### Turn {number}\n\nThe game showed:\n{turn.observation.strip()}\n\n"
            f"You replied:\n{turn.reply.strip()}"
        )
    outcome = "You won" if game.won else "You lost"
    parts.append(f"### Result\n\n{outcome}. The game's reason: {game.reason.strip() or '(none given)'}")
    return "\n\n".join(parts)


def game_record_line(game: GameRecord) -> str:
    """The game record the extractor reads, on one line: a knowledge item made of the raw trajectory
    (the "raw trajectories instead of knowledge" ablation)."""
    return " ".join(_game_record(game).split())
