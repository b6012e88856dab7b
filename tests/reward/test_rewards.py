from __future__ import annotations

import pytest
from verl_oel.reward import game, smoke


def test_smoke_reward_is_one_for_the_word_and_graded_otherwise():
    assert smoke.compute_score("s", "I say APPLE.", "apple") == 1.0
    near, far = smoke.compute_score("s", "appel", "apple"), smoke.compute_score("s", "zzzz", "apple")
    assert 0.0 <= far < near < 1.0


def test_game_reward_is_the_pass_and_logs_the_episode():
    info = {
        "oel_won": True,
        "oel_turns": 3,
        "oel_invalid_actions": 1,
        "oel_tokens_per_turn": 12.5,
        "oel_response_tokens": 37,
    }
    result = game.compute_score("verl_oel/frozenlake", "", "", info)
    assert result == {
        "score": 1.0,
        "pass": 1.0,
        "turns": 3.0,
        "invalid_actions": 1.0,
        "tokens_per_turn": 12.5,
        "response_tokens": 37.0,
    }
    assert game.compute_score("verl_oel/frozenlake", "", "", {"oel_won": False})["score"] == 0.0


def test_game_reward_without_an_episode_says_which_agent_loop_is_needed():
    with pytest.raises(KeyError, match="oel_game agent loop"):
        game.compute_score("verl_oel/frozenlake", "text", "", {})
