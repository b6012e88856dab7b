"""Checks a composed recipe before any Ray process starts, naming the offending key.

verl validates batch sizes at start-up, but a missing model folder or a context window too
short for prompt + response surface only minutes later, deep inside a worker or the vLLM
engine. These checks turn them into one line at launch.
"""

from __future__ import annotations

import glob
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig, OmegaConf

from .network import check_network

if TYPE_CHECKING:
    from .distill.config import ConsolidationConfig
    from .oel.config import OELConfig
    from .oel.prompt_bounds import PromptBounds, PromptCounter

ROLLOUT_PROMPT_LENGTH = "actor_rollout_ref.rollout.prompt_length"


class RecipeError(ValueError):
    """A recipe value that cannot work; the message starts with the key."""


def _select(config: DictConfig, key: str):
    return OmegaConf.select(config, key, default=None)


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _on_cpu(config: DictConfig) -> bool:
    env = _select(config, "process_env") or {}
    return str(env.get("VERL_PLATFORM", "")).lower() == "cpu"


def _check_model_path(config: DictConfig, key: str) -> list[str]:
    path = _select(config, key)
    if path is None:
        return []
    folder = Path(str(path)).expanduser()
    if not folder.exists() and not _on_cpu(config) and _HUB_ID.fullmatch(str(path)):
        # A hub id (``Qwen/Qwen3-1.7B``) on a GPU recipe: those machines fetch it; the CPU path is offline.
        return []
    if not folder.is_dir():
        return [
            f"{key}={path!r}: no such folder (models are never downloaded; build one with "
            "`verl-oel build-model tiny --out DIR` or point to a local HF folder)"
        ]
    if not (folder / "config.json").is_file():
        return [f"{key}={path!r}: folder has no config.json, so it is not a Hugging Face model folder"]
    return []


def _check_lengths(config: DictConfig) -> list[str]:
    prompt = _select(config, "data.max_prompt_length")
    response = _select(config, "data.max_response_length")
    max_model_len = _select(config, "actor_rollout_ref.rollout.max_model_len")
    if None in (prompt, response, max_model_len):
        return []
    if max_model_len < prompt + response:
        return [
            f"actor_rollout_ref.rollout.max_model_len={max_model_len} is shorter than "
            f"data.max_prompt_length + data.max_response_length = {prompt} + {response} = "
            f"{prompt + response}"
        ]
    return []


def _check_data_files(config: DictConfig) -> list[str]:
    problems = []
    for key in ("data.train_files", "data.val_files"):
        value = _select(config, key)
        if value is None:
            continue
        files = [value] if isinstance(value, str) else list(value)
        for file in files:
            if not glob.glob(str(Path(str(file)).expanduser())):
                problems.append(f"{key}: {file!r} does not exist (make it with `verl-oel make-data`)")
    return problems


def _check_platform(config: DictConfig) -> list[str]:
    device = _select(config, "trainer.device")
    if _on_cpu(config) and device != "cpu":
        return [f"trainer.device={device!r} but process_env.VERL_PLATFORM=cpu: set trainer.device=cpu"]
    return []


# The spellings verl's ``PrecisionType`` accepts (verl/utils/torch_dtypes.py), without importing torch here.
_DTYPE_NAMES = {
    **dict.fromkeys(("16", "fp16", "float16"), "float16"),
    **dict.fromkeys(("32", "fp32", "float32"), "float32"),
    **dict.fromkeys(("bf16", "bfloat16"), "bfloat16"),
}


def _check_compute_dtype(config: DictConfig) -> list[str]:
    """``fsdp_config.dtype`` must be what the forward really computes in. verl 0.9.1's FSDP engine takes
    that from ``fsdp_config.mixed_precision.param_dtype`` alone (bf16 when unset) and never reads ``dtype``
    for it, so a recipe saying float32 without ``mixed_precision`` silently trains and scores in bf16."""
    problems = []
    for role in ("actor", "ref"):
        prefix = f"actor_rollout_ref.{role}.fsdp_config"
        stated = _select(config, f"{prefix}.dtype")
        if stated is None:
            continue
        set_dtype = _select(config, f"{prefix}.mixed_precision.param_dtype")
        computed = set_dtype or "bf16"
        if _DTYPE_NAMES.get(str(stated), stated) != _DTYPE_NAMES.get(str(computed), computed):
            default = "" if set_dtype else " (unset: verl's default)"
            problems.append(
                f"{prefix}.dtype={stated!r} but {prefix}.mixed_precision.param_dtype={computed!r}{default}: "
                "verl's FSDP engine computes in the latter; set it to the dtype you mean"
            )
    return problems


def _model_max_positions(config: DictConfig) -> int | None:
    config_json = (
        Path(str(_select(config, "actor_rollout_ref.model.path") or "")).expanduser() / "config.json"
    )
    if not config_json.is_file():
        return None
    return json.loads(config_json.read_text()).get("max_position_embeddings")


def _prompt_counter(config: DictConfig) -> PromptCounter:
    """Counts tokens with the run's tokenizer and chat template when its folder is here; otherwise bytes,
    an upper bound for the byte-level tokenizers verl runs (no token is shorter than one byte), plus an
    allowance per chat message, so a check stays safe."""
    from .oel.prompt_bounds import PromptCounter

    path = _select(config, "actor_rollout_ref.model.tokenizer_path") or _select(
        config, "actor_rollout_ref.model.path"
    )
    folder = Path(str(path or "")).expanduser()
    if (folder / "tokenizer_config.json").is_file():
        from transformers import AutoTokenizer

        kwargs = _select(config, "data.apply_chat_template_kwargs") or {}
        kwargs = (
            OmegaConf.to_container(kwargs, resolve=True) if isinstance(kwargs, DictConfig) else dict(kwargs)
        )
        return PromptCounter.from_tokenizer(AutoTokenizer.from_pretrained(folder), kwargs)
    return PromptCounter.utf8_bound()


def _check_oel_section(config: DictConfig) -> list[str]:
    """The ``oel:`` section (``verl_oel.oel.config.parse_oel_section``), then what it needs of the rest."""
    section = _select(config, "oel")
    if section is None:
        return []
    # Imported only for recipes with an oel: section: the loop's config pulls in verl's agent loops.
    from .oel.config import OELConfigError, parse_oel_section

    try:
        consolidation, loop = parse_oel_section(OmegaConf.to_container(section, resolve=True))
    except OELConfigError as error:
        return [str(error)]
    problems = _check_consolidation(config, consolidation)
    if loop is not None:
        problems += _check_oel_loop(config, loop, consolidation)
    return problems


# The student and teacher passes (verl_oel/distill/worker.py) call the FSDP engine's HF module directly, on
# whole unsharded sequences; verl options that change what that module expects cannot be honoured by them.
_FSDP_STRATEGIES = ("fsdp", "fsdp2")


def _check_passes_support(config: DictConfig) -> list[str]:
    """verl options the consolidation passes cannot honour, each refused with its key and the reason."""
    problems = []
    for role in ("actor", "ref"):
        key = f"actor_rollout_ref.{role}.strategy"
        strategy = _select(config, key)
        if strategy is not None and strategy not in _FSDP_STRATEGIES:
            problems.append(
                f"{key}={strategy!r}: the student and teacher passes run on verl's FSDP engine only "
                f"({' or '.join(_FSDP_STRATEGIES)}); other engines hold the model differently "
                "(Megatron: a list of pipeline chunks)"
            )
        for sp_key in (
            f"actor_rollout_ref.{role}.ulysses_sequence_parallel_size",
            f"actor_rollout_ref.{role}.fsdp_config.ulysses_sequence_parallel_size",
        ):
            size = _select(config, sp_key)
            if size is not None and int(size) > 1:
                problems.append(
                    f"{sp_key}={size}: Ulysses sequence parallelism is not supported; verl patches attention "
                    "for sequence-sharded inputs, and the passes feed whole sequences"
                )
    if _select(config, "actor_rollout_ref.model.use_fused_kernels"):
        problems.append(
            "actor_rollout_ref.model.use_fused_kernels=True: not supported; verl's fused-kernel forward "
            "refuses the passes' call (they need the logits for the top-k), and the update's fused branch "
            "computes no oel_loss"
        )
    for lora_key in ("actor_rollout_ref.model.lora_rank", "actor_rollout_ref.model.lora.rank"):
        rank = _select(config, lora_key)
        if rank is not None and int(rank) > 0:
            problems.append(
                f"{lora_key}={rank}: LoRA is not supported; the frozen teacher would be a second full copy "
                "of the base model, while verl keeps the reference inside the LoRA actor"
            )
    return problems


def _check_consolidation(config: DictConfig, oel: ConsolidationConfig) -> list[str]:
    """The trainer consolidation needs, and room for the knowledge in the teacher's input.

    The teacher reads prompt + knowledge + response; verl budgets only prompt + response, so the
    knowledge budget must fit on top, or the teacher would be truncated (or fail) minutes into the run.
    """
    from .distill.config import check_single_update_per_batch

    problems = check_single_update_per_batch(config) + _check_passes_support(config)
    mode = _select(config, "trainer.v1.trainer_mode")
    # A whole OEL run (oel.rounds) needs the loop's trainer; a lone consolidation run, the distiller.
    wanted = "oel" if _select(config, "oel.rounds") is not None else "oel_consolidation"
    if not _select(config, "trainer.use_v1") or mode != wanted:
        use_v1 = _select(config, "trainer.use_v1")
        problems.append(
            f"trainer.v1.trainer_mode={mode!r} (trainer.use_v1={use_v1}): this recipe's oel: section "
            f"needs trainer.use_v1=true and trainer.v1.trainer_mode={wanted}"
        )
    prompt = _select(config, "data.max_prompt_length")
    response = _select(config, "data.max_response_length")
    if prompt is None or response is None:
        return problems
    teacher_length = prompt + oel.max_knowledge_length + response
    sum_text = (
        f"data.max_prompt_length + oel.max_knowledge_length + data.max_response_length = {prompt} + "
        f"{oel.max_knowledge_length} + {response} = {teacher_length}"
    )
    max_positions = _model_max_positions(config)
    if max_positions is not None and teacher_length > max_positions:
        problems.append(f"{sum_text} exceeds the model's max_position_embeddings={max_positions}")
    if _select(config, "actor_rollout_ref.ref.log_prob_use_dynamic_bsz"):
        budget = _select(config, "actor_rollout_ref.ref.log_prob_max_token_len_per_gpu")
        if budget is not None and teacher_length > budget:
            problems.append(
                f"{sum_text} exceeds actor_rollout_ref.ref.log_prob_max_token_len_per_gpu={budget}"
            )
    return problems


def _check_oel_loop(config: DictConfig, loop: OELConfig, consolidation: ConsolidationConfig) -> list[str]:
    """A whole OEL run (``oel.rounds`` set): lengths the loop's stages must fit in.

    The teacher reads a whole knowledge stream, so the extraction budget must fit in the room consolidation
    leaves for knowledge; each game turn and each extracted item is one rollout response, so their caps must
    fit verl's response length, or stages would silently cut what the paper keeps.
    """
    from .knowledge.injection import template_overhead_bound

    problems = []
    counter = _prompt_counter(config)
    max_knowledge = consolidation.max_knowledge_length
    budget = loop.extraction.budget_tokens
    overhead = template_overhead_bound(consolidation.knowledge_template, counter.text)
    if budget + overhead > max_knowledge:
        problems.append(
            f"oel.extraction.budget_tokens={budget} + {overhead} tokens that oel.knowledge_template may add "
            f"around it = {budget + overhead} exceeds oel.max_knowledge_length={max_knowledge}: the teacher "
            "could not read a full knowledge stream (raise oel.max_knowledge_length or lower the budget)"
        )
    batch = _select(config, "data.train_batch_size")
    if batch is not None and loop.deployment.games < int(batch):
        # Every game gives at least one turn prompt, so only games >= batch guarantees a full batch; fewer
        # would be found after the base evaluation and the extraction have run.
        problems.append(
            f"oel.deployment.games={loop.deployment.games} is fewer than data.train_batch_size={batch}: "
            "a deployment of short games could not fill one consolidation batch"
        )
    response = _select(config, "data.max_response_length")
    caps = {
        "oel.extraction.max_turn_tokens": loop.extraction.max_turn_tokens,
        "oel.extraction.max_item_tokens": loop.extraction.max_item_tokens,
        "oel.deployment.max_turn_tokens": loop.deployment.max_turn_tokens,
        "oel.ood.ifbench_max_tokens": loop.ood.ifbench_max_tokens,
    }
    for key, cap in caps.items():
        if response is not None and cap is not None and cap > response:
            problems.append(f"{key}={cap} exceeds data.max_response_length={response}")
    return problems + _check_rollout_prompt_length(config, loop, consolidation, counter)


def loop_prompt_bounds(
    config: DictConfig, loop: OELConfig, consolidation: ConsolidationConfig, counter: PromptCounter
) -> PromptBounds | None:
    """The longest prompt of each kind the run rolls out (``verl_oel/oel/prompt_bounds.py``); None when
    the recipe does not say its lengths."""
    from .envs import make_game
    from .ifbench import select_prompts
    from .oel.prompt_bounds import prompt_bounds

    prompt = _select(config, "data.max_prompt_length")
    response = _select(config, "data.max_response_length")
    if prompt is None or response is None:
        return None
    game = make_game(loop.game, **loop.game_settings)
    extraction = loop.extraction
    return prompt_bounds(
        counter=counter,
        turn_prompt_tokens=int(prompt),
        response_length=int(response),
        max_turns=game.max_turns,
        extraction_reply_cap=extraction.max_turn_tokens,
        budget_tokens=extraction.budget_tokens,
        show_previous_knowledge=extraction.show_previous_knowledge,
        marker=extraction.marker,
        knowledge_template=consolidation.knowledge_template,
        knowledge_in_context=loop.evaluation.with_knowledge or extraction.in_context_games > 0,
        ifbench_prompts=tuple(p.prompt for p in select_prompts(loop.ood.ifbench_prompts))
        if loop.ood.ifbench
        else (),
    )


def rollout_prompt_length_is_derived(config: DictConfig) -> bool:
    """Whether the recipe leaves ``rollout.prompt_length`` to verl's default (``data.max_prompt_length``):
    then an OEL run derives it from the bounds instead, so its knowledge-bearing prompts fit."""
    rollout = _select(config, "actor_rollout_ref.rollout")
    if rollout is None or "prompt_length" not in rollout:
        return True
    return OmegaConf.is_interpolation(rollout, "prompt_length")


def _check_rollout_prompt_length(
    config: DictConfig, loop: OELConfig, consolidation: ConsolidationConfig, counter: PromptCounter
) -> list[str]:
    """Every prompt the run rolls out fits ``rollout.prompt_length`` (derived, or the recipe's), and that
    length plus a whole reply fits the rollout's ``max_model_len``: verl would otherwise cut or fail."""
    bounds = loop_prompt_bounds(config, loop, consolidation, counter)
    if bounds is None:
        return []
    longest = bounds.longest
    response = int(_select(config, "data.max_response_length"))
    problems = []
    if rollout_prompt_length_is_derived(config):
        length, source = (
            longest.tokens,
            f"{ROLLOUT_PROMPT_LENGTH} (derived: the longest prompt, {longest.kind})",
        )
    else:
        length, source = int(_select(config, ROLLOUT_PROMPT_LENGTH)), ROLLOUT_PROMPT_LENGTH
        if length < longest.tokens:
            problems.append(
                f"{ROLLOUT_PROMPT_LENGTH}={length} is shorter than the longest prompt the run can roll out, "
                f"{longest.line()}: verl would cut it (leave the key unset and it is derived)"
            )
    max_model_len = _select(config, "actor_rollout_ref.rollout.max_model_len")
    if max_model_len is not None and length + response > int(max_model_len):
        problems.append(
            f"actor_rollout_ref.rollout.max_model_len={max_model_len} is shorter than {source} {length} + "
            f"data.max_response_length {response} = {length + response}; the longest prompt is "
            f"{longest.line()}"
        )
    return problems


@dataclass(frozen=True)
class DerivedLength:
    """A length a launch sets itself, and why (printed at launch and by the dry run)."""

    key: str
    value: int
    why: str
    arithmetic: str

    def override(self) -> str:
        return f"{self.key}={self.value}"

    def line(self) -> str:
        return f"{self.key} = {self.value} (derived: {self.why}: {self.arithmetic})"


def oel_prompt_bounds(config: DictConfig) -> PromptBounds | None:
    """``loop_prompt_bounds`` of a checked recipe: None unless it is a whole OEL run with its lengths set."""
    from .oel.config import parse_oel_section

    if _select(config, "oel.rounds") is None:
        return None
    consolidation, loop = parse_oel_section(OmegaConf.to_container(config.oel, resolve=True))
    return loop_prompt_bounds(config, loop, consolidation, _prompt_counter(config))


def derived_lengths(config: DictConfig) -> list[DerivedLength]:
    """The lengths a launch derives: ``rollout.prompt_length`` of a whole OEL run whose recipe leaves it
    unset, the longest prompt the run can roll out. Call after the checks."""
    bounds = oel_prompt_bounds(config) if rollout_prompt_length_is_derived(config) else None
    if bounds is None:
        return []
    longest = bounds.longest
    why = f"the longest prompt the run can roll out, {longest.kind}"
    return [DerivedLength(ROLLOUT_PROMPT_LENGTH, longest.tokens, why, longest.arithmetic)]


def check_recipe(config: DictConfig) -> None:
    """Raise :class:`RecipeError` listing every problem found, each naming its key."""
    problems = [
        *_check_model_path(config, "actor_rollout_ref.model.path"),
        *_check_lengths(config),
        *_check_data_files(config),
        *_check_platform(config),
        *_check_compute_dtype(config),
        *_check_oel_section(config),
        *check_network(config),
    ]
    if problems:
        raise RecipeError("invalid recipe:\n  " + "\n  ".join(problems))
