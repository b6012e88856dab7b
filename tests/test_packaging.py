"""The ``gpu`` extra installs what the GPU recipes run with."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

import pytest
from omegaconf import OmegaConf
from packaging.requirements import Requirement

from verl_oel.recipe_loader import compose_recipe

SETUP = Path(__file__).resolve().parents[1] / "setup.py"
GPU_RECIPES = ("oel_frozenlake_qwen3_4b", "oel_textworld_qwen3_4b", "grpo_frozenlake_qwen3_1.7b")


def _extras() -> dict[str, list[str]]:
    """``extras_require`` as setup.py writes it (the installed metadata may predate an edit)."""
    for node in ast.walk(ast.parse(SETUP.read_text())):
        if isinstance(node, ast.keyword) and node.arg == "extras_require":
            return ast.literal_eval(node.value)
    raise AssertionError("setup.py has no extras_require")


def _verl_extras_bringing(package: str) -> set[str]:
    """verl's extras (read from the installed verl 0.9.1's metadata) that install ``package``, directly or
    through another of its extras."""
    direct: dict[str, set[str]] = {}
    for text in importlib.metadata.distribution("verl").requires or []:
        requirement = Requirement(text)
        extra = str(requirement.marker).split('extra == "')[-1].rstrip('"') if requirement.marker else None
        if extra is not None:
            direct.setdefault(extra, set()).add(
                requirement.name + "".join(f"[{e}]" for e in sorted(requirement.extras))
            )

    def brings(extra: str, seen: frozenset[str] = frozenset()) -> bool:
        for name in direct.get(extra, ()):
            if name == package or (
                name.startswith("verl[")
                and (inner := name[5:-1]) not in seen
                and brings(inner, seen | {extra})
            ):
                return True
        return False

    return {extra for extra in direct if brings(extra)}


def test_the_gpu_extra_installs_verl_with_vllm_and_flash_attention():
    (verl,) = [Requirement(r) for r in _extras()["gpu"] if Requirement(r).name == "verl"]
    assert str(verl.specifier) == "==0.9.1"
    assert "vllm" in verl.extras
    assert verl.extras & _verl_extras_bringing("flash-attn"), (
        verl.extras,
        _verl_extras_bringing("flash-attn"),
    )


@pytest.mark.parametrize("name", GPU_RECIPES)
def test_the_gpu_recipes_run_the_attention_the_extra_installs(name):
    """The GPU recipes keep verl's default attention (``HFModelConfig`` uses flash_attention_2 unless
    ``override_config.attn_implementation`` names another), which needs flash-attn."""
    config = compose_recipe(name)
    attention = OmegaConf.select(config, "actor_rollout_ref.model.override_config.attn_implementation")
    assert (attention or "flash_attention_2") == "flash_attention_2"
