"""The launch check's bounds on each kind of prompt hold for the prompts the real loops send.

An extraction stream is played through the real loop (verl's continuous-token builder, the tiny model's
tokenizer, FrozenLake), with every reply as long as its cap allows and the knowledge stream filled to its
budget; every prompt the scripted server receives is measured against ``verl_oel.oel.prompt_bounds``.
"""

from __future__ import annotations

import json

import pytest
from scripted_server import ScriptedServer, make_loop, run_loop

from verl_oel.agent_loop.extraction_loop import KnowledgeExtractionLoop, StreamSpec
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.envs import make_game
from verl_oel.knowledge import DEFAULT_MARKER, load_stream, stream_path
from verl_oel.knowledge.injection import DEFAULT_KNOWLEDGE_TEMPLATE
from verl_oel.oel.prompt_bounds import PromptCounter, prompt_bounds

TURNS, TURN_CAP, ITEM_CAP, BUDGET, RESPONSE = 5, 160, 40, 160, 192
SEEDS = (0, 1, 3, 4, 5, 7)
"""FrozenLake maps where stepping right and back left never falls into a hole."""


class LongReplies(ScriptedServer):
    """Game turns: a move, then filler up to the turn cap (right, left, right, ...: on the seeds below no
    game ends before its last turn); extraction prompts: an item filling the item cap."""

    def __init__(self, tokenizer):
        super().__init__(tokenizer, iter(()))
        self.turn = 0

    async def generate(self, request_id, prompt_ids, sampling_params, **kwargs):
        prompt = self.tokenizer.decode(prompt_ids)
        if "## Game record" in prompt:
            words = " ".join(f"lesson{self.turn}-{i}" for i in range(40))
            self.replies = iter([f"{DEFAULT_MARKER} {words}"])
        else:
            move = "[right]" if self.turn % 2 == 0 else "[left]"
            self.replies = iter([f"{move} " + "and so I think about it " * 40])
        self.turn += 1
        return await super().generate(request_id, prompt_ids, sampling_params, **kwargs)


@pytest.fixture(scope="module")
def played(tokenizer, tmp_path_factory):
    """Every prompt one stream of 6 games (each followed by an in-context probe) sent, by kind."""
    out = tmp_path_factory.mktemp("stream")

    def game(seed: int) -> EpisodeSpec:
        return EpisodeSpec(
            game="frozenlake",
            seed=seed,
            settings={"max_turns": TURNS},
            mode="per_turn",
            max_turn_tokens=TURN_CAP,
        )

    spec = StreamSpec(
        round=1,
        stream=0,
        games=[game(seed) for seed in SEEDS],
        out_dir=str(out),
        budget_tokens=BUDGET,
        max_item_tokens=ITEM_CAP,
        in_context_games=[game(8)],
    )
    server = LongReplies(tokenizer)
    loop = make_loop(KnowledgeExtractionLoop, tokenizer, server, response_length=RESPONSE)
    run_loop(loop, extra_info={"oel_streams": json.dumps([spec.to_json()])})
    kinds: dict[str, list[int]] = {"turn": [], "with_knowledge": [], "extraction": []}
    for call in server.calls:
        prompt = tokenizer.decode(call["prompt_ids"])
        kind = (
            "extraction"
            if "## Game record" in prompt
            else "with_knowledge"
            if "Experiential knowledge from earlier games" in prompt
            else "turn"
        )
        kinds[kind].append(len(call["prompt_ids"]))
    stream = load_stream(stream_path(out, 1, 0))
    return kinds, stream, server


def _bounds(tokenizer, turn_prompt_tokens: int, counter: PromptCounter | None = None):
    return prompt_bounds(
        counter=counter or PromptCounter.from_tokenizer(tokenizer),
        turn_prompt_tokens=turn_prompt_tokens,
        response_length=RESPONSE,
        max_turns=TURNS,
        extraction_reply_cap=TURN_CAP,
        budget_tokens=BUDGET,
        show_previous_knowledge=True,
        marker=DEFAULT_MARKER,
        knowledge_template=DEFAULT_KNOWLEDGE_TEMPLATE,
        knowledge_in_context=True,
    )


def test_the_stream_exercises_the_worst_case(tokenizer, played):
    """Full games, replies at their cap and a knowledge stream at its budget: else the bounds prove little."""
    kinds, stream, server = played
    game_replies = [len(ids) for ids in server.outputs if len(ids) > ITEM_CAP]
    assert game_replies and set(game_replies) == {TURN_CAP}
    assert len(kinds["turn"]) == 6 * TURNS and len(kinds["extraction"]) == 6
    rendered = len(tokenizer.encode(stream.render(), add_special_tokens=False))
    assert BUDGET - ITEM_CAP < rendered <= BUDGET  # no room for one more item: the stream is full
    assert make_game("frozenlake", max_turns=TURNS).max_turns == TURNS


def test_every_prompt_is_within_the_bound_of_its_kind(tokenizer, played):
    kinds, _, _ = played
    # data.max_prompt_length the smallest a recipe could set for these games: their longest turn prompt.
    turn_prompt = max(kinds["turn"])
    bounds = _bounds(tokenizer, turn_prompt)
    assert max(kinds["with_knowledge"]) <= bounds.turn_with_knowledge.tokens
    assert max(kinds["extraction"]) <= bounds.extraction.tokens
    assert bounds.longest is bounds.extraction
    # Safe is not enough: a bound of any huge number would pass the lines above. Measured slack: 259 of
    # 2,266 tokens (11 %; the longest extraction prompt is 2,007): the outcome reason's allowance (128 bytes;
    # FrozenLake's reason is 5 tokens), 52 seam tokens, and the turn prompt's own headers counted inside
    # data.max_prompt_length. Less than the replies' 5 x 160 tokens, so a bound without them fails here.
    slack = bounds.extraction.tokens - max(kinds["extraction"])
    assert 0 <= slack < 0.2 * bounds.extraction.tokens, (slack, bounds.extraction.line())


def test_without_the_tokenizer_the_byte_bound_is_larger_still(tokenizer, played):
    kinds, _, _ = played
    exact = _bounds(tokenizer, max(kinds["turn"]))
    by_bytes = _bounds(tokenizer, max(kinds["turn"]), PromptCounter.utf8_bound())
    assert by_bytes.extraction.tokens > exact.extraction.tokens
    assert by_bytes.turn_with_knowledge.tokens >= exact.turn_with_knowledge.tokens
