"""``verl-oel train --dry-run``: what a launch would run with, checked, without starting anything.

Composes the recipe with its overrides, runs every launch check (``recipe_checks.check_recipe``), and
prints the resolved lengths and budgets and the ``oel:`` section. No Ray, no weights: the model folder's
``config.json`` and tokenizer are read when they are on disk, and the checks they feed are named as
skipped (or bounded without them) when they are not, so a GPU recipe can be checked on a laptop.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .recipe_checks import RecipeError, check_recipe, derived_lengths, oel_prompt_bounds

LENGTH_KEYS = (
    "data.max_prompt_length",
    "data.max_response_length",
    "data.train_batch_size",
    "actor_rollout_ref.rollout.prompt_length",
    "actor_rollout_ref.rollout.response_length",
    "actor_rollout_ref.rollout.max_model_len",
    "actor_rollout_ref.rollout.temperature",
    "actor_rollout_ref.actor.ppo_mini_batch_size",
    "actor_rollout_ref.actor.use_dynamic_bsz",
    "actor_rollout_ref.actor.ppo_max_token_len_per_gpu",
    "actor_rollout_ref.ref.log_prob_use_dynamic_bsz",
    "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu",
    "actor_rollout_ref.model.use_remove_padding",
    "actor_rollout_ref.actor.fsdp_config.model_dtype",
    "trainer.nnodes",
    "trainer.n_gpus_per_node",
    "oel.max_knowledge_length",
    "oel.extraction.budget_tokens",
)


def _value(config: DictConfig, key: str):
    try:
        return OmegaConf.select(config, key, default="(not set)", throw_on_missing=False)
    except Exception as error:  # an interpolation that cannot resolve here: show it, do not fail on it
        return f"(unresolved: {error})"


def model_notes(config: DictConfig) -> list[str]:
    """What the checks could read of the model, and what they skipped or bounded without it."""
    path = str(OmegaConf.select(config, "actor_rollout_ref.model.path", default="") or "")
    folder = Path(path).expanduser()
    # Only a recipe with an oel: section counts the knowledge template's tokens.
    template = OmegaConf.select(config, "oel", default=None) is not None
    if (folder / "config.json").is_file():
        notes = [f"model {path}: on disk; its config.json (and tokenizer) were read by the checks"]
        if template and not (folder / "tokenizer_config.json").is_file():
            notes.append("no tokenizer in the model folder: template tokens bounded by their UTF-8 bytes")
        return notes
    skipped = f"model {path}: not on disk here; skipped: the check against its max_position_embeddings"
    if template:
        skipped += "; the knowledge template's tokens are bounded by their UTF-8 bytes instead of counted"
    return [skipped]


def dry_run(recipe: str, config: DictConfig) -> tuple[int, str]:
    """(exit code, text): 0 and the summary when every check passes, 2 and the problems otherwise."""
    try:
        check_recipe(config)
    except (RecipeError, ValueError) as error:
        return 2, f"verl-oel: {recipe}: {error}"
    lines = [f"verl-oel: {recipe}: every launch check passed (dry run: nothing started)"]
    lines += [f"  {note}" for note in model_notes(config)]
    derived = {length.key: length for length in derived_lengths(config)}
    lines.append("lengths and budgets:")
    lines += [
        f"  {derived[key].line()}" if key in derived else f"  {key} = {_value(config, key)}"
        for key in LENGTH_KEYS
    ]
    bounds = oel_prompt_bounds(config)
    if bounds is not None:
        lines.append("the longest prompt of each kind the run rolls out (tokens):")
        lines += [f"  {bound.line()}" for bound in bounds.all]
    oel = OmegaConf.select(config, "oel", default=None)
    if oel is not None:
        lines.append("oel:")
        lines += ["  " + line for line in OmegaConf.to_yaml(oel, resolve=True).splitlines()]
    return 0, "\n".join(lines)
