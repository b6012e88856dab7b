"""The ``oel_game`` agent loop against a scripted stand-in for verl's rollout server."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from scripted_server import ScriptedServer, make_loop, run_loop, segments

from verl_oel.agent_loop.game_loop import GameAgentLoop
from verl_oel.agent_loop.prompt_length import PromptTooLongError
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.knowledge.injection import DEFAULT_KNOWLEDGE_TEMPLATE, with_knowledge


def play(
    tokenizer,
    replies,
    spec: EpisodeSpec,
    response_length: int = 2048,
    prompt_length: int = 4096,
    student_prompt_length: int | None = None,
):
    server = ScriptedServer(tokenizer, iter(replies))
    loop = make_loop(GameAgentLoop, tokenizer, server, response_length, prompt_length, student_prompt_length)
    return run_loop(loop, extra_info={"oel_game": spec.to_json()}), server


FROZENLAKE = EpisodeSpec(game="frozenlake", seed=3, settings={"max_turns": 5})


def test_masks_mark_exactly_the_model_tokens(tokenizer):
    replies = ["I go [right]", "then [down]", "[left]", "[up]", "[right]"]
    output, server = play(tokenizer, replies, FROZENLAKE)
    runs = segments(output.response_ids, output.response_mask)

    model_runs = [ids for m, ids in runs if m == 1]
    env_runs = [ids for m, ids in runs if m == 0]
    # Every mask-1 run is, token for token, what the server sampled (never re-tokenized)...
    assert model_runs == server.outputs
    # ...and the episode alternates model and environment turns, starting with the model.
    assert [m for m, _ in runs] == [1, 0] * (len(model_runs) - 1) + [1]
    # Every environment run is a rendered user turn holding the game's next observation.
    for ids in env_runs:
        text = tokenizer.decode(ids)
        assert "<|im_start|>user" in text and text.endswith("<|im_start|>assistant\n")
    assert output.extra_fields["oel_turns"] == len(model_runs)
    # The game's response tokens are the model tokens, summed over its turns.
    assert output.extra_fields["oel_response_tokens"] == sum(map(len, model_runs)) > 0
    # Sampled log-probs travel with the model tokens; environment tokens carry none (0.0).
    logprobs = output.response_logprobs
    assert logprobs is not None and len(logprobs) == len(output.response_mask)
    model_logprobs = [lp for lp, m in zip(logprobs, output.response_mask, strict=True) if m == 1]
    assert model_logprobs == [-(i + 1) / 100 for ids in server.outputs for i in range(len(ids))]
    assert all(lp == 0.0 for lp, m in zip(logprobs, output.response_mask, strict=True) if m == 0)


def test_rollout_bookkeeping_spans_the_episode(tokenizer):
    """verl's trainer needs the weight versions that produced a sample (first and newest)."""
    output, server = play(tokenizer, ["[right]", "[down]", "[left]", "[up]", "[right]"], FROZENLAKE)
    calls = len(server.calls)
    assert output.extra_fields["min_global_steps"] == 7
    assert output.extra_fields["max_global_steps"] == 7 + calls - 1


def test_the_decoded_episode_round_trips_through_the_chat_template(tokenizer):
    replies = ["[right]", "[down]", "[left]", "[up]", "[right]"]
    output, _ = play(tokenizer, replies, FROZENLAKE)
    prompts = output.extra_fields["oel_turn_prompts"]
    # The last recorded conversation, plus the model's last reply, is the whole episode.
    conversation = [*prompts[-1], {"role": "assistant", "content": output.extra_fields["oel_replies"][-1]}]
    rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    decoded = tokenizer.decode(output.prompt_ids + output.response_ids)
    assert rendered.startswith(decoded) and rendered[len(decoded) :].strip() == ""


def test_each_turn_prompt_continues_the_previous_one(tokenizer):
    """Token-in/token-out: the prompt sent at turn k+1 extends the tokens of turn k."""
    output, server = play(tokenizer, ["[right]", "[down]", "[left]", "[up]", "[right]"], FROZENLAKE)
    for before, after, sampled in zip(server.calls, server.calls[1:], server.outputs, strict=False):
        assert (
            after["prompt_ids"][: len(before["prompt_ids"]) + len(sampled)] == before["prompt_ids"] + sampled
        )


def test_an_overlong_episode_is_cut_at_the_response_cap(tokenizer):
    long_reply = "let me think " * 40 + "[right]"
    output, server = play(tokenizer, [long_reply] * 5, FROZENLAKE, response_length=150)
    assert len(output.response_ids) == len(output.response_mask) <= 150
    assert all(call["max_tokens"] <= 150 for call in server.calls)
    # The first reply (123 tokens) and the next board no longer fit in 150: it ends, cut, after turn 1.
    assert output.extra_fields["oel_truncated"] is True and output.extra_fields["oel_turns"] == 1


def test_a_prompt_verl_would_cut_is_an_error_naming_the_key(tokenizer):
    """verl left-truncates a prompt beyond rollout.prompt_length with a log line; the game loop refuses it
    before anything is sampled, here a prompt whose knowledge makes it longer than the limit."""
    spec = EpisodeSpec(
        game="frozenlake", seed=3, settings={"max_turns": 5}, knowledge="- EXPERIENCE ITEM: go right. " * 40
    )
    plain, _ = play(tokenizer, ["[right]"] * 5, FROZENLAKE)
    limit = len(plain.prompt_ids) + 20  # room for the plain prompt, not for the knowledge
    play(tokenizer, ["[right]"] * 5, FROZENLAKE, prompt_length=limit)
    with pytest.raises(
        PromptTooLongError, match=r"actor_rollout_ref\.rollout\.prompt_length.*=\d+: a prompt of"
    ):
        play(tokenizer, ["[right]"] * 5, spec, prompt_length=limit)


@pytest.mark.parametrize("mode", ["per_turn", "conversation"])
def test_a_turn_prompt_without_knowledge_over_the_students_length_is_an_error(tokenizer, mode):
    """Without knowledge a turn prompt must fit data.max_prompt_length (the student's prompt, which the
    launch check's bounds count on), however much room rollout.prompt_length leaves; with knowledge the
    same turn may be longer, up to rollout.prompt_length."""
    plain = EpisodeSpec(game="frozenlake", seed=3, settings={"max_turns": 5}, mode=mode)
    knowing = replace(plain, knowledge="- EXPERIENCE ITEM: go right.")
    _, server = play(tokenizer, ["[right]"] * 5, plain)
    # A conversation's prompt is its first message; a per-turn game's, every turn's (the last is longest).
    prompts = server.calls if mode == "per_turn" else server.calls[:1]
    longest = max(len(call["prompt_ids"]) for call in prompts)
    play(tokenizer, ["[right]"] * 5, plain, student_prompt_length=longest)
    play(tokenizer, ["[right]"] * 5, knowing, student_prompt_length=longest - 1)
    with pytest.raises(PromptTooLongError, match=rf"data\.max_prompt_length={longest - 1}: a game turn's"):
        play(tokenizer, ["[right]"] * 5, plain, student_prompt_length=longest - 1)


def test_unparseable_and_invalid_actions_are_counted(tokenizer):
    # FrozenLake: no bracketed move is unparseable; the game decides how many it tolerates.
    output, _ = play(tokenizer, ["I am not sure", "hmm", "still thinking", "no idea", "pass"], FROZENLAKE)
    fields = output.extra_fields
    assert fields["oel_invalid_actions"] == fields["oel_turns"] >= 1
    assert fields["oel_won"] is False and fields["oel_reason"]


def test_per_turn_mode_records_each_turn_as_a_fresh_prompt(tokenizer):
    spec = EpisodeSpec(game="frozenlake", seed=3, settings={"max_turns": 3}, mode="per_turn")
    output, server = play(tokenizer, ["[right]", "[down]", "[left]"], spec)
    prompts = output.extra_fields["oel_turn_prompts"]
    assert len(prompts) == len(server.calls) == output.extra_fields["oel_turns"]
    for messages in prompts:
        assert [m["role"] for m in messages] == ["system", "user"]
    # Each fresh prompt holds the game log so far, so later prompts repeat earlier turns.
    first_observation = prompts[0][1]["content"].rsplit("\n\nTurn 1 of", 1)[0]
    assert len(prompts) > 1 and all(first_observation in m[1]["content"] for m in prompts)
    assert "Turn 1, your action:" in prompts[-1][1]["content"]
    # The returned sample is the last turn: all of it is model tokens.
    assert output.response_mask == [1] * len(output.response_ids)


def test_knowledge_goes_where_the_consolidation_teacher_reads_it(tokenizer):
    knowledge = "- EXPERIENCE ITEM: go right"
    spec = EpisodeSpec(game="frozenlake", seed=3, settings={"max_turns": 1}, knowledge=knowledge)
    output, _ = play(tokenizer, ["[right]"], spec)
    with_knowledge_prompt = output.extra_fields["oel_turn_prompts"][0]
    plain, _ = play(tokenizer, ["[right]"], replace(spec, knowledge=""))
    plain_prompt = plain.extra_fields["oel_turn_prompts"][0]
    assert "go right" not in str(plain_prompt)
    # Exactly the teacher's prompt for this student prompt: one placement for every path.
    assert with_knowledge_prompt == with_knowledge(plain_prompt, knowledge, DEFAULT_KNOWLEDGE_TEMPLATE)
    assert "go right" in with_knowledge_prompt[1]["content"]


def test_per_turn_mode_with_record_dir_saves_the_episode_for_deployment(tokenizer, tmp_path):
    spec = EpisodeSpec(
        game="frozenlake", seed=3, settings={"max_turns": 3}, mode="per_turn", record_dir=str(tmp_path)
    )
    output, _ = play(tokenizer, ["[right]", "[down]", "[left]"], spec)
    saved = json.loads((tmp_path / "episode_3.json").read_text())
    assert saved["turn_prompts"] == output.extra_fields["oel_turn_prompts"]
    assert (saved["game"], saved["seed"], saved["turns"]) == (
        "frozenlake",
        3,
        output.extra_fields["oel_turns"],
    )
    assert (
        saved["won"] == output.extra_fields["oel_won"]
        and saved["reason"] == output.extra_fields["oel_reason"]
    )
    assert [p.name for p in tmp_path.iterdir()] == ["episode_3.json"]  # no temporary left behind


def test_record_dir_needs_per_turn_mode():
    with pytest.raises(ValueError, match="record_dir"):
        EpisodeSpec(game="frozenlake", seed=3, record_dir="/tmp/x")


def test_every_agent_loop_of_the_plugin_refuses_to_cut_a_prompt():
    """verl's own cut (a log warning, the prompt's tail kept) must be unreachable from any row the plugin
    writes: every loop it registers overrides the one method that cuts."""
    import importlib

    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    from verl_oel.agent_loop.prompt_length import RefusesPromptCuts

    ours = {
        name: entry["_target_"]
        for name, entry in _agent_loop_registry.items()
        if entry["_target_"].startswith("verl_oel.")
    }
    assert set(ours) == {"oel_game", "oel_extract_stream", "oel_replay", "oel_ifbench"}
    for name, target in ours.items():
        module, _, cls = target.rpartition(".")
        loop = getattr(importlib.import_module(module), cls)
        assert issubclass(loop, RefusesPromptCuts), name
        assert loop._cap_text_prompt_length is RefusesPromptCuts._cap_text_prompt_length, name
