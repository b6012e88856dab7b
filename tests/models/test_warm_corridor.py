"""The warm-up's third phase (``verl_oel/models/warm/corridor_data.py``): copies across a game log, turn
prompts from inside a multi-turn corridor game with their targets, whole corridor games as extraction
records; and the probe that plays whole corridor games."""

import collections
import random
import re

import pytest

from verl_oel.envs.hidden_rule import HELD_OUT_FAMILIES
from verl_oel.knowledge import DEFAULT_MARKER
from verl_oel.models.tokenizer import build_qwen_prefix_tokenizer
from verl_oel.models.warm import GREEDY, WarmModelSpec, play_corridor_games, rule_item
from verl_oel.models.warm.corridor_data import (
    corridor_extraction_example,
    corridor_turn_example,
    log_copy_example,
)
from verl_oel.models.warm.data import copy_words

CORRIDOR = "You are playing Corridor."
ROOM = re.compile(r"You are in room (\d) of 3, with \d doors:\n((?:- a \w+ door marked \[\w+\]\n?)+)")


@pytest.fixture(scope="module")
def tokenizer():
    spec = WarmModelSpec().model
    return build_qwen_prefix_tokenizer(spec.vocab_size, spec.max_position_embeddings)


@pytest.fixture(scope="module")
def words(tokenizer):
    pool = copy_words(tokenizer, WarmModelSpec().extra_copy_words)
    return [word for word in pool if word not in HELD_OUT_FAMILIES]


def _decoded(tokenizer, example) -> tuple[str, str]:
    prompt, reply = example
    return tokenizer.decode(prompt), tokenizer.decode(reply, skip_special_tokens=True)


def test_log_copies_answer_the_knowledges_sign_across_a_log(tokenizer, words):
    rng = random.Random(0)
    logged = 0
    for _ in range(200):
        prompt, reply = _decoded(tokenizer, log_copy_example(rng, words, tokenizer))
        knowledge, rest = prompt.split("\n\n", 1)
        rule = re.search(r"\[(\w+)\]", knowledge).group(1)
        assert reply.strip() == f"[{rule}]"
        room_doors = re.findall(r"door marked \[(\w+)\]\n?", rest.split("Turn 1,")[-1])
        assert rule in room_doors
        logged += "Turn 1, your action:" in rest
    assert logged > 120  # most hold a log (0-6 turns)


def test_corridor_turn_prompts_answer_the_rule_with_knowledge_and_the_first_door_without(tokenizer, words):
    spec = WarmModelSpec()
    rng = random.Random(0)
    with_knowledge = without = later_rooms = 0
    for _ in range(150):
        prompt, reply = _decoded(tokenizer, corridor_turn_example(rng, spec, tokenizer, words))
        assert CORRIDOR in prompt
        rooms = ROOM.findall(prompt)
        assert len(rooms) == 1  # only the room the player is in lists doors
        number, doors = rooms[0]
        signs = re.findall(r"\[(\w+)\]", doors)
        later_rooms += number != "1"
        if "EXPERIENCE ITEM" in prompt and "doors lead" in prompt:
            rule = re.search(r"\[(\w+)\] doors", prompt.split("EXPERIENCE ITEM", 1)[1]).group(1)
            assert reply.strip() == f"[{rule}]" and rule in signs
            with_knowledge += 1
        elif "EXPERIENCE ITEM" not in prompt:
            assert reply.strip() == f"[{signs[0]}]"
            without += 1
        assert "You win" not in prompt and "no turns left" not in prompt  # never past the game's end
    assert with_knowledge > 60 and without > 40 and later_rooms > 40


def test_every_corridor_turn_prompt_is_of_a_running_game(tokenizer, words):
    """A move that names the exit in the last room ends the game, whichever way it was drawn (the exit, a
    door of the room, a random sign): the example stops before it. 2,000 examples over many random
    streams (a build once died on it: "the game is over")."""
    spec = WarmModelSpec()
    for seed in range(40):
        rng = random.Random(seed)
        for _ in range(50):
            prompt, _ = _decoded(tokenizer, corridor_turn_example(rng, spec, tokenizer, words))
            assert "You win" not in prompt and "no turns left" not in prompt


def test_corridor_extraction_records_are_whole_games_whose_players_repeat_another_sign(tokenizer, words):
    """The target is the plaque's sign; the player's most frequent reply is mostly another sign, so copying
    the player's reply does not lower the loss."""
    spec = WarmModelSpec()
    rng = random.Random(1)
    won = lost = habit_is_not_the_rule = 0
    for _ in range(60):
        prompt, target = _decoded(tokenizer, corridor_extraction_example(rng, spec, tokenizer, words))
        assert CORRIDOR in prompt
        plaque = re.search(r"the plaque says \[(\w+)\] doors lead out", prompt)
        assert plaque
        assert target == f"{DEFAULT_MARKER} {rule_item(plaque.group(1))}"
        replies = re.findall(r"You replied:\n\[(\w+)\]", prompt)
        most, _ = collections.Counter(replies).most_common(1)[0] if replies else (None, 0)
        habit_is_not_the_rule += most != plaque.group(1)
        won += "walked out of the last room" in prompt
        lost += "ran out of turns" in prompt
    assert won > 5 and lost > 5 and habit_is_not_the_rule > 30


def test_stubborn_players_name_one_wrong_sign_every_turn_and_lose_in_the_first_room(tokenizer, words):
    """``corridor_stubborn_share`` of the records are what the warmed model's own games without the rule
    look like: the same sign (a locked door of room 1, or no door) on all 7 turns, never the rule's, and a
    lost game that never left room 1; the target is still the plaque's sign."""
    spec = WarmModelSpec(corridor_stubborn_share=1.0, relabel_share=0.0)
    rng = random.Random(3)
    locked_doors = no_door = 0
    for _ in range(60):
        prompt, target = _decoded(tokenizer, corridor_extraction_example(rng, spec, tokenizer, words))
        plaque = re.search(r"the plaque says \[(\w+)\] doors lead out", prompt).group(1)
        assert target == f"{DEFAULT_MARKER} {rule_item(plaque)}"
        replies = re.findall(r"You replied:\n\[(\w+)\]", prompt)
        assert len(replies) == 7 and len(set(replies)) == 1 and replies[0] != plaque
        assert "ran out of turns" in prompt and "walk on into room" not in prompt
        locked_doors += "is locked; you stay in room 1" in prompt
        no_door += "No door in this room is marked like that" in prompt
    assert locked_doors > 15 and no_door > 15  # both habits, about half each


def test_relabelled_corridor_examples_never_name_a_held_out_family(tokenizer, words):
    """Every sign is renamed to a word drawn without the held-out families: no corridor example the
    warm-up trains on is, or shows, a held-out family's game."""
    spec = WarmModelSpec(relabel_share=1.0)
    rng = random.Random(2)
    for _ in range(60):
        for make in (corridor_turn_example, corridor_extraction_example):
            prompt, reply = _decoded(tokenizer, make(rng, spec, tokenizer, words))
            named = set(re.findall(r"\[(\w+)\]", prompt + reply))
            assert named and not named & set(HELD_OUT_FAMILIES)


def test_the_probe_plays_whole_corridor_games_turn_by_turn(tiny_model_dir):
    """The random tiny model, greedy: every game runs to its end, its record holds each turn's reply and
    the game's answer, and the counts agree with the game's own log."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    results = play_corridor_games(model, tokenizer, "ship", range(6), "", GREEDY, num_doors=3, max_turns=4)
    for result in results:
        assert 3 <= result["turns"] <= 4 and len(result["replies"]) == result["turns"]
        assert len(result["observations"]) == result["turns"] + 1
        assert result["won"] == ("You win!" in result["observations"][-1])
        assert 0 <= result["invalid_turns"] <= result["turns"]
        assert result["reason"].endswith("the plaque says [ship] doors lead out")


def test_the_spec_reads_back_from_what_the_cache_key_records():
    """``build_info.json`` records ``dataclasses.asdict(spec)``; the training process gets it as JSON."""
    import dataclasses
    import json

    spec = WarmModelSpec()
    assert WarmModelSpec.from_dict(json.loads(json.dumps(dataclasses.asdict(spec)))) == spec
    assert spec.log_copy_steps > 0 and spec.corridor_steps > 0  # one build serves both games
