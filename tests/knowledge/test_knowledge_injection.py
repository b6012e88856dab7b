"""The launch check's bound on what the knowledge template adds holds for any knowledge and prompt.

The launch check accepts ``oel.extraction.budget_tokens`` only when the budget plus
``template_overhead_bound`` fits ``oel.max_knowledge_length``; the consolidation worker refuses a teacher
prompt whose knowledge adds more than that. Here the worker's own method builds teacher prompts for
knowledge streams of any text, with the limit set to the stream's tokens plus the bound: it must never
refuse one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tensordict import TensorDict
from transformers import AutoTokenizer
from verl.utils import tensordict_utils as tu

from verl_oel.distill.config import ConsolidationConfig
from verl_oel.distill.worker import ConsolidationWorker, TeacherPromptTooLongError
from verl_oel.knowledge.injection import DEFAULT_KNOWLEDGE_TEMPLATE, SEAM_TOKENS, template_overhead_bound
from verl_oel.knowledge.parsing import render_items

# Letters, digits, punctuation, whitespace and non-ASCII: where tokenizers merge or split across a seam.
text = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 .,:;!?-_()[]'\"\n\t") + ["é", "ß", "→", "中", "🙂"]),
    min_size=1,
    max_size=40,
)
TEMPLATES = [
    DEFAULT_KNOWLEDGE_TEMPLATE,
    "{prompt}\n\nHints:{knowledge}",
    "Rules ->{knowledge}<- end. {prompt}",
]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _chat_ids(tokenizer, messages) -> list[int]:
    return tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )


def _teacher_prompt(tokenizer, template: str, knowledge: str, question: str, limit: int) -> list[int]:
    messages = [{"role": "user", "content": question}]
    prompt = _chat_ids(tokenizer, messages)
    data = TensorDict(
        {"prompts": torch.nested.as_nested_tensor([torch.tensor(prompt)], layout=torch.jagged)},
        batch_size=[1],
    )
    tu.assign_non_tensor_stack(data, "raw_prompt", [messages])
    tu.assign_non_tensor_stack(data, "oel_knowledge", [knowledge])
    worker = SimpleNamespace(
        consolidation=ConsolidationConfig(max_knowledge_length=limit, knowledge_template=template),
        tokenizer=tokenizer,
        chat_template_kwargs={},
    )
    (ids,) = ConsolidationWorker.teacher_prompts(worker, data)
    return ids


@settings(max_examples=300, deadline=None)
@given(items=st.lists(text, min_size=1, max_size=4), question=text, template=st.sampled_from(TEMPLATES))
def test_a_stream_within_its_budget_always_fits_the_teacher(tokenizer, items, question, template):
    knowledge = render_items([item.strip() or "x" for item in items])

    def count(piece: str) -> int:
        return len(tokenizer.encode(piece, add_special_tokens=False))

    limit = count(knowledge.strip()) + template_overhead_bound(template, count)
    _teacher_prompt(tokenizer, template, knowledge, question, limit)  # raises if the bound were short


def test_the_bound_is_what_the_worker_enforces(tokenizer):
    """The bound is the template text plus the seams; the worker refuses a limit one token below what the
    knowledge really adds, which lies between the knowledge alone and the knowledge plus the bound."""
    knowledge, question = render_items(["avoid the holes."]), "Board: P . G"

    def count(piece: str) -> int:
        return len(tokenizer.encode(piece, add_special_tokens=False))

    bound = template_overhead_bound(DEFAULT_KNOWLEDGE_TEMPLATE, count)
    literal = count("Experiential knowledge from earlier games:\n") + count("\n\n")
    assert bound == literal + SEAM_TOKENS * 5  # four pieces meet at three seams, plus the message's two ends
    limit = count(knowledge) + bound
    ids = _teacher_prompt(tokenizer, DEFAULT_KNOWLEDGE_TEMPLATE, knowledge, question, limit)
    added = len(ids) - len(_chat_ids(tokenizer, [{"role": "user", "content": question}]))
    with pytest.raises(TeacherPromptTooLongError):
        _teacher_prompt(tokenizer, DEFAULT_KNOWLEDGE_TEMPLATE, knowledge, question, added - 1)
    assert count(knowledge) <= added <= count(knowledge) + bound
