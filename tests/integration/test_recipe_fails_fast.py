"""Impossible recipes fail at launch, before Ray starts, with a message naming the key."""

from __future__ import annotations

import time

from oel_testing import run_verl_oel

from verl_oel.data.smoke import write_smoke_data


def _train(tmp_path, *overrides):
    data = write_smoke_data(tmp_path / "data")
    start = time.monotonic()
    proc = run_verl_oel(
        [
            "train",
            "--config-name",
            "grpo_cpu_smoke",
            f"data.train_files={data}/train.parquet",
            f"data.val_files={data}/val.parquet",
            *overrides,
        ],
        timeout=120,
    )
    return proc, time.monotonic() - start


def test_missing_model_folder_names_the_key(tmp_path):
    proc, seconds = _train(tmp_path, f"actor_rollout_ref.model.path={tmp_path}/no-such-model")
    assert proc.returncode == 2
    assert "actor_rollout_ref.model.path" in proc.stderr and "no such folder" in proc.stderr
    assert "Started a local Ray instance" not in proc.stdout + proc.stderr
    assert seconds < 60


def test_context_window_shorter_than_prompt_plus_response_names_the_keys(tmp_path, tiny_model_dir):
    proc, _ = _train(
        tmp_path,
        f"actor_rollout_ref.model.path={tiny_model_dir}",
        "data.max_prompt_length=64",
        "data.max_response_length=64",
        "actor_rollout_ref.rollout.max_model_len=100",
    )
    assert proc.returncode == 2
    assert "actor_rollout_ref.rollout.max_model_len=100" in proc.stderr
    assert "64 + 64 = 128" in proc.stderr


def test_folder_without_config_json_is_not_a_model(tmp_path):
    (tmp_path / "empty-model").mkdir()
    proc, _ = _train(tmp_path, f"actor_rollout_ref.model.path={tmp_path}/empty-model")
    assert proc.returncode == 2
    assert "no config.json" in proc.stderr


def test_dry_run_of_a_gpu_recipe_on_this_cpu_machine_prints_the_lengths_and_starts_nothing():
    proc = run_verl_oel(["train", "--dry-run", "--config-name", "oel_frozenlake_qwen3_4b"], timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "every launch check passed" in out
    assert "model Qwen/Qwen3-4B: not on disk here; skipped" in out  # says what it could not check
    assert "oel.extraction.budget_tokens = 8192" in out and "data.max_prompt_length = 2048" in out
    # The rollout's prompt length is derived from the budgets: the extraction prompt is the longest
    # (without the tokenizer, its fixed text is bounded by bytes), and every sum is printed.
    assert "actor_rollout_ref.rollout.prompt_length = 16861 (derived: the longest prompt" in out
    assert "an extraction prompt: " in out and "+ oel.extraction.budget_tokens 8192 + seams 52 = 16861" in out
    assert "a game turn with knowledge in context: data.max_prompt_length 2048 + " in out
    assert "\noel:\n" in out and "consolidation_steps: 50" in out
    assert "Ray" not in out + proc.stderr


def test_dry_run_with_an_option_the_passes_cannot_honour_exits_2_naming_it():
    proc = run_verl_oel(
        [
            "train",
            "--dry-run",
            "--config-name",
            "oel_frozenlake_qwen3_4b",
            "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2",
        ],
        timeout=120,
    )
    assert proc.returncode == 2
    assert "actor_rollout_ref.actor.ulysses_sequence_parallel_size=2" in proc.stderr
    assert "lengths and budgets" not in proc.stdout


def test_a_float32_recipe_that_would_compute_in_bf16_exits_2_naming_both_keys():
    """verl's FSDP engine computes in ``fsdp_config.mixed_precision.param_dtype`` (bf16 when unset) and not
    in ``fsdp_config.dtype``: a CPU recipe's float32 without the former would silently run in bf16."""
    proc = run_verl_oel(
        [
            "train",
            "--dry-run",
            "--config-name",
            "consolidation_cpu",
            "actor_rollout_ref.ref.fsdp_config.mixed_precision=null",
        ],
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "actor_rollout_ref.ref.fsdp_config.dtype='float32'" in proc.stderr
    assert "actor_rollout_ref.ref.fsdp_config.mixed_precision.param_dtype='bf16' (unset" in proc.stderr
    assert "actor_rollout_ref.actor.fsdp_config" not in proc.stderr  # the actor's recipe values agree
