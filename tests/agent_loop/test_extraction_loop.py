"""The ``oel_extract_stream`` agent loop: play, extract, accumulate, save, per stream."""

from __future__ import annotations

import json
from itertools import cycle

import pytest
from scripted_server import ScriptedServer, make_loop, run_loop

from verl_oel.agent_loop.extraction_loop import KnowledgeExtractionLoop, StreamSpec
from verl_oel.agent_loop.prompt_length import PromptTooLongError
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.envs import make_game
from verl_oel.knowledge import load_stream, stream_path
from verl_oel.knowledge.injection import DEFAULT_KNOWLEDGE_TEMPLATE


class GameOrExtraction:
    """Moves for game turns, numbered items for extraction prompts (told apart by the prompt)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.items = 0

    def server(self):
        outer = self

        class Server(ScriptedServer):
            async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
                prompt = outer.tokenizer.decode(prompt_ids)
                if "EXPERIENCE ITEM" in prompt:
                    outer.items += 1
                    self.replies = iter(
                        [f"<think>hmm</think>\n- EXPERIENCE ITEM: rule number {outer.items}."]
                    )
                else:
                    self.replies = cycle(["[right]"])
                return await super().generate(request_id, prompt_ids, sampling_params, **kwargs)

        return Server(self.tokenizer, iter(()))


def stream_spec(tmp_path, stream=0, games=3, cut_after=None, probes=0) -> StreamSpec:
    episode = [
        EpisodeSpec(game="frozenlake", seed=s, settings={"max_turns": 2}, mode="per_turn")
        for s in range(games)
    ]
    return StreamSpec(
        round=1,
        stream=stream,
        games=episode,
        out_dir=str(tmp_path),
        budget_tokens=512,
        cut_after=cut_after,
        in_context_games=[EpisodeSpec(game="frozenlake", seed=99, settings={"max_turns": 2})] * probes,
    )


def extract(tokenizer, specs, prompt_length: int = 4096):
    scripted = GameOrExtraction(tokenizer)
    server = scripted.server()
    loop = make_loop(KnowledgeExtractionLoop, tokenizer, server, prompt_length=prompt_length)
    row = {"extra_info": {"oel_streams": json.dumps([s.to_json() for s in specs])}}
    extract.server = server
    return run_loop(loop, **row)


def test_items_accumulate_with_their_provenance(tmp_path, tokenizer):
    output = extract(tokenizer, [stream_spec(tmp_path, games=3)])
    stream = load_stream(stream_path(tmp_path, 1, 0))
    assert [item.text for item in stream.items] == ["rule number 1.", "rule number 2.", "rule number 3."]
    assert [(item.round, item.stream, item.seed, item.game) for item in stream.items] == [
        (1, 0, 0, "frozenlake"),
        (1, 0, 1, "frozenlake"),
        (1, 0, 2, "frozenlake"),
    ]
    assert all(item.won is False for item in stream.items)  # "[right]" twice never reaches the goal
    # Each reply is one thinking line ("hmm", dropped) and one item (kept).
    assert stream.counts.dropped_in_thinking == 3 and stream.counts.items_kept == 3
    summary = json.loads(output.extra_fields["oel_streams_summary"])[0]
    assert summary["games"] == 3 and summary["items"] == 3


def test_the_training_snapshot_is_taken_at_the_cut_point(tmp_path, tokenizer):
    extract(tokenizer, [stream_spec(tmp_path, games=4, cut_after=2)])
    trained_on = load_stream(stream_path(tmp_path, 1, 0))
    accumulated = load_stream(stream_path(tmp_path / "accumulated", 1, 0))
    assert len(trained_on.items) == 2 and len(accumulated.items) == 4


def test_the_extraction_prompt_holds_the_trajectory_and_previous_knowledge(tmp_path, tokenizer):
    extract(tokenizer, [stream_spec(tmp_path, games=2)])
    prompts = [tokenizer.decode(call["prompt_ids"]) for call in extract.server.calls]
    extraction_prompts = [p for p in prompts if "## Game record" in p]
    assert len(extraction_prompts) == 2  # one per game, in play order
    for seed, prompt in enumerate(extraction_prompts):
        # The game it follows, whole: its first board (each game has its own map), both turns and replies.
        first_board = make_game("frozenlake", max_turns=2).reset(seed).strip()
        assert first_board in prompt, (seed, prompt[:800])
        assert prompt.count("You replied:\n[right]") == 2 and "### Result" in prompt
    knowledge = [p.split("## Experience so far")[1].split("## Your task")[0] for p in extraction_prompts]
    assert "(nothing recorded yet)" in knowledge[0] and "rule number" not in knowledge[0]
    # The second game's prompt shows the item the first one wrote.
    assert "rule number 1." in knowledge[1] and "(nothing recorded yet)" not in knowledge[1]
    log = stream_path(tmp_path / "accumulated", 1, 0).with_suffix(".log.jsonl").read_text().splitlines()
    entries = [json.loads(line) for line in log]
    assert [e["seed"] for e in entries] == [0, 1]
    assert entries[0]["reply"].endswith("rule number 1.")
    assert entries[1]["items"] == 2


def test_an_extraction_prompt_verl_would_cut_is_an_error_and_nothing_is_saved(tmp_path, tokenizer):
    """The whole game record plus the knowledge must reach the model: the per-turn game prompts fit in 300
    tokens here, the extraction prompt (record, knowledge, task) does not, and verl would keep its tail."""
    with pytest.raises(PromptTooLongError, match=r"rollout\.prompt_length.*=300: a prompt of \d+ tokens"):
        extract(tokenizer, [stream_spec(tmp_path, games=2)], prompt_length=300)
    assert extract.server.calls  # the game itself was played: only the extraction prompt was too long
    assert not stream_path(tmp_path, 1, 0).exists()


def test_several_streams_in_one_row_are_built_one_after_another(tmp_path, tokenizer):
    output = extract(
        tokenizer, [stream_spec(tmp_path, stream=0, games=1), stream_spec(tmp_path, stream=1, games=1)]
    )
    assert stream_path(tmp_path, 1, 0).is_file() and stream_path(tmp_path, 1, 1).is_file()
    assert len(json.loads(output.extra_fields["oel_streams_summary"])) == 2


def test_in_context_probes_play_with_the_knowledge_so_far(tmp_path, tokenizer):
    output = extract(tokenizer, [stream_spec(tmp_path, games=2, probes=1)])
    summary = json.loads(output.extra_fields["oel_streams_summary"])[0]
    assert len(summary["in_context_passes"]) == 2
    # The probe games (seed 99) are the only game prompts with knowledge in context.
    prompts = [tokenizer.decode(call["prompt_ids"]) for call in extract.server.calls]
    knowledge_heading = DEFAULT_KNOWLEDGE_TEMPLATE.split("{knowledge}")[0]
    probe_prompts = [p for p in prompts if knowledge_heading in p]
    assert probe_prompts and all("rule number 1." in p for p in probe_prompts)
