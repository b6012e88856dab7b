"""The warm-up's training examples: pipeline prompts of the warm families, and the synthetic copy tasks."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from typing import Any

from verl_oel.envs import make_game
from verl_oel.envs.hidden_rule import (
    COLOURS,
    DEAD_END_REASON,
    HELD_OUT_FAMILIES,
    SIGNS,
    WARM_FAMILIES,
    WIN_REASON,
    HiddenRuleGame,
    rule_text,
)
from verl_oel.knowledge import DEFAULT_MARKER, render_items
from verl_oel.models.warm.prompts import extraction_messages, game_messages, prompt_ids, reply_ids
from verl_oel.models.warm.spec import (
    GAME,
    OTHER_ITEMS,
    RULE_PHRASINGS,
    WarmModelSpec,
    rule_item,
)


def rule_phrasing(rng: random.Random) -> str:
    """A phrasing of the rule, with ``{sign}`` to fill: the extractor's own most often (it is what the OEL
    loop puts in the knowledge)."""
    return rng.choice([RULE_PHRASINGS[0]] * 4 + list(RULE_PHRASINGS[1:]))


def random_knowledge(rng: random.Random, sign: str | None) -> str:
    """Rendered knowledge: the rule of ``sign`` (1-2 phrasings), mixed with 0-3 unrelated items."""
    items = []
    if sign is not None:
        items += [rule_phrasing(rng).format(sign=sign) for _ in range(rng.choice((1, 1, 1, 2)))]
    items += rng.sample(OTHER_ITEMS, rng.choice((0, 0, 1, 2, 3)))
    rng.shuffle(items)
    return render_items(items)


def knowledge_so_far(rng: random.Random, sign: str) -> str:
    """An extraction prompt's knowledge so far: none (half the time), the rule among other items, or
    other items only."""
    roll = rng.random()
    if roll < 0.5:
        return ""
    return random_knowledge(rng, sign if roll < 0.8 else None)


def _new_game(rng: random.Random, spec: WarmModelSpec, family: str) -> tuple[HiddenRuleGame, str]:
    game = make_game(GAME, family=family, num_doors=rng.choice(spec.door_counts))
    return game, game.reset(rng.randrange(2**31))


def game_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """One turn prompt and its target reply: the rule's sign with knowledge, the first door listed
    without."""
    game, _ = _new_game(rng, spec, rng.choice(spec.families))
    return turn_example(rng, spec, tokenizer, words, game, spec.knowledge_share)


def turn_example(
    rng: random.Random,
    spec: WarmModelSpec,
    tokenizer: Any,
    words: Sequence[str],
    game: Any,
    knowledge_share: float,
) -> tuple[list[int], list[int]]:
    """The running ``game``'s turn prompt (which it then closes) and its target: the rule's sign with the
    rule in the knowledge (``knowledge_share`` of the examples), else the first door listed (the game
    shuffles its doors, so this player wins at chance); signs renamed in ``relabel_share`` of them."""
    if rng.random() < knowledge_share:
        knowledge, reply = random_knowledge(rng, game.exit_sign), f" [{game.exit_sign}]"
    else:
        knowledge = random_knowledge(rng, None) if rng.random() < 0.1 else ""
        reply = f" [{game.doors[0][1]}]"
    messages = game_messages(game, knowledge)
    game.close()
    if words and rng.random() < spec.relabel_share:
        messages, reply = relabel(rng, words, (messages, reply), SIGNS)
    return prompt_ids(tokenizer, messages), reply_ids(tokenizer, reply)


def _played_reply(rng: random.Random, game: HiddenRuleGame) -> str:
    """A reply as an unwarmed or warmed player may give it: mostly a door, sometimes not."""
    roll = rng.random()
    if roll < 0.8:
        return f" [{rng.choice(game.doors)[1]}]"
    if roll < 0.9:
        return f"[{rng.choice(WARM_FAMILIES + HELD_OUT_FAMILIES)}]"
    return rng.choice(("", "I open a door.", "[", "door", "[red]", "]"))


def extraction_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """One extraction prompt (a played game, the stream's knowledge so far) and the rule's item."""
    game, first = _new_game(rng, spec, rng.choice(spec.families))
    return record_example(rng, spec, tokenizer, words, game, first, lambda: _played_reply(rng, game))


def record_example(
    rng: random.Random,
    spec: WarmModelSpec,
    tokenizer: Any,
    words: Sequence[str],
    game: Any,
    first: str,
    next_reply: Callable[[], str],
) -> tuple[list[int], list[int]]:
    """The extraction prompt of ``game`` (just reset, showing ``first``) played to its end with
    ``next_reply()``, the stream's knowledge so far, and the rule's item (signs renamed in
    ``relabel_share`` of them); the game is closed."""
    observations, replies = [first], []
    while game.outcome is None:
        reply = next_reply()
        observations.append(game.step(reply).observation)
        replies.append(reply)
    knowledge = knowledge_so_far(rng, game.exit_sign)
    messages = extraction_messages(
        game.instruction, observations, replies, game.outcome.won, game.outcome.reason, knowledge
    )
    target = f"{DEFAULT_MARKER} {rule_item(game.exit_sign)}"
    game.close()
    if words and rng.random() < spec.relabel_share:
        messages, target = relabel(rng, words, (messages, target), SIGNS)
    return prompt_ids(tokenizer, messages), reply_ids(tokenizer, target)


def copy_words(tokenizer: Any, extra_words: int) -> tuple[str, ...]:
    """The synthetic phase's signs: every game sign and ``extra_words`` other words that are one token
    inside brackets (a fixed sample).

    A small pool is what lets copying form in minutes: over ~2,000 words a word is seen too rarely, and
    ~1,000 steps left the copy loss at chance. The held-out signs are in the pool like any other word,
    as often a sign to copy as a distractor (kept out, they would only ever be distractors and the model
    would learn never to copy them); only the held-out families' GAMES never appear in the warm-up.
    """
    open_ids = tokenizer.encode("[", add_special_tokens=False)
    close_ids = tokenizer.encode("]", add_special_tokens=False)
    words = set()
    for token, index in tokenizer.get_vocab().items():
        if not (token.isascii() and token.isalpha() and token.islower() and 3 <= len(token) <= 7):
            continue
        if tokenizer.encode(f"[{token}]", add_special_tokens=False) != open_ids + [index] + close_ids:
            continue
        if tokenizer.encode(f" [{token}]", add_special_tokens=False)[1:2] != [index]:
            continue
        words.add(token)
    others = sorted(words - set(COLOURS) - set(SIGNS))
    return tuple(SIGNS) + tuple(random.Random("warm/copy-words").sample(others, extra_words))


def synthetic_room(rng: random.Random, words: Sequence[str], answer: str) -> tuple[list[str], str]:
    """A room's signs (``answer`` among them; others may be any sign, held-out ones included) and text."""
    count = rng.randint(2, 5)
    pool = [w for w in rng.sample(words, count + 2) if w != answer]
    others = pool[: count - 1]
    signs = [answer, *others]
    rng.shuffle(signs)
    lines = "\n".join(f"- a {rng.choice(COLOURS)} door marked [{sign}]" for sign in signs)
    head = rng.choice((f"You are in a room with {count} doors:\n", "", ""))
    return signs, head + lines


COPY_KINDS = ("knowledge", "door", "plaque")


def copy_example(
    rng: random.Random, words: Sequence[str], tokenizer: Any, kind: str
) -> tuple[list[int], list[int]]:
    """A short synthetic prompt whose answer copies a sign: the knowledge's rule (``knowledge``), any
    door of the room (``door``), or the plaque's sign into an item (``plaque``)."""
    answer = rng.choice(words)
    signs, room = synthetic_room(rng, words, answer)
    if kind == "knowledge":
        items = [rule_phrasing(rng).format(sign=answer) for _ in range(rng.choice((1, 1, 1, 2)))]
        items += rng.sample(OTHER_ITEMS, rng.choice((0, 0, 1, 2)))
        rng.shuffle(items)
        head = rng.choice(("Experiential knowledge from earlier games:\n", ""))
        prompt, reply = f"{head}{render_items(items)}\n\n{room}", f" [{answer}]"
    elif kind == "door":
        prompt, reply = room, f" [{rng.choice(signs)}]"
    else:
        played = rng.choice(signs)
        won = played == answer
        reason = f"{WIN_REASON if won else DEAD_END_REASON}; the plaque says {rule_text(answer)}"
        result = f"You {'won' if won else 'lost'}. The game's reason: {reason}"
        roll = rng.random()
        if roll < 0.5:
            knowledge = "(nothing recorded yet)"
        else:
            items = rng.sample(OTHER_ITEMS, rng.choice((0, 1, 2)))
            if roll < 0.8:
                items.append(rule_item(answer))
            rng.shuffle(items)
            knowledge = render_items(items) or "(nothing recorded yet)"
        prompt = (
            f"{room}\n\nYou replied:\n[{played}]\n\n### Result\n\n{result}\n\n"
            f"## Experience so far\n\n{knowledge}"
        )
        reply = f"{DEFAULT_MARKER} {rule_item(answer)}"
    messages = [{"role": "user", "content": prompt}]
    return prompt_ids(tokenizer, messages), reply_ids(tokenizer, reply)


def relabel(
    rng: random.Random, words: Sequence[str], example: tuple[list[dict[str, str]], str], signs: Sequence[str]
) -> tuple[list[dict[str, str]], str]:
    """The same prompt and reply with each of ``signs`` (in brackets) renamed to a random word."""
    messages, reply = example
    mapping = dict(zip(signs, rng.sample(words, len(signs)), strict=True))

    def rename(text: str) -> str:
        return re.sub(r"\[(\w+)\]", lambda m: f"[{mapping.get(m.group(1), m.group(1))}]", text)

    return [{**m, "content": rename(m["content"])} for m in messages], rename(reply)


def copy_batches(
    rng: random.Random, words: Sequence[str], tokenizer: Any, size: int
) -> list[list[tuple[list[int], list[int]]]]:
    """``size`` synthetic examples in one group per kind (short groups pad little), a third each."""
    return [
        [copy_example(rng, words, tokenizer, kind) for _ in range(size // len(COPY_KINDS))]
        for kind in COPY_KINDS
    ]
