"""The OEL loop's keys of a recipe's one ``oel:`` section, validated once before any worker starts.

The ``oel:`` section is flat and shared: consolidation's keys (``loss``, ``k``, ``max_knowledge_length``,
...; ``verl_oel.distill.config.ConsolidationConfig``) sit beside the loop's keys read here (how many
rounds, which game, how knowledge is extracted, how many deployment games and consolidation steps, how
the rounds are evaluated). Each parser skips the other's keys, so a key neither knows is named as a typo.
Everything else (learning rate, lengths, sampling) stays in verl's own sections, read from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from verl_oel.distill.config import OEL_LOOP_KEYS, ConsolidationConfig
from verl_oel.oel.extraction_stage import ExtractionConfig

TRAINER_MODE = "oel"
"""verl's v1 trainer mode that runs the loop (``verl_oel.oel.trainer.OELTrainer``)."""

TEACHERS = ("frozen", "moving")
"""``frozen``: the round-start policy is the teacher for the whole round (the paper); ``moving``: the live
student, refreshed before every consolidation step (an ablation: the teacher drifts with the student)."""

MODES = ("replay", "online")
"""``replay``: the student answers the saved deployment prompts (the paper's OEL); ``online``: the
student plays the environment during consolidation (OPCD's variant)."""

EXTRACTION_KEYS = (
    "num_streams",
    "games_per_stream",
    "cut_after",
    "budget_tokens",
    "show_previous_knowledge",
    "max_turn_tokens",
    "max_item_tokens",
    "in_context_games",
    "knowledge_source",
)
"""The keys of ``oel.extraction``; the game and seed come from the loop's top-level keys."""


class OELConfigError(ValueError):
    """An ``oel.*`` loop value that cannot work; the message names the key."""


@dataclass(frozen=True)
class DeploymentConfig:
    """``oel.deployment``: the fresh games whose per-turn prompts consolidation trains on."""

    games: int = 128
    max_turn_tokens: int | None = None


@dataclass(frozen=True)
class EvaluationConfig:
    """``oel.evaluation``: the fixed held-out games every round is measured on (same seeds each round)."""

    games: int = 128
    seed: int = 0
    # Also play the held-out games with the round's knowledge in context (the teacher's setting).
    with_knowledge: bool = True


@dataclass(frozen=True)
class OELConfig:
    """All rounds of one OEL run (OEL_SPEC.md, "The loop"); see the module docstring for the section."""

    rounds: int
    game: str
    extraction: ExtractionConfig
    game_settings: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    deployment: DeploymentConfig = DeploymentConfig()
    consolidation_steps: int = 50
    mode: str = "replay"
    teacher: str = "frozen"
    evaluation: EvaluationConfig = EvaluationConfig()
    # Where the run lives; None: the recipe's trainer.default_local_dir.
    run_dir: str | None = None

    @property
    def skip_stages(self) -> tuple[str, ...]:
        """``consolidation_steps: 0`` is the "knowledge in context only" ablation: rounds extract and
        evaluate, nothing is deployed, trained or saved, and every round keeps the base model."""
        if self.consolidation_steps == 0:
            return ("teacher_refresh", "deployment", "consolidation", "checkpoint")
        return ()

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> OELConfig:
        """Build from the resolved ``oel:`` section; every problem found is reported at once, by key."""
        section = dict(section)
        consolidation_keys = {f.name for f in fields(ConsolidationConfig)}
        unknown = sorted(set(section) - OEL_LOOP_KEYS - consolidation_keys)
        problems = [
            f"oel.{key}: unknown key; the loop's keys are {sorted(OEL_LOOP_KEYS)} and consolidation's are "
            f"{sorted(consolidation_keys)}"
            for key in unknown
        ]
        for key in ("rounds", "game"):
            if key not in section:
                problems.append(f"oel.{key} is required")
        problems += _positive(section, ("rounds",))
        steps = section.get("consolidation_steps")
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            problems.append(
                f"oel.consolidation_steps={steps!r} must be an integer >= 0 (0: knowledge in context only)"
            )
        if section.get("mode", "replay") not in MODES:
            problems.append(f"oel.mode={section['mode']!r}; expected one of {list(MODES)}")
        if section.get("teacher", "frozen") not in TEACHERS:
            problems.append(f"oel.teacher={section['teacher']!r}; expected one of {list(TEACHERS)}")
        game = section.get("game")
        settings = dict(section.get("game_settings") or {})
        if game is not None:
            problems += _check_game(str(game), settings)
        deployment = _subsection(section, "deployment", DeploymentConfig, problems)
        evaluation = _subsection(section, "evaluation", EvaluationConfig, problems)
        if deployment is not None:
            problems += _positive(vars(deployment), ("games", "max_turn_tokens"), "oel.deployment.")
        if evaluation is not None:
            problems += _positive(vars(evaluation), ("games",), "oel.evaluation.")
        extraction_section = dict(section.get("extraction") or {})
        problems += [
            f"oel.extraction.{key}: unknown key; known: {list(EXTRACTION_KEYS)}"
            for key in sorted(set(extraction_section) - set(EXTRACTION_KEYS))
        ]
        extraction = None
        if not problems:
            try:
                extraction = ExtractionConfig(
                    game=str(game),
                    settings=settings,
                    base_seed=int(section.get("seed", 0)),
                    **extraction_section,
                )
            except (TypeError, ValueError) as error:
                problems.append(f"oel.extraction: {error}")
        if problems:
            raise OELConfigError("; ".join(problems))
        return cls(
            rounds=section["rounds"],
            game=str(game),
            extraction=extraction,
            game_settings=settings,
            seed=int(section.get("seed", 0)),
            deployment=deployment,
            consolidation_steps=section.get("consolidation_steps", cls.consolidation_steps),
            mode=section.get("mode", "replay"),
            teacher=section.get("teacher", "frozen"),
            evaluation=evaluation,
            run_dir=section.get("run_dir"),
        )


def _positive(mapping: Mapping[str, Any], keys: tuple[str, ...], prefix: str = "oel.") -> list[str]:
    return [
        f"{prefix}{key}={mapping[key]!r} must be a positive integer"
        for key in keys
        if mapping.get(key) is not None and (not isinstance(mapping[key], int) or mapping[key] < 1)
    ]


def _subsection(section: Mapping[str, Any], name: str, kind: type, problems: list[str]) -> Any:
    values = dict(section.get(name) or {})
    known = {f.name for f in fields(kind)}
    unknown = sorted(set(values) - known)
    if unknown:
        problems += [f"oel.{name}.{key}: unknown key; known: {sorted(known)}" for key in unknown]
        return None
    return kind(**values)


def _check_game(game: str, settings: dict[str, Any]) -> list[str]:
    """The game and its settings, checked by building one game (cheap, and no worker has started)."""
    from verl_oel.envs import list_games, make_game

    if game not in list_games():
        return [f"oel.game={game!r}: unknown game; known games: {', '.join(list_games())}"]
    try:
        make_game(game, **settings).close()
    except (TypeError, ValueError) as error:
        return [f"oel.game_settings: {error}"]
    return []
