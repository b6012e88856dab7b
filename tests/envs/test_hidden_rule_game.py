"""The hidden-rule doors: a rule never shown before acting, always shown after, one exit per game."""

import os
import random
import subprocess
import sys

import pytest

from verl_oel.envs import HiddenRuleGame, make_game
from verl_oel.envs.hidden_rule import (
    FAMILIES,
    HELD_OUT_FAMILIES,
    SIGNS,
    WARM_FAMILIES,
    parse_last_sign,
    rule_text,
)


def _play(family: str, seed: int, reply: str, **settings):
    game = make_game("hidden-rule", family=family, **settings)
    first = game.reset(seed)
    prompt = game.turn_prompt()
    result = game.step(reply)
    return game, first, prompt, result


def test_registered_and_settings_are_checked():
    assert isinstance(make_game("hidden-rule"), HiddenRuleGame)
    with pytest.raises(ValueError, match="family must be one of"):
        make_game("hidden-rule", family="dragon")
    with pytest.raises(ValueError, match="num_doors"):
        make_game("hidden-rule", num_doors=1)
    with pytest.raises(ValueError, match="unknown setting"):
        make_game("hidden-rule", doors=3)


def test_family_split_is_disjoint_and_held_out_signs_appear_in_warm_games():
    assert not set(WARM_FAMILIES) & set(HELD_OUT_FAMILIES)
    assert set(FAMILIES) == set(SIGNS)
    seen = set()
    for family in WARM_FAMILIES:
        for seed in range(30):
            game = make_game("hidden-rule", family=family)
            game.reset(seed)
            seen |= {sign for _, sign in game.doors}
    assert set(HELD_OUT_FAMILIES) <= seen


def test_same_seed_same_game_in_any_process_and_without_touching_global_random():
    random.seed(123)
    state = random.getstate()
    game = make_game("hidden-rule", family="ship")
    first = game.reset(7)
    assert random.getstate() == state
    assert make_game("hidden-rule", family="ship").reset(7) == first
    assert make_game("hidden-rule", family="ship").reset(8) != first
    assert make_game("hidden-rule", family="river").reset(7) != first
    code = "from verl_oel.envs import make_game\n"
    code += "print(make_game('hidden-rule', family='ship').reset(7), end='')"
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "99"},
    )
    assert other.stdout == first


@pytest.mark.parametrize("family", FAMILIES)
def test_exactly_one_exit_and_the_rule_is_never_shown_before_acting(family):
    for seed in range(20):
        game = make_game("hidden-rule", family=family, num_doors=4)
        first = game.reset(seed)
        signs = [sign for _, sign in game.doors]
        assert len(signs) == len(set(signs)) == 4
        assert signs.count(family) == 1
        for text in (game.instruction, first, game.turn_prompt()):
            assert "lead out" not in text.replace("leads out", "")
            assert "plaque" not in text
            assert rule_text(family) not in text


def test_exit_position_varies_across_seeds():
    positions = set()
    for seed in range(40):
        game = make_game("hidden-rule", family="book")
        game.reset(seed)
        positions.add([sign for _, sign in game.doors].index("book"))
    assert positions == {0, 1, 2, 3}


@pytest.mark.parametrize("family", [WARM_FAMILIES[0], HELD_OUT_FAMILIES[0]])
def test_a_rule_follower_always_wins_and_the_outcome_reveals_the_rule(family):
    for seed in range(50):
        game, _, _, result = _play(family, seed, f"<think>maybe [cat]</think>I open [{family}]")
        assert result.done and result.outcome.won and result.reward == 1.0 and not result.invalid
        assert result.action == f"[{family}]"
        assert rule_text(family) in result.observation
        assert rule_text(family) in result.outcome.reason


def test_a_random_player_is_near_chance_and_losses_reveal_the_rule():
    rng = random.Random(0)
    wins = 0
    games = 2000
    for seed in range(games):
        family = FAMILIES[seed % len(FAMILIES)]
        game = make_game("hidden-rule", family=family)
        game.reset(seed)
        _, sign = rng.choice(game.doors)
        result = game.step(f"[{sign}]")
        assert result.done and not result.invalid
        wins += result.outcome.won
        assert rule_text(family) in result.observation and rule_text(family) in result.outcome.reason
        if not result.outcome.won:
            assert result.outcome.reason.startswith("opened a dead end")
    assert abs(wins / games - 0.25) < 0.03


def test_more_doors_lower_the_chance():
    wins = 0
    for seed in range(1000):
        game = make_game("hidden-rule", family="ship", num_doors=8)
        game.reset(seed)
        wins += game.step(f"[{game.doors[0][1]}]").outcome.won
    assert abs(wins / 1000 - 1 / 8) < 0.04


@pytest.mark.parametrize("reply", ["", "I open the ship door", "[dragon]", "[ship", "<think>[ship]</think>"])
def test_invalid_replies_end_a_one_turn_game_with_the_rule_and_never_raise(reply):
    game, _, _, result = _play("ship", 0, reply)
    assert result.done and result.invalid and not result.outcome.won
    assert result.outcome.reason.startswith("opened no door")
    assert rule_text("ship") in result.observation and rule_text("ship") in result.outcome.reason


def test_invalid_replies_use_a_turn_while_turns_remain():
    game = make_game("hidden-rule", family="ship", max_turns=3)
    game.reset(1)
    result = game.step("no idea")
    assert not result.done and result.invalid and result.action is None
    assert "plaque" not in result.observation and "lead out" not in game.turn_prompt()
    assert "Turn 2 of 3" in game.turn_prompt()
    result = game.step("[dragon]")
    assert not result.done and result.invalid and result.action == "[dragon]"
    result = game.step("[ship]")
    assert result.done and result.outcome.won and game.outcome.won


def test_a_wrong_door_ends_the_game_even_with_turns_left():
    game = make_game("hidden-rule", family="ship", max_turns=5)
    game.reset(2)
    wrong = next(sign for _, sign in game.doors if sign != "ship")
    result = game.step(f"[{wrong.upper()}]")
    assert result.done and not result.outcome.won and not result.invalid
    assert result.action == f"[{wrong}]"


def test_last_bracketed_word_counts():
    assert parse_last_sign("[cat] no, [ Ship ]") == "ship"
    assert parse_last_sign("<think>[cat]</think>") is None
    assert parse_last_sign("nothing") is None
