"""The OEL loop's keys of a recipe's one ``oel:`` section, validated once before any worker starts.

The ``oel:`` section is flat and shared: consolidation's keys (``loss``, ``k``, ``max_knowledge_length``,
...; ``verl_oel.distill.config.ConsolidationConfig``) sit beside the loop's keys read here (how many
rounds, which game, how knowledge is extracted, how many deployment games and consolidation steps, how
the rounds are evaluated). :func:`parse_oel_section` validates the whole section, once, for the recipe
checks; the keys each part accepts are its dataclass's fields, and a key neither knows is named in full
(``oel.extraction.num_streamz``) with the valid ones.
Everything else (learning rate, lengths, sampling) stays in verl's own sections, read from there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from verl_oel.distill.config import ConsolidationConfig, ConsolidationConfigError
from verl_oel.envs.game_generation import default_workers as default_generation_workers
from verl_oel.oel.extraction_stage import ExtractionConfig
from verl_oel.oel.run_state import CHECKPOINT, CONSOLIDATION, DEPLOYMENT, IN_CONTEXT, TEACHER_REFRESH

TRAINER_MODE = "oel"
"""verl's v1 trainer mode that runs the loop (``verl_oel.oel.trainer.OELTrainer``)."""

TEACHERS = ("frozen", "moving")
"""``frozen``: the round-start policy is the teacher for the whole round (the paper); ``moving``: the live
student, refreshed before every consolidation step (an ablation: the teacher drifts with the student)."""

MODES = ("replay", "online")
"""``replay``: the student answers the saved deployment prompts, one turn each (the paper's OEL);
``online``: the student plays the round's fresh games during consolidation, each whole episode one sample
(OPCD's variant; ``stage_data.online_games``), and the teacher scores every model token of every turn."""

EXTRACTION_FROM_LOOP = ("game", "settings", "base_seed")
"""``ExtractionConfig`` fields set from the loop's top-level keys (``oel.game``, ``oel.game_settings``,
``oel.seed``); its other fields are the keys of ``oel.extraction``."""


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
    # Also play the held-out games with the round's knowledge in context, by the round's teacher pi_{r-1}
    # (the ``in_context`` stage, before consolidation).
    with_knowledge: bool = True


@dataclass(frozen=True)
class OODGames:
    """One entry of ``oel.ood.games``: games of another family (or another game) that the loop never
    trains on, played by every round's model without knowledge, next to the base model's result: what
    consolidation costs outside the trained game."""

    name: str
    game: str
    game_settings: dict[str, Any] = field(default_factory=dict)
    num_games: int = 32
    seed: int = 0


@dataclass(frozen=True)
class OODConfig:
    """``oel.ood``: out-of-domain retention, measured in every round's evaluation stage (round 0's: the
    base model's)."""

    games: tuple[OODGames, ...] = ()
    # IFBench instruction following (verl_oel/ifbench.py): 0, off; N, a fixed subsample of N of the prompts
    # checkable offline (the same every round and run); "all", every one of them.
    ifbench_prompts: int | str = 0
    # Each IFBench reply's token cap; None: data.max_response_length.
    ifbench_max_tokens: int | None = None

    @property
    def ifbench(self) -> bool:
        return self.ifbench_prompts != 0


@dataclass(frozen=True)
class OELConfig:
    """All rounds of one OEL run (docs/method.md, "The loop"); see the module docstring for the section."""

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
    ood: OODConfig = OODConfig()
    # Where the run lives; None: the recipe's trainer.default_local_dir.
    run_dir: str | None = None
    # Processes that generate the games of a family that builds them on first play (TextWorld) ahead of
    # the stages that play them (verl_oel.envs.game_generation); None: min(8, CPU cores); 0: none, each
    # game is then generated inside the rollout when first played.
    game_generation_workers: int | None = None

    @property
    def generation_workers(self) -> int:
        """``game_generation_workers`` with its default resolved."""
        if self.game_generation_workers is None:
            return default_generation_workers()
        return self.game_generation_workers

    @property
    def skip_stages(self) -> tuple[str, ...]:
        """``consolidation_steps: 0`` is the "knowledge in context only" ablation: rounds extract and
        evaluate, nothing is deployed, trained or saved, and every round keeps the base model.
        ``evaluation.with_knowledge: false`` skips the teacher's evaluation with the knowledge in context."""
        skipped = () if self.evaluation.with_knowledge else (IN_CONTEXT,)
        if self.consolidation_steps == 0:
            skipped += (TEACHER_REFRESH, DEPLOYMENT, CONSOLIDATION, CHECKPOINT)
        return skipped

    @classmethod
    def from_mapping(cls, section: Mapping[str, Any]) -> OELConfig:
        """Build from the resolved ``oel:`` section; every problem found is reported at once, by key.

        The keys each part accepts are its dataclass's fields, so a field added to a dataclass is a key
        at once, and a key neither the loop nor consolidation knows is named as a typo."""
        section = dict(section)
        consolidation_keys = {f.name for f in fields(ConsolidationConfig)}
        problems = _unknown_keys(section, {f.name for f in fields(cls)} | consolidation_keys, "oel.")
        # `extraction` has no default only because it is built from the loop's game; its keys are optional.
        required = [f.name for f in _required_fields(cls) if f.name != "extraction"]
        problems += [f"oel.{key} is required" for key in required if key not in section]
        problems += _positive(section, ("rounds",))
        steps = section.get("consolidation_steps")
        if steps is not None and (not isinstance(steps, int) or steps < 0):
            problems.append(
                f"oel.consolidation_steps={steps!r} must be an integer >= 0 (0: knowledge in context only)"
            )
        mode = section.get("mode", cls.mode)
        if mode not in MODES:
            problems.append(f"oel.mode={mode!r}; expected one of {list(MODES)}")
        workers = section.get("game_generation_workers")
        if workers is not None and (not isinstance(workers, int) or isinstance(workers, bool) or workers < 0):
            problems.append(
                f"oel.game_generation_workers={workers!r} must be an integer >= 0 (0: games are generated "
                "when first played; unset: min(8, CPU cores))"
            )
        if section.get("teacher", cls.teacher) not in TEACHERS:
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
        ood = _ood_section(section.get("ood"), problems)
        extraction_section = dict(section.get("extraction") or {})
        problems += _unknown_keys(
            extraction_section,
            {f.name for f in fields(ExtractionConfig)} - set(EXTRACTION_FROM_LOOP),
            "oel.extraction.",
        )
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
                problems.append(str(error))
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
            mode=mode,
            teacher=section.get("teacher", cls.teacher),
            evaluation=evaluation,
            ood=ood,
            run_dir=section.get("run_dir"),
            game_generation_workers=workers,
        )


def parse_oel_section(section: Mapping[str, Any]) -> tuple[ConsolidationConfig, OELConfig | None]:
    """The whole ``oel:`` section, validated once: consolidation's keys always, and the loop's when
    ``oel.rounds`` is set (a whole OEL run; without it, a lone consolidation run). Raises
    :class:`OELConfigError` listing every problem, each naming its full key."""
    section = dict(section)
    is_loop = "rounds" in section
    problems = []
    consolidation = loop = None
    consolidation_keys = {f.name for f in fields(ConsolidationConfig)}
    try:
        # In a whole run the loop's parser names every unknown key; consolidation reads its own.
        own = {key: value for key, value in section.items() if key in consolidation_keys}
        consolidation = ConsolidationConfig.from_mapping(own if is_loop else section)
    except ConsolidationConfigError as error:
        problems.append(str(error))
    if is_loop:
        try:
            loop = OELConfig.from_mapping(section)
        except OELConfigError as error:
            problems.append(str(error))
    if problems:
        raise OELConfigError("; ".join(problems))
    return consolidation, loop


def _unknown_keys(values: Mapping[str, Any], known: set[str] | frozenset[str], prefix: str) -> list[str]:
    return [f"{prefix}{key}: unknown key; known: {sorted(known)}" for key in sorted(set(values) - set(known))]


def _required_fields(kind: type) -> list[Any]:
    return [f for f in fields(kind) if f.default is MISSING and f.default_factory is MISSING]


def _positive(mapping: Mapping[str, Any], keys: tuple[str, ...], prefix: str = "oel.") -> list[str]:
    return [
        f"{prefix}{key}={mapping[key]!r} must be a positive integer"
        for key in keys
        if mapping.get(key) is not None and (not isinstance(mapping[key], int) or mapping[key] < 1)
    ]


def _subsection(section: Mapping[str, Any], name: str, kind: type, problems: list[str]) -> Any:
    values = dict(section.get(name) or {})
    unknown = _unknown_keys(values, {f.name for f in fields(kind)}, f"oel.{name}.")
    if unknown:
        problems += unknown
        return None
    return kind(**values)


def _ood_section(value: Any, problems: list[str]) -> OODConfig:
    """``oel.ood``; each problem is added to ``problems`` naming its key (``oel.ood.games[1].num_games``)."""
    section = dict(value or {})
    problems += _unknown_keys(section, {f.name for f in fields(OODConfig)}, "oel.ood.")
    entries = section.get("games") or []
    if not isinstance(entries, list | tuple):
        problems.append(f"oel.ood.games={entries!r} must be a list of {{name, game, game_settings, ...}}")
        return OODConfig()
    games, names = [], set()
    known = {f.name for f in fields(OODGames)}
    for index, entry in enumerate(entries):
        prefix = f"oel.ood.games[{index}]."
        if not isinstance(entry, Mapping):
            problems.append(f"oel.ood.games[{index}]={entry!r} must be a mapping with keys {sorted(known)}")
            continue
        entry = dict(entry)
        found = _unknown_keys(entry, known, prefix)
        found += [f"{prefix}{key} is required" for key in ("name", "game") if key not in entry]
        found += _positive(entry, ("num_games",), prefix)
        seed = entry.get("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            found.append(f"{prefix}seed={seed!r} must be an integer")
        if "name" in entry and entry["name"] in names:
            found.append(f"{prefix}name={entry['name']!r} is an earlier entry's; names label the report")
        if not found:
            settings = dict(entry.get("game_settings") or {})
            found += _check_game(str(entry["game"]), settings, prefix)
        problems += found
        if not found:
            names.add(entry["name"])
            games.append(OODGames(**{**entry, "name": str(entry["name"]), "game_settings": settings}))
    prompts = section.get("ifbench_prompts", 0)
    problems += _ifbench_prompts(prompts)
    problems += _positive(section, ("ifbench_max_tokens",), "oel.ood.")
    return OODConfig(
        games=tuple(games), ifbench_prompts=prompts, ifbench_max_tokens=section.get("ifbench_max_tokens")
    )


def _ifbench_prompts(count: Any) -> list[str]:
    """``oel.ood.ifbench_prompts``: 0, a count of the prompts checkable offline, or "all" (which needs the
    IFBench packages: their absence is named here, before anything starts)."""
    from verl_oel.ifbench import ALL, IFBenchUnavailableError, checkable_prompts

    key = f"oel.ood.ifbench_prompts={count!r}"
    if count == 0:
        return []
    if count != ALL and (not isinstance(count, int) or isinstance(count, bool) or count < 0):
        return [f"{key} must be 0 (off), a positive number of prompts or {ALL!r}"]
    try:
        available = len(checkable_prompts())
    except IFBenchUnavailableError as error:
        return [f"{key}: {error}"]
    if count != ALL and count > available:
        return [
            f"{key}: only {available} IFBench prompts can be checked offline (verl_oel/ifbench.py); "
            f"use at most {available} or {ALL!r}"
        ]
    return []


def _check_game(game: str, settings: dict[str, Any], prefix: str = "oel.") -> list[str]:
    """The game and its settings, checked by building one game (cheap, and no worker has started)."""
    from verl_oel.envs import list_games, make_game

    if game not in list_games():
        return [f"{prefix}game={game!r}: unknown game; known games: {', '.join(list_games())}"]
    try:
        make_game(game, **settings).close()
    except (TypeError, ValueError) as error:
        return [f"{prefix}game_settings: {error}"]
    return []
