"""The longest prompt each kind of OEL rollout can hand verl, computed from the recipe's budgets.

verl pads every prompt of a rollout batch to one width, ``actor_rollout_ref.rollout.prompt_length``, and
cuts a longer text prompt to its last tokens (``verl_oel/agent_loop/prompt_length.py`` turns that cut into
an error). An OEL run rolls out three kinds of prompt:

- a game turn without knowledge (deployment, evaluation, the extraction's own games): at most
  ``data.max_prompt_length`` tokens. That is the student's prompt, on which consolidation's budgets rest
  (the teacher reads it plus ``oel.max_knowledge_length``), so the agent loops enforce it at run time;
- a game turn with one knowledge stream in context (evaluation with knowledge, the extraction's in-context
  probes): that turn prompt, plus the stream (at most ``oel.extraction.budget_tokens``) and what the
  knowledge template adds around it;
- an extraction prompt: the extraction's own text, one finished game's record and, with
  ``oel.extraction.show_previous_knowledge``, the stream so far. The game's instructions and every
  observation the record shows are all in the game's last turn prompt, so together they take at most
  ``data.max_prompt_length`` tokens; each reply at most the extraction's reply cap, for at most the game's
  ``max_turns`` replies; the outcome reason at most ``MAX_REASON_BYTES``;
- with ``oel.ood.ifbench_prompts``, an IFBench prompt (``verl_oel/ifbench.py``): the longest selected one as
  a chat prompt, plus the empty thinking block a non-thinking render adds (``NON_THINKING_BLOCK``).

The bounds count the fixed text with the run's tokenizer and chat template when the model folder is on disk;
without them, by UTF-8 bytes (no byte-level BPE token is shorter than a byte) plus
``CHAT_TEMPLATE_ALLOWANCE`` tokens per message, a safe over-estimate. ``SEAM_TOKENS`` are allowed wherever two
texts meet. The run-time check stays as the last guard either way: a prompt over its limit stops the run,
naming the keys, and is never cut.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from verl_oel.envs.base import MAX_REASON_BYTES
from verl_oel.knowledge.extraction_prompt import GameRecord, GameTurn, build_extraction_messages
from verl_oel.knowledge.injection import SEAM_TOKENS, template_overhead_bound

CHAT_TEMPLATE_ALLOWANCE = 64
"""Tokens per message (and once for the generation prompt) that a chat template may add, used only when
the model's tokenizer is not on disk: Qwen3's adds 5 per message and 3-7 for the generation prompt,
Llama 3's adds about 25 to the first message (its dated system text)."""

NON_THINKING_BLOCK = "<think>\n\n</think>\n\n"
"""What Qwen3's chat template appends to the generation prompt with ``enable_thinking: false`` (the IFBench
rows are rendered so: ``verl_oel/agent_loop/ifbench_loop.py``); a template without the switch adds nothing."""

Messages = list[dict[str, Any]]


@dataclass(frozen=True)
class PromptCounter:
    """How the bounds count: ``text`` counts a bare text, ``chat`` a whole chat prompt as the rollout
    renders it (template and generation prompt included); ``exact`` says whether they are the model's own."""

    text: Callable[[str], int]
    chat: Callable[[Messages], int]
    exact: bool

    @classmethod
    def from_tokenizer(
        cls, tokenizer: Any, chat_template_kwargs: dict[str, Any] | None = None
    ) -> PromptCounter:
        kwargs = dict(chat_template_kwargs or {})

        def chat(messages: Messages) -> int:
            ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, **kwargs)
            if isinstance(ids, dict) or hasattr(ids, "keys"):  # a BatchEncoding
                ids = ids["input_ids"]
            return len(ids)

        return cls(
            text=lambda text: len(tokenizer.encode(text, add_special_tokens=False)), chat=chat, exact=True
        )

    @classmethod
    def utf8_bound(cls) -> PromptCounter:
        def chat(messages: Messages) -> int:
            content = sum(len(str(m.get("content", "")).encode("utf-8")) for m in messages)
            return content + CHAT_TEMPLATE_ALLOWANCE * (len(messages) + 1)

        return cls(text=lambda text: len(text.encode("utf-8")), chat=chat, exact=False)


@dataclass(frozen=True)
class Bound:
    """One kind of prompt's longest length, and the sum that gives it (for the dry run and the errors)."""

    kind: str
    tokens: int
    arithmetic: str

    def line(self) -> str:
        return f"{self.kind}: {self.arithmetic} = {self.tokens}"


@dataclass(frozen=True)
class PromptBounds:
    turn: Bound
    turn_with_knowledge: Bound | None
    extraction: Bound
    ifbench: Bound | None = None

    @property
    def all(self) -> list[Bound]:
        kinds = (self.turn, self.turn_with_knowledge, self.extraction, self.ifbench)
        return [bound for bound in kinds if bound is not None]

    @property
    def longest(self) -> Bound:
        return max(self.all, key=lambda bound: bound.tokens)


def extraction_fixed_tokens(counter: PromptCounter, turns: int, show_knowledge: bool, marker: str) -> int:
    """The extraction prompt with every variable part empty: its own text, ``turns`` turn headers, the
    chat template. Empty parts render as placeholders ("(nothing recorded yet)"), which only over-counts."""
    record = GameRecord(instructions="", turns=[GameTurn("", "")] * turns, won=False, reason="")
    return counter.chat(build_extraction_messages(record, "", show_knowledge=show_knowledge, marker=marker))


def prompt_bounds(
    *,
    counter: PromptCounter,
    turn_prompt_tokens: int,
    response_length: int,
    max_turns: int,
    extraction_reply_cap: int | None,
    budget_tokens: int,
    show_previous_knowledge: bool,
    marker: str,
    knowledge_template: str,
    knowledge_in_context: bool,
    ifbench_prompts: tuple[str, ...] = (),
) -> PromptBounds:
    """The bounds (see the module docstring); ``turn_prompt_tokens`` is ``data.max_prompt_length``.

    ``knowledge_in_context``: whether the run plays turns with knowledge in context (evaluation with
    knowledge, in-context probes); ``ifbench_prompts``: the IFBench prompts' texts the run plays."""
    p = turn_prompt_tokens
    turn = Bound("a game turn without knowledge", p, f"data.max_prompt_length {p}")
    with_knowledge = None
    if knowledge_in_context:
        overhead = template_overhead_bound(knowledge_template, counter.text)
        with_knowledge = Bound(
            "a game turn with knowledge in context",
            p + budget_tokens + overhead,
            f"data.max_prompt_length {p} + oel.extraction.budget_tokens {budget_tokens} + "
            f"oel.knowledge_template's {overhead}",
        )
    reply_cap = min(response_length, extraction_reply_cap or response_length)
    fixed = extraction_fixed_tokens(counter, max_turns, show_previous_knowledge, marker)
    # Every text put into the extraction template meets it at two seams: the instructions, each
    # observation and reply, the reason, and the knowledge.
    pieces = 2 * max_turns + 2 + int(show_previous_knowledge)
    seams = 2 * pieces * SEAM_TOKENS
    knowledge = budget_tokens if show_previous_knowledge else 0
    total = fixed + p + max_turns * reply_cap + MAX_REASON_BYTES + knowledge + seams
    arithmetic = (
        f"its own text and {max_turns} turn headers {fixed} + the game's instructions and observations "
        f"(within its last turn prompt) {p} + max_turns {max_turns} x reply cap {reply_cap} + "
        f"the outcome reason {MAX_REASON_BYTES}"
    )
    if show_previous_knowledge:
        arithmetic += f" + oel.extraction.budget_tokens {budget_tokens}"
    arithmetic += f" + seams {seams}"
    ifbench = None
    if ifbench_prompts:
        longest = max(counter.chat([{"role": "user", "content": text}]) for text in ifbench_prompts)
        block = counter.text(NON_THINKING_BLOCK)
        ifbench = Bound(
            "an IFBench prompt",
            longest + block,
            f"the longest of the oel.ood.ifbench_prompts prompts {longest} + an empty thinking block {block}",
        )
    return PromptBounds(turn, with_knowledge, Bound("an extraction prompt", total, arithmetic), ifbench)
