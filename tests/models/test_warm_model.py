"""The warmed tiny model: on HELD-OUT hidden-rule families it acts on a rule in its prompt, plays at
chance without one (it opens a door of the room, mostly the first listed, and the game shuffles its
doors), and writes the rule a trajectory shows as a parseable experience item.

The model is built once per machine into the shared test cache (the build skips a folder holding the
same build), so only the first session pays the few minutes of the build.
"""

import dataclasses
import hashlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from verl_oel.envs import make_game
from verl_oel.envs.hidden_rule import HELD_OUT_FAMILIES, WARM_FAMILIES
from verl_oel.knowledge import DEFAULT_MARKER, parse_items, render_items
from verl_oel.models.build_folder import BUILD_INFO_FILE
from verl_oel.models.tokenizer import CHATML_TEMPLATE
from verl_oel.models.warm import (
    EVAL_SAMPLING,
    GREEDY,
    WarmModelSpec,
    build_warm_model,
    extract_replies,
    extraction_messages,
    game_messages,
    play_corridor_games,
    play_games,
    rule_item,
)
from verl_oel.models.warm.train import KERNEL_VARIABLES

pytestmark = pytest.mark.warm_model

SEEDS = range(10_000, 10_040)  # 40 games per family and condition

# The seed-0 build's bytes on the CPU its behaviour was measured on, the reference CPU (an AMD EPYC with
# AVX512; README "The warm build"). The build trains with the CPU's own float kernels, and another CPU
# builds another model from the same settings (measured: an Intel Xeon's build of an earlier recipe wrote
# the held-out rule from 19/40 lost games, the reference's from 39/40). The behaviour bars below are the
# reference build's: on any other build the behaviour tests still run and report XFAIL (XPASS where they
# pass), and the learning tests (``tests/oel/test_oel_*learns_cpu.py``) decide whether that build learns.
REFERENCE_BUILD_SHA256_PREFIX = "8cf124b1"
SAMPLINGS = {"sampled": EVAL_SAMPLING, "greedy": GREEDY}


@pytest.fixture(scope="module")
def warm(warm_model_dir):
    torch.set_num_threads(2)
    tokenizer = AutoTokenizer.from_pretrained(warm_model_dir)
    model = AutoModelForCausalLM.from_pretrained(warm_model_dir, dtype=torch.float32)
    return model.eval(), tokenizer


@pytest.fixture
def reference_build(warm_model_dir, request):
    """Marks the test XFAIL (not strict) on a build other than the reference CPU's."""
    sha = hashlib.sha256((warm_model_dir / "model.safetensors").read_bytes()).hexdigest()
    if not sha.startswith(REFERENCE_BUILD_SHA256_PREFIX):
        request.applymarker(
            pytest.mark.xfail(
                reason=f"this CPU built another seed-0 model ({sha[:8]}…, "
                f"not {REFERENCE_BUILD_SHA256_PREFIX}…)",
                strict=False,
            )
        )


def _pass_rate(results) -> float:
    return sum(r["won"] for r in results) / len(results)


def test_folder_is_an_ordinary_hf_model_with_the_tiny_tokenizer_and_chat_template(warm_model_dir, warm):
    model, tokenizer = warm
    info = json.loads((warm_model_dir / BUILD_INFO_FILE).read_text())
    assert info["kind"] == "warm" and info["settings"]["held_out_families"] == list(HELD_OUT_FAMILIES)
    assert type(model).__name__ == "Qwen3ForCausalLM" and model.dtype == torch.float32
    assert model.config.head_dim >= 32
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert (
        model.config.eos_token_id == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    )
    assert build_warm_model(warm_model_dir, seed=0) == warm_model_dir  # cached: returns at once


def test_held_out_families_were_never_trained_on():
    assert not set(WarmModelSpec().families) & set(HELD_OUT_FAMILIES)
    assert set(WarmModelSpec().families) == set(WARM_FAMILIES)


@pytest.mark.parametrize("sampling", SAMPLINGS)
@pytest.mark.parametrize("family", HELD_OUT_FAMILIES[:2])
def test_acts_on_a_held_out_rule_in_its_prompt_and_at_chance_without(warm, family, sampling, reference_build):
    model, tokenizer = warm
    knowledge = render_items([rule_item(family)])
    with_rule = _pass_rate(play_games(model, tokenizer, family, SEEDS, knowledge, SAMPLINGS[sampling]))
    without = play_games(model, tokenizer, family, SEEDS, "", SAMPLINGS[sampling])
    opened_a_door = sum(not r["invalid"] for r in without) / len(without)
    print(
        f"{family} {sampling}: with the rule {with_rule:.3f}, without {_pass_rate(without):.3f} "
        f"(a door of the room {opened_a_door:.3f})"
    )
    assert with_rule >= (0.9 if sampling == "greedy" else 0.8)  # sampled at the loop's temperature 0.7
    # At chance without it: a door of the room (a valid action), and a pass rate within about three
    # standard deviations of 1 in 4 over 40 games (the held-out rule is not in the weights).
    assert opened_a_door >= 0.8  # measured 0.875-1.0 over two sessions
    assert 0.05 <= _pass_rate(without) <= 0.45


def test_the_rule_among_other_items_and_repeated_still_works(warm, reference_build):
    model, tokenizer = warm
    family = HELD_OUT_FAMILIES[2]
    knowledge = render_items(
        [
            "Read every door before you choose.",
            rule_item(family),
            "Think briefly, then act.",
            rule_item(family),
        ]
    )
    assert _pass_rate(play_games(model, tokenizer, family, SEEDS, knowledge, GREEDY)) >= 0.9


def test_walks_the_corridor_with_the_held_out_rule_and_writes_it_from_its_own_corridor_games(
    warm, reference_build
):
    """The multi-turn corridor (3 rooms of 5 doors, 7 turns; every turn prompt holds the game log): with the
    rule in its prompt the build walks straight through; without it it is stuck at locked doors; from its
    own lost games it writes the rule (the plaque's sign, not the one it kept naming)."""
    model, tokenizer = warm
    family = HELD_OUT_FAMILIES[0]
    seeds = SEEDS[:20]
    with_rule = play_corridor_games(
        model, tokenizer, family, seeds, render_items([rule_item(family)]), GREEDY
    )
    without = play_corridor_games(model, tokenizer, family, seeds, "", EVAL_SAMPLING)
    lost = [game for game in without if not game["won"]]
    replies = extract_replies(model, tokenizer, lost, "", EVAL_SAMPLING)
    named = sum(
        reply.startswith(DEFAULT_MARKER) and any(f"[{family}]" in item for item in parse_items(reply).items)
        for reply in replies
    )
    turns = sum(game["turns"] for game in with_rule) / len(with_rule)
    print(
        f"corridor {family}: with the rule {_pass_rate(with_rule):.2f} in {turns:.1f} turns, without "
        f"{_pass_rate(without):.2f}; writes the rule from {named}/{len(lost)} lost games"
    )
    assert _pass_rate(with_rule) >= 0.9 and turns <= 3.5  # 3 turns: one door a room
    assert _pass_rate(without) <= 0.45  # a random door each turn wins 16 %
    assert lost and named / len(lost) >= 0.8


@pytest.mark.parametrize("sampling", SAMPLINGS)
def test_writes_the_held_out_rule_from_won_and_lost_trajectories(warm, sampling, reference_build):
    model, tokenizer = warm
    family = HELD_OUT_FAMILIES[0]
    # Lost games (played without the rule) and won ones (played with it).
    played = play_games(model, tokenizer, family, SEEDS[:20], "", SAMPLINGS[sampling])
    played += play_games(model, tokenizer, family, SEEDS[20:], render_items([rule_item(family)]), GREEDY)
    assert {p["won"] for p in played} == {True, False}
    for knowledge in ("", render_items([rule_item(family)])):
        replies = extract_replies(model, tokenizer, played, knowledge, SAMPLINGS[sampling])
        named = [
            any(f"[{family}]" in item for item in parse_items(reply).items)
            and reply.startswith(DEFAULT_MARKER)
            for reply in replies
        ]
        print(f"extraction {sampling}, knowledge {bool(knowledge)}: {sum(named)}/{len(named)}")
        assert sum(named) / len(named) >= 0.9


@pytest.mark.parametrize("knowledge", ["", render_items([rule_item("ship")])])
def test_prompts_are_the_game_loops(knowledge):
    """The warm-up trains on copies of the agent loops' prompt builders (those modules import verl): the
    copies must give the very messages the loops send, with and without knowledge."""
    from verl_oel.agent_loop.extraction_loop import game_record
    from verl_oel.agent_loop.game_loop import EpisodeRecord, opening_messages
    from verl_oel.knowledge import build_extraction_messages

    for family in ("ship", HELD_OUT_FAMILIES[0]):
        game = make_game("hidden-rule", family=family)
        game.reset(0)
        assert game_messages(game, knowledge) == opening_messages(
            game.instruction, game.turn_prompt(), knowledge
        )
        first = game.turn_prompt()
        answer = game.step("[left]").observation
        record = EpisodeRecord(
            won=False, reason="wrong door", observations=[first, answer], replies=["[left]", "[right]"]
        )
        assert extraction_messages(
            game.instruction, record.observations, record.replies, record.won, record.reason, knowledge
        ) == build_extraction_messages(game_record(game.instruction, record), knowledge)


# A shortened build: a few steps of every phase, a few examples of every kind.
SHORT_SPEC = WarmModelSpec(
    copy_steps=2,
    copy_batch=8,
    steps=2,
    game_batch=2,
    extraction_batch=1,
    copy_batch_late=4,
    log_copy_steps=2,
    log_copy_batch=4,
    corridor_steps=2,
    corridor_batch=2,
    corridor_extraction_batch=2,
    log_copy_batch_late=1,
)


def test_same_seed_gives_byte_identical_weights(tmp_path):
    """A shortened build twice: the whole pipeline, data to saved bytes, is seed-exact."""
    first = build_warm_model(tmp_path / "a", seed=5, spec=SHORT_SPEC)
    again = build_warm_model(tmp_path / "b", seed=5, spec=SHORT_SPEC)
    other = build_warm_model(tmp_path / "c", seed=6, spec=SHORT_SPEC)
    weights = "model.safetensors"
    assert (first / weights).read_bytes() == (again / weights).read_bytes()
    assert (first / weights).read_bytes() != (other / weights).read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other / "tokenizer.json").read_bytes()


def test_the_callers_kernel_variables_do_not_reach_the_build(tmp_path, monkeypatch):
    """The caller's environment asks for ATen's portable kernels and MKL's compatible branch: the build
    trains with the CPU's own kernels all the same (the control below shows those variables would change
    the bytes), and its cache key says so."""
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    native = build_warm_model(tmp_path / "native", seed=5, spec=SHORT_SPEC)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    asked = build_warm_model(tmp_path / "asked", seed=5, spec=SHORT_SPEC)
    weights = "model.safetensors"
    assert (native / weights).read_bytes() == (asked / weights).read_bytes()
    info = json.loads((asked / BUILD_INFO_FILE).read_text())
    assert info["settings"]["numerics"] == "native"


def test_kernel_variables_that_reach_the_training_change_the_bytes(python_in_subprocess, monkeypatch):
    """The control of the test above: the same short training in processes that do get ATen's or MKL's
    variable trains other weights, so the equality above is the build's doing."""
    script = f"""
import hashlib, json, torch
from verl_oel.models.warm import WarmModelSpec, train_warm_model
torch.backends.mkldnn.enabled = False  # as the build's process
spec = WarmModelSpec.from_dict(json.loads({json.dumps(json.dumps(dataclasses.asdict(SHORT_SPEC)))}))
model, _ = train_warm_model(spec, 5, log_every=0)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(tensor.numpy().tobytes())
print(digest.hexdigest())
"""
    kernels = {
        "native": {},
        "ATen portable": {"ATEN_CPU_CAPABILITY": "default"},
        "MKL compatible": {"MKL_CBWR": "COMPATIBLE"},
    }
    for name in KERNEL_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    digests = {}
    for name, env in kernels.items():
        proc = python_in_subprocess(script, env=env)
        assert proc.returncode == 0, (name, proc.returncode, proc.stderr[-2000:])
        digests[name] = proc.stdout.split()[-1]
    assert digests["native"] != digests["ATen portable"]
    assert digests["native"] != digests["MKL compatible"]


def test_the_training_process_refuses_kernel_variables(python_in_subprocess, tmp_path):
    """The parent starts it without them; one that got there anyway would train other bytes unnoticed."""
    script = f"""
import json, dataclasses
from verl_oel.models.warm.__main__ import main
from verl_oel.models.warm import WarmModelSpec
main(["--seed", "5", "--spec", json.dumps(dataclasses.asdict(WarmModelSpec())), "--out", {str(tmp_path)!r}])
"""
    proc = python_in_subprocess(script, env={"MKL_CBWR": "AUTO"})
    assert proc.returncode != 0
    assert "float kernels chosen by the environment (MKL_CBWR)" in proc.stderr
    assert not list(tmp_path.iterdir())
