"""Where knowledge goes in a prompt: ONE place for every path that shows it to the model.

The consolidation teacher, evaluation with knowledge in context, the extraction stream's in-context
probes and the warmed test model's supervised data all call ``with_knowledge``, so "with knowledge in
context" is measured exactly the way the teacher reads it. The knowledge goes into the FIRST USER
message through a template (``{knowledge}`` and ``{prompt}`` placeholders) rather than into a system
message: chat templates differ in whether and how they render a system turn, while every one renders
user turns, and the knowledge then sits right before the question, as in the OEL reference prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_KNOWLEDGE_TEMPLATE = "Experiential knowledge from earlier games:\n{knowledge}\n\n{prompt}"

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
