"""Every recipe composes and validates without a GPU; a broken OEL recipe fails before any worker starts."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from verl_oel.distill.config import OEL_LOOP_KEYS, ConsolidationConfig
from verl_oel.oel.config import EXTRACTION_FROM_LOOP, OELConfig
from verl_oel.oel.extraction_stage import ExtractionConfig
from verl_oel.oel.launcher import load_oel_recipe, run_oel
from verl_oel.recipe_checks import RecipeError, check_recipe, derived_lengths
from verl_oel.recipe_loader import compose_recipe, list_recipes

BASES = ("cpu_base", "oel_cpu_demo_base")
"""Composed by other recipes, never run alone (and so without Hydra's search path)."""

RECIPES = [name for name in list_recipes() if name not in BASES]
OEL_RECIPES = [name for name in RECIPES if name.startswith(("oel_", "oel-"))]


def _on_cpu(config) -> bool:
    return OmegaConf.select(config, "process_env.VERL_PLATFORM", default=None) == "cpu"


def _compose(name: str, tiny_model_dir: Path, *overrides: str):
    """CPU recipes run the local tiny model; GPU recipes keep their hub ids, which GPU machines fetch."""
    config = compose_recipe(name)
    model = [f"actor_rollout_ref.model.path={tiny_model_dir}"] if _on_cpu(config) else []
    return compose_recipe(name, [*model, *overrides])


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_composes_and_its_oel_section_parses(name, tiny_model_dir):
    config = _compose(name, tiny_model_dir)
    section = OmegaConf.to_container(config.get("oel") or OmegaConf.create({}), resolve=True)
    ConsolidationConfig.from_mapping(section)
    if "rounds" in section:
        OELConfig.from_mapping(section)


@pytest.mark.parametrize("name", OEL_RECIPES)
def test_every_oel_recipe_passes_the_launch_checks(name, tiny_model_dir):
    config = _compose(name, tiny_model_dir)
    check_recipe(config)
    if not _on_cpu(config):
        # GPU recipes compose verl's ppo_trainer directly, never the CPU base.
        assert config.trainer.device != "cpu" and "VERL_PLATFORM" not in (config.get("process_env") or {})
        assert config.actor_rollout_ref.rollout.temperature == 0.7
        assert config.data.max_response_length == 1024
        assert config.oel.extraction.num_streams == 10 and config.oel.evaluation.games == 128


def test_the_loop_keys_consolidation_skips_are_exactly_the_loops_fields():
    assert OEL_LOOP_KEYS == {f.name for f in fields(OELConfig)}


def test_the_extraction_fields_set_from_the_loop_are_extraction_fields_and_not_its_keys():
    extraction_fields = {f.name for f in fields(ExtractionConfig)}
    assert set(EXTRACTION_FROM_LOOP) <= extraction_fields
    loop = {"rounds": 1, "game": "hidden-rule", "game_settings": {"family": "ship"}, "seed": 7}
    config = OELConfig.from_mapping(loop)
    assert (config.extraction.game, config.extraction.settings, config.extraction.base_seed) == (
        "hidden-rule",
        {"family": "ship"},
        7,
    )
    with pytest.raises(ValueError, match="oel.extraction.base_seed"):
        OELConfig.from_mapping({**loop, "extraction": {"base_seed": 7}})


@pytest.mark.parametrize(
    "override",
    [
        "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
        "actor_rollout_ref.ref.ulysses_sequence_parallel_size=2",
        "actor_rollout_ref.model.use_fused_kernels=true",
        "actor_rollout_ref.actor.strategy=megatron",
        "actor_rollout_ref.model.lora_rank=16",
    ],
)
def test_a_verl_option_the_passes_cannot_honour_is_refused_naming_the_key(tiny_model_dir, override):
    """On the paper's GPU recipe, composed on this CPU machine: refused before any worker starts."""
    config = _compose("oel_frozenlake_qwen3_4b", tiny_model_dir, override)
    check_recipe(_compose("oel_frozenlake_qwen3_4b", tiny_model_dir))  # the recipe itself passes
    with pytest.raises(RecipeError) as error:
        check_recipe(config)
    key = override.split("=")[0]
    (line,) = [line for line in str(error.value).splitlines() if f"{key}=" in line]
    assert "not supported" in line or "FSDP engine only" in line


@pytest.mark.parametrize("budget", [4096, 128])
def test_a_knowledge_budget_the_teacher_cannot_read_fails_naming_the_keys(tiny_model_dir, budget):
    """128 = oel_cpu_tiny's oel.max_knowledge_length: a full stream plus the template's own tokens would not
    fit (the worker would raise TeacherPromptTooLongError mid-run), so the launch refuses it."""
    config = _compose("oel_cpu_tiny", tiny_model_dir, f"oel.extraction.budget_tokens={budget}")
    with pytest.raises(
        RecipeError,
        match=rf"oel\.extraction\.budget_tokens={budget} \+ \d+ tokens that oel\.knowledge_template may add "
        r"around it = \d+ exceeds oel\.max_knowledge_length=128",
    ):
        check_recipe(config)


def test_a_deployment_that_cannot_fill_a_batch_fails_at_start_naming_the_keys(tiny_model_dir):
    config = _compose("oel_cpu_tiny", tiny_model_dir, "oel.deployment.games=1")
    with pytest.raises(RecipeError, match=r"oel\.deployment\.games=1 is fewer than data\.train_batch_size=4"):
        check_recipe(config)


def test_a_turn_cap_longer_than_the_response_fails_naming_the_key(tiny_model_dir):
    config = _compose("oel_cpu_tiny", tiny_model_dir, "oel.deployment.max_turn_tokens=64")
    with pytest.raises(
        RecipeError, match=r"oel\.deployment\.max_turn_tokens=64 exceeds data\.max_response_length"
    ):
        check_recipe(config)


def test_an_ifbench_reply_cap_longer_than_the_response_fails_naming_the_key(tiny_model_dir):
    config = _compose(
        "oel_cpu_tiny", tiny_model_dir, "+oel.ood.ifbench_prompts=2", "+oel.ood.ifbench_max_tokens=64"
    )
    with pytest.raises(
        RecipeError, match=r"oel\.ood\.ifbench_max_tokens=64 exceeds data\.max_response_length"
    ):
        check_recipe(config)


def test_the_longest_ifbench_prompt_bounds_the_rollout_and_a_context_without_room_is_refused(tiny_model_dir):
    """All 265 prompts: the longest (8,665 characters) is the longest prompt the tiny demo would roll out,
    which its context cannot hold; the launch check names it before anything starts."""
    config = _compose("oel_cpu_tiny", tiny_model_dir, "+oel.ood.ifbench_prompts=all")
    with pytest.raises(
        RecipeError,
        match=r"actor_rollout_ref\.rollout\.max_model_len=1664 is shorter than "
        r"actor_rollout_ref\.rollout\.prompt_length \(derived: the longest prompt, an IFBench prompt\) \d+ "
        r"\+ data\.max_response_length 16",
    ):
        check_recipe(config)
    (derived,) = derived_lengths(_compose("oel_cpu_tiny", tiny_model_dir, "+oel.ood.ifbench_prompts=4"))
    assert "extraction prompt" in derived.why  # 4 short prompts: the extraction prompt stays the longest


def _demo_extraction_prompt_tokens(tiny_model_dir) -> tuple[int, int]:
    """(turn prompt, extraction prompt) tokens of one oel-cpu-demo game, as its loops build them: a
    hidden-rule game, an 8-token reply, and 64 tokens of knowledge (the demo's budget)."""
    from transformers import AutoTokenizer

    from verl_oel.agent_loop.extraction_loop import game_record
    from verl_oel.agent_loop.game_loop import EpisodeRecord, opening_messages
    from verl_oel.envs import make_game
    from verl_oel.knowledge import build_extraction_messages

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)

    def count(messages):
        ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    game = make_game("hidden-rule", family="ship", num_doors=4)
    first = game.reset(0)
    turn = count(opening_messages(game.instruction, game.turn_prompt(), ""))
    reply = tokenizer.decode(tokenizer.encode(" [ship] " * 8, add_special_tokens=False)[:8])
    result = game.step(reply)
    record = EpisodeRecord(observations=[first, result.observation], replies=[reply], won=True, reason="r")
    knowledge = tokenizer.decode(tokenizer.encode("- EXPERIENCE ITEM: open the ship door. " * 20)[:64])
    return turn, count(build_extraction_messages(game_record(game.instruction, record), knowledge))


def test_the_demo_with_a_short_prompt_length_derives_a_rollout_length_that_holds_every_prompt(tiny_model_dir):
    """The issue's reproduction (data.max_prompt_length=180, extraction prompts of ~440 tokens): it passes the
    launch checks because the launch derives rollout.prompt_length from the budgets, which holds the
    extraction prompt; its turn prompts (151 tokens) fit the 180 the run-time check enforces."""
    config = _compose("oel-cpu-demo", tiny_model_dir, "data.max_prompt_length=180")
    check_recipe(config)
    (derived,) = derived_lengths(config)
    assert derived.key == "actor_rollout_ref.rollout.prompt_length"
    turn, extraction = _demo_extraction_prompt_tokens(tiny_model_dir)
    assert turn <= 180 < extraction <= derived.value
    assert derived.override() == f"actor_rollout_ref.rollout.prompt_length={derived.value}"
    # The recipe as shipped derives its own, longer length; a recipe that sets the key keeps it.
    assert derived_lengths(_compose("oel-cpu-demo", tiny_model_dir))[0].value > derived.value
    assert (
        derived_lengths(
            _compose("oel-cpu-demo", tiny_model_dir, "actor_rollout_ref.rollout.prompt_length=1060")
        )
        == []
    )


def test_a_rollout_prompt_length_shorter_than_the_longest_prompt_is_refused_naming_it(tiny_model_dir):
    config = _compose("oel-cpu-demo", tiny_model_dir, "actor_rollout_ref.rollout.prompt_length=300")
    with pytest.raises(
        RecipeError,
        match=r"actor_rollout_ref\.rollout\.prompt_length=300 is shorter than the longest prompt the run can "
        r"roll out, an extraction prompt: .* = \d+: verl would cut it",
    ):
        check_recipe(config)


def test_a_context_too_short_for_the_longest_prompt_and_a_reply_is_refused_naming_the_keys(tiny_model_dir):
    config = _compose("oel-cpu-demo", tiny_model_dir, "actor_rollout_ref.rollout.max_model_len=768")
    with pytest.raises(
        RecipeError,
        match=r"actor_rollout_ref\.rollout\.max_model_len=768 is shorter than "
        r"actor_rollout_ref\.rollout\.prompt_length \(derived: .*\) \d+ \+ data\.max_response_length 16",
    ):
        check_recipe(config)


def test_an_unknown_game_fails_before_any_worker_starts(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    code = run_oel(
        "oel_cpu_tiny",
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            "oel.game=chess",
            f"trainer.default_local_dir={run_dir}",
        ],
    )
    assert code == 2
    error = capsys.readouterr().err
    assert "oel.game='chess'" in error and "frozenlake" in error and "sokoban" in error
    assert not run_dir.exists()  # nothing started: no run directory, no lock


def test_an_unknown_loop_key_is_named(tiny_model_dir):
    with pytest.raises(RecipeError, match=r"oel\.roundz: unknown key"):
        load_oel_recipe("oel_cpu_tiny", [f"actor_rollout_ref.model.path={tiny_model_dir}", "+oel.roundz=3"])


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("oel-cpu-demo-moving-teacher", "oel.teacher", "moving"),
        ("oel-cpu-demo-raw-trajectories", "oel.extraction.knowledge_source", "trajectories"),
        ("oel-cpu-demo-in-context", "oel.consolidation_steps", 0),
        ("oel-cpu-demo-online", "oel.mode", "online"),
        ("oel-cpu-demo-forward-kl", "oel.loss", "forward_kl"),
    ],
)
def test_each_ablation_is_the_demo_with_its_one_change(name, key, value, tiny_model_dir):
    demo, ablation = (_compose(recipe, tiny_model_dir) for recipe in ("oel-cpu-demo", name))
    assert OmegaConf.select(ablation, key) == value != OmegaConf.select(demo, key)
    loops = [OELConfig.from_mapping(OmegaConf.to_container(c.oel, resolve=True)) for c in (demo, ablation)]
    assert (loops[0].game, loops[0].game_settings, loops[0].seed) == (
        loops[1].game,
        loops[1].game_settings,
        loops[1].seed,
    )
    assert loops[1].skip_stages == (
        ("teacher_refresh", "deployment", "consolidation", "checkpoint")
        if key == "oel.consolidation_steps"
        else ()
    )


def test_a_run_recipe_on_the_lone_consolidation_trainer_fails_naming_the_key(tiny_model_dir):
    config = _compose("oel_cpu_tiny", tiny_model_dir, "trainer.v1.trainer_mode=oel_consolidation")
    with pytest.raises(
        RecipeError, match=r"trainer\.v1\.trainer_mode='oel_consolidation'.*trainer_mode=oel\b"
    ):
        check_recipe(config)
