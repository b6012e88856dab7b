"""A teacher prompt longer than budgeted fails loudly, at launch (recipe check) and in the worker."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from tensordict import TensorDict
from transformers import AutoTokenizer
from verl.utils import tensordict_utils as tu

from verl_oel.distill.config import ConsolidationConfig
from verl_oel.distill.worker import ConsolidationWorker, TeacherPromptMismatchError, TeacherPromptTooLongError
from verl_oel.recipe_checks import RecipeError, check_recipe
from verl_oel.recipe_loader import compose_recipe


def _recipe(tmp_path, tiny_model_dir, *overrides: str):
    from verl_oel.data.consolidation import write_consolidation_data

    data = write_consolidation_data(tmp_path / "data")
    return compose_recipe(
        "consolidation_cpu",
        [
            f"actor_rollout_ref.model.path={tiny_model_dir}",
            f"data.train_files={data}/train.parquet",
            f"data.val_files={data}/val.parquet",
            *overrides,
        ],
    )


def test_the_consolidation_recipe_passes_its_checks(tmp_path, tiny_model_dir):
    check_recipe(_recipe(tmp_path, tiny_model_dir))


def test_knowledge_budget_beyond_the_model_fails_at_launch_naming_the_keys(tmp_path, tiny_model_dir):
    with pytest.raises(RecipeError) as error:
        check_recipe(_recipe(tmp_path, tiny_model_dir, "oel.max_knowledge_length=9000"))
    message = str(error.value)
    for key in ("data.max_prompt_length", "oel.max_knowledge_length", "data.max_response_length"):
        assert key in message
    assert "max_position_embeddings=8192" in message


def test_several_updates_per_batch_and_a_wrong_trainer_fail_at_launch(tmp_path, tiny_model_dir):
    with pytest.raises(RecipeError) as error:
        check_recipe(
            _recipe(
                tmp_path,
                tiny_model_dir,
                "actor_rollout_ref.actor.ppo_epochs=2",
                "trainer.v1.trainer_mode=sync",
            )
        )
    assert "actor_rollout_ref.actor.ppo_epochs=2" in str(error.value)
    assert "trainer.v1.trainer_mode='sync'" in str(error.value)


def test_worker_refuses_knowledge_longer_than_its_budget(tiny_model_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = [{"role": "user", "content": "Say the word apple."}]
    prompt = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    data = TensorDict(
        {"prompts": torch.nested.as_nested_tensor([torch.tensor(prompt)], layout=torch.jagged)},
        batch_size=[1],
    )
    tu.assign_non_tensor_stack(data, "raw_prompt", [messages])
    tu.assign_non_tensor_stack(data, "oel_knowledge", ["a long rule " * 20])
    worker = SimpleNamespace(
        consolidation=ConsolidationConfig(max_knowledge_length=16),
        tokenizer=tokenizer,
        chat_template_kwargs={},
    )
    with pytest.raises(TeacherPromptTooLongError, match="oel.max_knowledge_length=16"):
        ConsolidationWorker.teacher_prompts(worker, data)
    worker.consolidation = ConsolidationConfig(max_knowledge_length=512)
    (teacher_prompt,) = ConsolidationWorker.teacher_prompts(worker, data)
    assert len(teacher_prompt) > len(prompt)


def test_worker_refuses_a_prompt_column_that_is_not_the_students_prompt(tiny_model_dir):
    """The teacher reads the sample's prompt column with the knowledge: when that column does not render to
    the prompt the student read (a game row's placeholder prompt, another chat-template setting), the
    teacher would score the response after another prompt. Without knowledge the student's ids are reused
    as they are, so nothing is compared."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    played = [
        {"role": "system", "content": "Open a door."},
        {"role": "user", "content": "Doors: [ship] [map]"},
    ]
    placeholder = [{"role": "system", "content": "Open a door."}, {"role": "user", "content": "seed 7"}]
    prompt = tokenizer.apply_chat_template(
        played, add_generation_prompt=True, tokenize=True, return_dict=False
    )

    def data(raw_prompt, knowledge):
        batch = TensorDict(
            {"prompts": torch.nested.as_nested_tensor([torch.tensor(prompt)], layout=torch.jagged)},
            batch_size=[1],
        )
        tu.assign_non_tensor_stack(batch, "raw_prompt", [raw_prompt])
        tu.assign_non_tensor_stack(batch, "oel_knowledge", [knowledge])
        return batch

    worker = SimpleNamespace(
        consolidation=ConsolidationConfig(max_knowledge_length=512),
        tokenizer=tokenizer,
        chat_template_kwargs={},
    )
    with pytest.raises(TeacherPromptMismatchError, match=r"sample 0: its prompt column .* is not the prompt"):
        ConsolidationWorker.teacher_prompts(worker, data(placeholder, "- the exit is [ship]"))
    (teacher,) = ConsolidationWorker.teacher_prompts(worker, data(played, "- the exit is [ship]"))
    assert len(teacher) > len(prompt)
    assert ConsolidationWorker.teacher_prompts(worker, data(placeholder, "")) == [prompt]
