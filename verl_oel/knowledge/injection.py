"""Where knowledge goes in a prompt: ONE place for every path that shows it to the model.

The consolidation teacher, evaluation with knowledge in context, the extraction stream's in-context
probes and the warmed test model's supervised data all call ``with_knowledge``, so "with knowledge in
context" is measured exactly the way the teacher reads it. The knowledge goes into the FIRST USER
message through a template (``{knowledge}`` and ``{prompt}`` placeholders) rather than into a system
message: chat templates differ in whether and how they render a system turn, while every one renders
user turns, and the knowledge then sits right before the question, as in the OEL reference prompts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

DEFAULT_KNOWLEDGE_TEMPLATE = "Experiential knowledge from earlier games:\n{knowledge}\n\n{prompt}"

SEAM_TOKENS = 2
"""Tokens a tokenizer may add where two texts meet (it can merge or split characters across the seam):
the bound below allows this many at every seam the template creates. With the project's Qwen-vocabulary
tokenizer a seam never added one over hundreds of random knowledge texts and prompts (merges only remove
tokens: ``tests/knowledge/test_knowledge_injection.py``); the allowance is for tokenizers that split."""

Messages = list[dict[str, Any]]


def with_knowledge(
    messages: Sequence[dict[str, Any]], knowledge: str, template: str = DEFAULT_KNOWLEDGE_TEMPLATE
) -> Messages:
    """A copy of ``messages`` with ``knowledge`` put into the first user message through ``template``.

    Empty (or blank) knowledge returns the messages unchanged: the prompt a model sees without knowledge
    is the student's prompt, token for token.
    """
    copied = [dict(message) for message in messages]
    if not knowledge.strip():
        return copied
    for message in copied:
        if message.get("role") == "user":
            message["content"] = template.format(knowledge=knowledge.strip(), prompt=message["content"])
            return copied
    raise ValueError("the prompt has no user message to put the knowledge in")


def template_overhead_bound(template: str, count_tokens: Callable[[str], int]) -> int:
    """At most how many tokens ``template`` adds to a prompt beyond the knowledge's own tokens.

    The template's literal text, counted piece by piece, plus :data:`SEAM_TOKENS` at each seam: between
    neighbouring pieces (text, knowledge, prompt) and at the two ends of the message, where the chat
    template's own text now meets the template's text instead of the prompt's. A knowledge stream within
    ``budget_tokens`` (counted alone, as the stream counts it) then adds at most ``budget_tokens`` plus this
    to the teacher's prompt, which is what the launch check compares with ``oel.max_knowledge_length``.
    """
    pieces = re.split(r"(\{knowledge\}|\{prompt\})", template)
    literal = [piece for piece in pieces if piece and piece not in ("{knowledge}", "{prompt}")]
    neighbours = [piece for piece in pieces if piece]
    seams = (len(neighbours) - 1) + 2
    return sum(count_tokens(piece) for piece in literal) + SEAM_TOKENS * seams
