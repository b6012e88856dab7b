"""The warm-up's third phase: the multi-turn ``hidden-rule-corridor`` of the warm families.

What a turn prompt of a multi-turn game adds to the one-turn game's is the game log between the knowledge
(at the top of the user message) and the room (the prompt's footer). Today's tiny model, warmed on
one-turn prompts only, stops acting on the rule in its prompt once any log stands there (README, "A
multi-turn game"), so the phase first trains the copy itself over such a log (``log_copy_example``: short
synthetic prompts, cheap steps), then the pipeline's own corridor prompts (``corridor_turn_example``) and
corridor game records (``corridor_extraction_example``), mixed with phase 2's one-turn examples so that the
one-turn skills stay.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from verl_oel.envs import HiddenRuleCorridorGame, make_game
from verl_oel.envs.hidden_rule import SIGNS, parse_last_sign
from verl_oel.knowledge import render_items
from verl_oel.models.warm.data import record_example, rule_phrasing, synthetic_room, turn_example
from verl_oel.models.warm.prompts import prompt_ids, reply_ids
from verl_oel.models.warm.spec import CORRIDOR_GAME, OTHER_ITEMS, WarmModelSpec


def _synthetic_log(rng: random.Random, words: Sequence[str], answer: str) -> str:
    """A corridor's game log as the turn prompt shows it: 0-6 turns of random actions (``answer`` among
    them sometimes, as a player's earlier exit) and the game's answers."""
    parts = ["You stand at the start of a corridor of 3 rooms."] if rng.random() < 0.5 else []
    room = 1
    for turn in range(1, rng.randint(0, 6) + 1):
        word = rng.choice(words) if rng.random() < 0.7 else answer
        roll = rng.random()
        if roll < 0.35:
            room += 1
            result = f"You open the door marked [{word}] and walk on into room {room}."
        elif roll < 0.85:
            result = f"The door marked [{word}] is locked; you stay in room {room}."
        else:
            result = "No door in this room is marked like that; you lose the turn."
        parts.append(f"Turn {turn}, your action: [{word}]\n{result}")
    return "\n\n".join(parts)


def log_copy_example(rng: random.Random, words: Sequence[str], tokenizer: Any) -> tuple[list[int], list[int]]:
    """A short synthetic prompt: knowledge naming a sign, a game log, a room; the answer copies the
    knowledge's sign (phase 1's ``knowledge`` copy with a log between the knowledge and the room)."""
    answer = rng.choice(words)
    _, room = synthetic_room(rng, words, answer)
    items = [rule_phrasing(rng).format(sign=answer) for _ in range(rng.choice((1, 1, 1, 2)))]
    items += rng.sample(OTHER_ITEMS, rng.choice((0, 0, 1, 2)))
    rng.shuffle(items)
    head = rng.choice(("Experiential knowledge from earlier games:\n", ""))
    log = _synthetic_log(rng, words, answer)
    tail = f"\n\nTurn {rng.randint(1, 7)} of 7. Your action?" if rng.random() < 0.5 else ""
    prompt = f"{head}{render_items(items)}\n\n{log}\n\n{room}{tail}"
    return prompt_ids(tokenizer, [{"role": "user", "content": prompt}]), reply_ids(tokenizer, f" [{answer}]")


def _random_move(rng: random.Random, game: HiddenRuleCorridorGame) -> str:
    """A reply a player may give in a corridor room: the exit, a locked door, or no door of the room."""
    roll = rng.random()
    if roll < 0.4:
        return f" [{game.exit_sign}]"
    if roll < 0.9:
        return f" [{rng.choice(game.doors)[1]}]"
    return rng.choice(("", "I open a door.", "[", f"[{rng.choice(SIGNS)}]"))


def _corridor_in_play(rng: random.Random, spec: WarmModelSpec, family: str) -> HiddenRuleCorridorGame:
    """A corridor game of ``family`` after a random number of moves that do not end it."""
    game = make_game(CORRIDOR_GAME, family=family, num_doors=rng.choice(spec.corridor_door_counts))
    game.reset(rng.randrange(2**31))
    for _ in range(rng.randrange(game.max_turns)):
        move = _random_move(rng, game)
        last_room = game.room_index == game.settings.num_rooms - 1
        # Any move naming the exit sign wins in the last room (a "locked door" drawn from the room's doors
        # or a random sign can be the exit too): the game must still be running for its turn prompt.
        if len(game.history) + 1 == game.max_turns or (last_room and parse_last_sign(move) == game.exit_sign):
            break  # that move would end the game: stop before it
        game.step(move)
    return game


def corridor_turn_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str]
) -> tuple[list[int], list[int]]:
    """A corridor turn prompt at a random point of a game and its target: the rule's sign with the rule in
    the knowledge (``corridor_knowledge_share``), else the first door of the room the player is in (so a
    player without the rule retries a locked door until it learns the rule: it rarely wins, slowly)."""
    game = _corridor_in_play(rng, spec, rng.choice(spec.families))
    return turn_example(rng, spec, tokenizer, words, game, spec.corridor_knowledge_share)


def _habit_move(rng: random.Random, game: HiddenRuleCorridorGame, habit: str) -> str:
    """A reply of a player with a habit (as a warmed player without the rule has: the same sign, turn
    after turn), else the exit, another door of the room, or no door."""
    roll = rng.random()
    if roll < 0.5:
        return f" [{habit}]"
    if roll < 0.7:
        return f" [{game.exit_sign}]"
    if roll < 0.95:
        return f" [{rng.choice(game.doors)[1]}]"
    return rng.choice(("", "I open a door.", "["))


def corridor_extraction_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str]
) -> tuple[list[int], list[int]]:
    """A whole corridor game's extraction prompt and the rule's item. The player repeats one sign: every
    turn (``corridor_stubborn_share`` of the records: a locked door of the first room or no door at all,
    so it loses in the first room, as a warmed player without the rule does) or half the turns. Either way
    the record's most frequent bracketed word is rarely the rule's: the item must copy the plaque's sign,
    not the player's."""
    family, doors = rng.choice(spec.families), rng.choice(spec.corridor_door_counts)
    game = make_game(CORRIDOR_GAME, family=family, num_doors=doors)
    first = game.reset(rng.randrange(2**31))
    if rng.random() < spec.corridor_stubborn_share:
        locked = [sign for _, sign in game.doors if sign != game.exit_sign]
        pool = [word for word in words if word != game.exit_sign]
        habit = rng.choice(locked) if rng.random() < 0.5 else rng.choice(pool)
        return record_example(rng, spec, tokenizer, words, game, first, lambda: f" [{habit}]")
    habit = rng.choice(SIGNS) if rng.random() < 0.5 else rng.choice(words)
    return record_example(rng, spec, tokenizer, words, game, first, lambda: _habit_move(rng, game, habit))
