"""The warmed tiny model's builder: its data are the pipeline's own prompts, it never trains on a held-out
family, and the same seed gives the same bytes.

Not tested here, because not reached yet: the skills themselves (acting on a held-out rule in the prompt,
chance without it, writing the rule from a trajectory). The current two-phase build learns part of the
first one only; see the closing notes of issue 7.
"""

from verl_oel.envs import make_game
from verl_oel.envs.hidden_rule import HELD_OUT_FAMILIES, WARM_FAMILIES
from verl_oel.knowledge import render_items
from verl_oel.models.warm import (
    EVAL_SAMPLING,
    GREEDY,
    WarmModelSpec,
    build_warm_model,
    game_messages,
    rule_item,
)

SEEDS = range(10_000, 10_040)  # 40 games per family and condition
SAMPLINGS = {"sampled": EVAL_SAMPLING, "greedy": GREEDY}


def test_held_out_families_were_never_trained_on():
    assert not set(WarmModelSpec().families) & set(HELD_OUT_FAMILIES)
    assert set(WarmModelSpec().families) == set(WARM_FAMILIES)


def test_prompts_are_the_game_loops():
    game = make_game("hidden-rule", family="ship")
    game.reset(0)
    messages = game_messages(game, render_items([rule_item("ship")]))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == game.instruction
    assert messages[1]["content"].endswith(game.turn_prompt())
    assert "- EXPERIENCE ITEM: [ship] doors lead out." in messages[1]["content"]


def test_same_seed_gives_byte_identical_weights(tmp_path):
    """A shortened build (a few steps) twice: the whole pipeline, data to saved bytes, is seed-exact."""
    spec = WarmModelSpec(
        copy_steps=2, copy_batch=8, steps=2, game_batch=2, extraction_batch=1, copy_batch_late=8
    )
    first = build_warm_model(tmp_path / "a", seed=5, spec=spec)
    again = build_warm_model(tmp_path / "b", seed=5, spec=spec)
    other = build_warm_model(tmp_path / "c", seed=6, spec=spec)
    weights = "model.safetensors"
    assert (first / weights).read_bytes() == (again / weights).read_bytes()
    assert (first / weights).read_bytes() != (other / weights).read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()
