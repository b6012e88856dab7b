"""The hidden-rule corridor: a multi-turn game in which the rule shortens play, never shown before the end,
always shown at it."""

import os
import random
import subprocess
import sys

import pytest

from verl_oel.envs import HiddenRuleCorridorGame, make_game
from verl_oel.envs.hidden_rule import FAMILIES, HELD_OUT_FAMILIES, WARM_FAMILIES, rule_text

GAME = "hidden-rule-corridor"


def _door_of(game, wanted: bool) -> str:
    """A sign of the current room: the exit (``wanted``) or a locked door."""
    return next(sign for _, sign in game.doors if (sign == game.exit_sign) == wanted)


def test_registered_and_settings_are_checked():
    game = make_game(GAME)
    assert isinstance(game, HiddenRuleCorridorGame)
    settings = game.settings
    assert (settings.num_rooms, settings.num_doors, settings.max_turns) == (3, 5, 7)
    with pytest.raises(ValueError, match="family must be one of"):
        make_game(GAME, family="dragon")
    with pytest.raises(ValueError, match="num_doors"):
        make_game(GAME, num_doors=1)
    with pytest.raises(ValueError, match="num_rooms must be at least 1"):
        make_game(GAME, num_rooms=0)
    with pytest.raises(ValueError, match=r"max_turns \(2\) must be at least num_rooms \(3\)"):
        make_game(GAME, max_turns=2)


def test_same_seed_same_corridor_in_any_process():
    game = make_game(GAME, family="ship")
    game.reset(7)
    first = game.turn_prompt()
    rooms = []
    while game.outcome is None:
        rooms.append(game.doors)
        game.step(f"[{game.exit_sign}]")

    def opening(seed: int) -> str:
        again = make_game(GAME, family="ship")
        again.reset(seed)
        return again.turn_prompt()

    assert opening(7) == first and opening(8) != first
    code = (
        f"from verl_oel.envs import make_game\ng = make_game({GAME!r}, family='ship')\ng.reset(7)\n"
        "print(g.turn_prompt(), end='')"
    )
    other = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "99"},
    )
    assert other.stdout == first
    assert len({tuple(room) for room in rooms}) == 3  # each room its own doors


@pytest.mark.parametrize("family", FAMILIES)
def test_one_exit_per_room_and_the_rule_is_never_shown_before_the_end(family):
    for seed in range(10):
        game = make_game(GAME, family=family)
        game.reset(seed)
        prompts = [game.instruction]
        while game.outcome is None:
            signs = [sign for _, sign in game.doors]
            assert len(signs) == len(set(signs)) == 5 and signs.count(family) == 1
            prompts.append(game.turn_prompt())
            game.step(f"[{_door_of(game, wanted=len(game.history) % 2 == 1)}]")
        for text in prompts:
            assert "plaque" not in text and rule_text(family) not in text
            assert "lead out" not in text


@pytest.mark.parametrize("family", [WARM_FAMILIES[0], HELD_OUT_FAMILIES[0]])
def test_a_rule_follower_walks_straight_through_and_the_end_states_the_rule(family):
    for seed in range(30):
        game = make_game(GAME, family=family)
        game.reset(seed)
        for room in range(3):
            assert game.room_index == room and f"room {room + 1} of 3" in game.turn_prompt()
            result = game.step(f"<think>maybe [cat]</think>I open [{family}]")
            assert result.action == f"[{family}]" and not result.invalid
        assert result.done and result.outcome.won and result.reward == 1.0
        assert len(game.history) == 3 and game.room_index == 3
        assert rule_text(family) in result.observation and rule_text(family) in result.outcome.reason


def test_a_locked_door_costs_a_turn_and_keeps_the_room():
    game = make_game(GAME, family="ship")
    game.reset(3)
    doors = game.doors
    locked = _door_of(game, wanted=False)
    result = game.step(f"[{locked}]")
    assert not result.done and not result.invalid and result.reward == 0.0
    assert result.action == f"[{locked}]" and "locked" in result.observation
    assert game.room_index == 0 and game.doors == doors
    assert "Turn 2 of 7" in game.turn_prompt()
    result = game.step("[ship]")
    assert not result.done and game.room_index == 1 and "into room 2." in result.observation
    assert game.doors != doors and "room 2 of 3" in game.turn_prompt()


def test_the_turn_prompt_logs_every_turn_then_shows_the_room_the_player_is_in():
    """The log holds each action and the game's answer; the doors listed are the current room's only,
    once, after the log (the prompt's footer), so the reply chooses from the last doors the prompt lists."""
    game = make_game(GAME, family="ship")
    game.reset(3)
    first_room = game.doors
    game.step(f"[{_door_of(game, wanted=False)}]")
    game.step("[ship]")
    prompt = game.turn_prompt()
    log, room = prompt.split("\n\nYou are in room 2 of 3, with 5 doors:\n")
    assert log.startswith("You stand at the start of a corridor of 3 rooms.")
    assert "Turn 1, your action: [" in log and "is locked; you stay in room 1." in log
    assert "Turn 2, your action: [ship]\nYou open the door marked [ship] and walk on into room 2." in log
    assert "door marked" not in log.replace("The door marked", "").replace("open the door marked", "")
    doors = "\n".join(f"- a {colour} door marked [{sign}]" for colour, sign in game.doors)
    assert room == doors + "\n\nTurn 3 of 7. Your action?"
    assert game.doors != first_room


@pytest.mark.parametrize("reply", ["", "I open the ship door", "[dragon]", "<think>[ship]</think>"])
def test_a_reply_naming_no_door_of_the_room_is_invalid_and_costs_a_turn(reply):
    game = make_game(GAME, family="ship")
    game.reset(0)
    result = game.step(reply)
    assert result.invalid and not result.done and game.room_index == 0
    assert "plaque" not in result.observation


def test_a_door_of_an_earlier_room_is_no_door_here():
    game = make_game(GAME, family="ship")
    game.reset(5)
    behind = {sign for _, sign in game.doors} - {"ship"}
    game.step("[ship]")
    gone = sorted(behind - {sign for _, sign in game.doors})[0]
    result = game.step(f"[{gone}]")
    assert result.invalid and result.action == f"[{gone}]" and game.room_index == 1


def test_running_out_of_turns_loses_and_states_the_rule():
    game = make_game(GAME, family="river")
    game.reset(4)
    for turn in range(7):
        result = game.step(f"[{_door_of(game, wanted=False)}]")
        assert result.done == (turn == 6)
    assert not result.outcome.won and result.outcome.reason.startswith("ran out of turns")
    assert rule_text("river") in result.observation and rule_text("river") in result.outcome.reason


def _random_play(policy: str, games: int) -> tuple[float, float]:
    """Pass rate and mean turns of a rule-less player: a uniformly random door each turn, or one that
    never retries a locked door of the room."""
    wins = turns = 0
    for seed in range(games):
        game = make_game(GAME, family=FAMILIES[seed % len(FAMILIES)])
        game.reset(seed)
        rng, tried, room = random.Random(seed), set(), 0
        while game.outcome is None:
            if game.room_index != room:
                tried, room = set(), game.room_index
            doors = [sign for _, sign in game.doors if policy == "uniform" or sign not in tried]
            sign = rng.choice(doors)
            tried.add(sign)
            game.step(f"[{sign}]")
        wins += game.outcome.won
        turns += len(game.history)
    return wins / games, turns / games


@pytest.mark.parametrize("policy, pass_rate", [("uniform", 0.165), ("no retry", 0.29)])
def test_without_the_rule_the_pass_rate_is_well_below_half_and_play_twice_the_minimum(policy, pass_rate):
    """The sizes the docstring states (measured on 3,000 seeds), within 4 points on 1,000."""
    rate, turns = _random_play(policy, 1000)
    assert abs(rate - pass_rate) < 0.04 and rate < 0.35
    assert turns >= 2 * 3
