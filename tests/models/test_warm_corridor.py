"""The warm-up's corridor examples (``WarmModelSpec.corridor_share``): turn prompts from inside a multi-turn
corridor game with their targets, whole corridor games as extraction records, and a default build that
draws none of them and keeps its cache key; and the probe that plays whole corridor games."""

import random
import re

import pytest

from verl_oel.envs.hidden_rule import SIGNS
from verl_oel.knowledge import DEFAULT_MARKER
from verl_oel.models.tokenizer import build_qwen_prefix_tokenizer
from verl_oel.models.warm import (
    GREEDY,
    WarmModelSpec,
    extraction_example,
    game_example,
    play_corridor_games,
    rule_item,
)
from verl_oel.models.warm.spec import spec_settings

CORRIDOR = "You are playing Corridor."
ROOM = re.compile(r"You are in room (\d) of 3, with \d doors:\n((?:- a \w+ door marked \[\w+\]\n?)+)")


@pytest.fixture(scope="module")
def tokenizer():
    spec = WarmModelSpec().model
    return build_qwen_prefix_tokenizer(spec.vocab_size, spec.max_position_embeddings)


def _decoded(tokenizer, example) -> tuple[str, str]:
    prompt, reply = example
    return tokenizer.decode(prompt), tokenizer.decode(reply, skip_special_tokens=True)


def test_the_default_build_keeps_its_cache_key_and_a_corridor_build_gets_its_own():
    default = spec_settings(WarmModelSpec())
    assert "corridor_share" not in default and "corridor_door_counts" not in default
    corridor = spec_settings(WarmModelSpec(corridor_share=0.5))
    assert corridor["corridor_share"] == 0.5 and tuple(corridor["corridor_door_counts"]) == (4, 5)
    assert WarmModelSpec.from_dict(default) == WarmModelSpec()
    assert WarmModelSpec.from_dict(corridor) == WarmModelSpec(corridor_share=0.5)


def test_a_share_of_0_draws_no_corridor_example_and_no_random_number_for_it(tokenizer):
    """The default build's examples are those of the build before the corridor existed: the same random
    stream gives the same examples whatever the corridor's other settings."""
    spec, other = WarmModelSpec(), WarmModelSpec(corridor_door_counts=(9,))
    for make in (game_example, extraction_example):
        first = [make(random.Random(seed), spec, tokenizer) for seed in range(40)]
        again = [make(random.Random(seed), other, tokenizer) for seed in range(40)]
        assert first == again
        assert not any(CORRIDOR in _decoded(tokenizer, example)[0] for example in first)


def test_corridor_turn_prompts_answer_the_rule_with_knowledge_and_the_rooms_first_door_without(tokenizer):
    spec = WarmModelSpec(corridor_share=1.0)
    rng = random.Random(0)
    with_knowledge = without = later_rooms = 0
    for _ in range(150):
        prompt, reply = _decoded(tokenizer, game_example(rng, spec, tokenizer))
        assert CORRIDOR in prompt
        rooms = ROOM.findall(prompt)
        number, doors = rooms[-1]  # the room the player is in: the last one the log shows
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
    assert with_knowledge > 60 and without > 20 and later_rooms > 40


def test_every_corridor_turn_prompt_is_of_a_running_game(tokenizer):
    """A move that names the exit in the last room ends the game, whichever way it was drawn (the exit, a
    door of the room, a random sign): the example stops before it. 2,000 examples over many random
    streams (a build once died here at phase 2's step ~200: "the game is over")."""
    spec = WarmModelSpec(corridor_share=1.0)
    for seed in range(40):
        rng = random.Random(seed)
        for _ in range(50):
            prompt, _ = _decoded(tokenizer, game_example(rng, spec, tokenizer))
            assert "You win" not in prompt and "no turns left" not in prompt


def test_corridor_extraction_records_are_whole_games_and_name_the_rule(tokenizer):
    spec = WarmModelSpec(corridor_share=1.0)
    rng = random.Random(1)
    won = lost = 0
    for _ in range(40):
        prompt, target = _decoded(tokenizer, extraction_example(rng, spec, tokenizer))
        assert CORRIDOR in prompt
        plaque = re.search(r"the plaque says \[(\w+)\] doors lead out", prompt)
        assert plaque and plaque.group(1) in SIGNS
        assert target == f"{DEFAULT_MARKER} {rule_item(plaque.group(1))}"
        won += "walked out of the last room" in prompt
        lost += "ran out of turns" in prompt
    assert won > 5 and lost > 5


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
