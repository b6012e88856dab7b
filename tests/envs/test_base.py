"""The shared interface: registry errors, thinking removal, the per-turn prompt, the turn limit."""

import pytest

from verl_oel.envs import (
    FrozenLake,
    FrozenLakeSettings,
    Turn,
    list_games,
    make_game,
    register_game,
    render_turn_prompt,
    strip_thinking,
)
from verl_oel.envs.base import MAX_REASON_BYTES, Outcome


def test_every_family_is_registered():
    assert list_games() == [
        "frozenlake",
        "hidden-rule",
        "hidden-rule-corridor",
        "sokoban",
        "tw-coin_collector",
        "tw-cooking",
        "tw-custom",
        "tw-treasure_hunter",
    ]


def test_unknown_game_names_itself_and_the_known_games():
    known = r"frozenlake, hidden-rule, hidden-rule-corridor, sokoban"
    with pytest.raises(ValueError, match=rf"unknown game 'frozen_lake'.*{known}"):
        make_game("frozen_lake")


def test_unknown_setting_names_the_key():
    with pytest.raises(ValueError, match=r"unknown setting\(s\) sizee for game 'frozenlake'.*num_holes"):
        make_game("frozenlake", sizee=4)
    with pytest.raises(ValueError, match="unknown setting.*levl"):
        make_game("tw-coin_collector", levl=2)


def test_impossible_setting_values_fail_at_construction():
    with pytest.raises(ValueError, match="max_turns"):
        make_game("frozenlake", max_turns=0)
    with pytest.raises(ValueError, match="level"):
        make_game("tw-treasure_hunter", level=31)
    with pytest.raises(ValueError, match="go must be"):
        make_game("tw-cooking", go=2)


def test_settings_reach_the_game():
    game = make_game("sokoban", dim_room=[7, 7], max_turns=9)
    assert game.settings.dim_room == (7, 7)
    assert game.max_turns == 9


def test_a_name_cannot_be_registered_twice():
    with pytest.raises(ValueError, match="already registered"):
        register_game("frozenlake")(type("Impostor", (FrozenLake,), {}))
    assert type(make_game("frozenlake")) is FrozenLake


@pytest.mark.parametrize(
    ("reply", "answer"),
    [
        ("<think>go [left]</think>I go [right]", "I go [right]"),
        ("<think>a</think>b<think>c</think>d", "bd"),
        ("reasoning; the opening tag was in the prompt</think>[up]", "[up]"),
        ("[down] <think>cut off while thinking [up]", "[down] "),
        ("no thinking at all", "no thinking at all"),
    ],
)
def test_strip_thinking_keeps_only_the_answer(reply, answer):
    assert strip_thinking(reply) == answer


def test_turn_prompt_holds_the_log_but_not_earlier_reasoning():
    prompt = render_turn_prompt(
        "the lake", [Turn("[down]", "you moved down"), Turn(None, "invalid")], max_turns=5, footer="now: x"
    )
    assert prompt == (
        "the lake\n\n"
        "Turn 1, your action: [down]\nyou moved down\n\n"
        "Turn 2, your action: (no action found in the reply)\ninvalid\n\n"
        "now: x\n\n"
        "Turn 3 of 5. Your action?"
    )
    game = FrozenLake(FrozenLakeSettings())
    game.reset(seed=0)
    game.step("I am secretly pondering [right] but will play [down]")
    assert "pondering" not in game.turn_prompt()
    assert "Turn 1, your action: [down]" in game.turn_prompt()


def test_playing_requires_reset_and_stops_when_the_game_is_over():
    game = make_game("frozenlake", max_turns=1)
    with pytest.raises(RuntimeError, match="reset"):
        game.step("[down]")
    game.reset(seed=0)
    result = game.step("no move here")
    assert result.done and result.outcome.reason == "ran out of turns"
    assert game.outcome == result.outcome
    with pytest.raises(RuntimeError, match="over"):
        game.step("[down]")
    with pytest.raises(RuntimeError, match="over"):
        game.turn_prompt()
    game.reset(seed=0)
    assert game.outcome is None and game.history == ()
    game.close()
    with pytest.raises(RuntimeError, match="reset"):
        game.step("[down]")


def test_next_message_holds_only_what_is_new():
    from verl_oel.envs import make_game

    game = make_game("frozenlake", max_turns=5)
    game.reset(3)
    assert game.next_message() == game.turn_prompt()
    result = game.step("[right]")
    if not result.done:
        message = game.next_message()
        assert message.startswith(result.observation.strip())
        assert message.endswith("Turn 2 of 5. Your action?")
        assert game.history[0].observation in game.turn_prompt()
    game.close()


def test_an_outcome_reason_longer_than_the_bound_the_length_checks_count_on_is_refused():
    """The extraction prompt shows the reason; the launch check's bound on that prompt allows
    MAX_REASON_BYTES for it (verl_oel/oel/prompt_bounds.py)."""
    Outcome(won=False, reason="x" * MAX_REASON_BYTES)
    with pytest.raises(ValueError, match=rf"an outcome reason of {MAX_REASON_BYTES + 1} bytes"):
        Outcome(won=False, reason="x" * (MAX_REASON_BYTES + 1))
    # Bytes, not characters: the bound is on tokens, and no byte-level token is shorter than a byte.
    with pytest.raises(ValueError):
        Outcome(won=True, reason="é" * (MAX_REASON_BYTES // 2 + 1))
