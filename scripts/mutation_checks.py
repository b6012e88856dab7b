"""Shows that tests catch the bugs they are named for: each check breaks the code on a copy of the
repository and runs the tests that must then fail.

    .venv/bin/python scripts/mutation_checks.py            # every unit-level check (5-10 minutes)
    .venv/bin/python scripts/mutation_checks.py --list
    .venv/bin/python scripts/mutation_checks.py extraction-prompt-without-knowledge

A check passes when its tests FAIL on the broken copy (and the same tests pass on the unbroken one, run
first). The working tree is never touched. Prints one line per check, then a JSON summary as the last line.
Checks whose tests launch verl's real stack (marked [verl] by --list: a broken copy cannot reuse the
launches a suite run shares, so each costs two launches) run only when named or with --verl.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutation:
    name: str
    why: str  # the bug it plants
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    # "verl": its tests launch verl's real stack (minutes each, twice: unbroken, then broken); run only
    # when named or with --verl.
    stack: str = "unit"


MUTATIONS = [
    Mutation(
        "extraction-prompt-without-knowledge",
        "the extraction loop sends no previous knowledge",
        "verl_oel/agent_loop/extraction_loop.py",
        "                game_record(instruction, record),\n                stream.render(),",
        '                game_record(instruction, record),\n                "",',
        (
            "tests/agent_loop/test_extraction_loop.py::"
            "test_the_extraction_prompt_holds_the_trajectory_and_previous_knowledge",
        ),
    ),
    Mutation(
        "extraction-prompt-without-trajectory",
        "the extraction loop sends an empty game record",
        "verl_oel/agent_loop/extraction_loop.py",
        "                game_record(instruction, record),\n                stream.render(),",
        "                game_record(instruction, type(record)(**{**record.__dict__, "
        '"observations": [], "replies": []})),\n                stream.render(),',
        (
            "tests/agent_loop/test_extraction_loop.py::"
            "test_the_extraction_prompt_holds_the_trajectory_and_previous_knowledge",
        ),
    ),
    Mutation(
        "thinking-lines-not-counted",
        "lines inside <think> blocks are dropped without being counted",
        "verl_oel/knowledge/parsing.py",
        "        dropped_in_thinking=in_thinking,",
        "        dropped_in_thinking=0,",
        ("tests/agent_loop/test_extraction_loop.py::test_items_accumulate_with_their_provenance",),
    ),
    Mutation(
        "episode-not-cut-at-the-response-cap",
        "a multi-turn episode goes on after its environment tokens reach the response cap",
        "verl_oel/agent_loop/game_loop.py",
        "            if len(mask_after) >= self.response_length:",
        "            if False:",
        ("tests/agent_loop/test_game_agent_loop.py::test_an_overlong_episode_is_cut_at_the_response_cap",),
    ),
    Mutation(
        "budget-check-ignores-the-template",
        "the launch check compares the knowledge budget alone with oel.max_knowledge_length",
        "verl_oel/recipe_checks.py",
        "    if budget + overhead > max_knowledge:",
        "    if budget > max_knowledge:",
        (
            "tests/oel/test_oel_recipes.py::test_a_knowledge_budget_the_teacher_cannot_read_fails_naming_the_keys",
        ),
    ),
    Mutation(
        "template-bound-without-its-text",
        "the template's bound counts only the seams, not its own text",
        "verl_oel/knowledge/injection.py",
        "    return sum(count_tokens(piece) for piece in literal) + SEAM_TOKENS * seams",
        "    return SEAM_TOKENS * seams",
        ("tests/knowledge/test_knowledge_injection.py",),
    ),
    Mutation(
        "prompt-silently-cut",
        "the agent loops cut an overlong prompt to its last tokens, as verl does, instead of refusing it",
        "verl_oel/agent_loop/prompt_length.py",
        "        if len(prompt_ids) > limit:\n            raise PromptTooLongError(",
        "        if len(prompt_ids) > limit:\n            return prompt_ids[-limit:]\n"
        "            raise PromptTooLongError(",
        (
            "tests/agent_loop/test_game_agent_loop.py::test_a_prompt_verl_would_cut_is_an_error_naming_the_key",
            "tests/agent_loop/test_extraction_loop.py::"
            "test_an_extraction_prompt_verl_would_cut_is_an_error_and_nothing_is_saved",
        ),
    ),
    Mutation(
        "extraction-bound-without-replies",
        "the launch check's bound on the extraction prompt forgets the replies of the game record",
        "verl_oel/oel/prompt_bounds.py",
        "    total = fixed + p + max_turns * reply_cap + MAX_REASON_BYTES + knowledge + seams",
        "    total = fixed + p + MAX_REASON_BYTES + knowledge + seams",
        ("tests/agent_loop/test_prompt_bounds.py::test_every_prompt_is_within_the_bound_of_its_kind",),
    ),
    Mutation(
        "turn-prompt-over-the-students-length",
        "a game turn without knowledge may grow past data.max_prompt_length, which the bounds count on",
        "verl_oel/agent_loop/prompt_length.py",
        "        if not knowledge.strip() and len(prompt_ids) > limit:",
        "        if False:",
        (
            "tests/agent_loop/test_game_agent_loop.py::"
            "test_a_turn_prompt_without_knowledge_over_the_students_length_is_an_error",
        ),
    ),
    Mutation(
        "ulysses-accepted",
        "the launch check lets Ulysses sequence parallelism through",
        "verl_oel/recipe_checks.py",
        "            if size is not None and int(size) > 1:",
        "            if size is not None and int(size) > 99:",
        (
            "tests/oel/test_oel_recipes.py::test_a_verl_option_the_passes_cannot_honour_is_refused_naming_the_key",
        ),
    ),
    Mutation(
        "small-deployment-accepted",
        "the launch check lets a deployment smaller than one batch through",
        "verl_oel/recipe_checks.py",
        "    if batch is not None and loop.deployment.games < int(batch):",
        "    if batch is not None and loop.deployment.games < 0:",
        (
            "tests/oel/test_oel_recipes.py::"
            "test_a_deployment_that_cannot_fill_a_batch_fails_at_start_naming_the_keys",
        ),
    ),
    Mutation(
        "warm-prompts-drift-from-the-loops",
        "the warm-up's copy of the game prompt puts the knowledge elsewhere than the game loop does",
        "verl_oel/models/warm/prompts.py",
        "    return with_knowledge(messages, knowledge)",
        "    return with_knowledge(messages, knowledge, template='{prompt}\\n\\n{knowledge}')",
        ("tests/models/test_warm_model.py::test_prompts_are_the_game_loops",),
    ),
    Mutation(
        "seed-splits-overlap-across-base-seeds",
        "each base seed's split blocks start one block apart, so seed 1's train games are seed 0's val games",
        "verl_oel/seeds.py",
        "    start = (base_seed * len(SPLIT_OFFSETS) + SPLIT_OFFSETS[split]) * SPLIT_STRIDE",
        "    start = (base_seed + SPLIT_OFFSETS[split]) * SPLIT_STRIDE",
        ("tests/test_seeds.py::test_the_splits_never_share_a_game_at_their_largest",),
    ),
    Mutation(
        "extraction-streams-share-sampling-seeds",
        "two knowledge streams sample some of their games with the same vLLM seed",
        "verl_oel/seeds.py",
        "    return stream_seed * _STREAM_SEED_STRIDE + stream * _STREAM_STRIDE + game_index",
        "    return stream_seed * _STREAM_SEED_STRIDE + stream + game_index",
        (
            "tests/test_seeds.py::test_every_extraction_request_of_a_paper_sized_round_samples_with_its_own_seed",
        ),
    ),
    Mutation(
        "warm-build-lets-the-callers-kernels-through",
        "the warm build's training process inherits the caller's kernel variables (ATen, MKL): other bytes",
        "verl_oel/models/warm/train.py",
        "    env = {name: value for name, value in os.environ.items() if name not in KERNEL_VARIABLES}\n",
        "    env = dict(os.environ)\n",
        ("tests/models/test_warm_model.py::test_the_callers_kernel_variables_do_not_reach_the_build",),
    ),
    Mutation(
        "warm-training-accepts-kernel-variables",
        "the warm build's training process trains with kernel variables it should never have got",
        "verl_oel/models/warm/__main__.py",
        "    if chosen:\n",
        "    if False:\n",
        ("tests/models/test_warm_model.py::test_the_training_process_refuses_kernel_variables",),
    ),
    Mutation(
        "single-node-run-on-the-network",
        "a single-node launch leaves Ray's node address, and so verl's vLLM server, on the machine's address",
        "verl_oel/network.py",
        "    if listen_mode(config) == LOOPBACK:\n",
        "    if False:\n",
        (
            "tests/test_network.py::test_auto_is_loopback_on_one_node_and_the_nodes_address_when_others_must_reach_it",
        ),
    ),
    Mutation(
        "orphan-trainer-marks-stages",
        "a killed launcher's trainer, still alive for a few seconds, goes on marking stages done",
        "verl_oel/oel/run_state.py",
        "            self._lock_handle.check()\n",
        "            pass\n",
        ("tests/oel/test_oel_run_state.py::test_an_orphan_trainer_of_a_killed_launcher_changes_nothing",),
    ),
    Mutation(
        "shm-cleanup-by-name-only",
        "the shared-memory cleanup matches mappings by name only, deleting a neighbour's new semaphore",
        "verl_oel/platform/shm.py",
        "            if (pids := by_inode.get((SHM_DIR / name).stat().st_ino)) is not None:\n",
        "            if (pids := None) is not None:\n",
        ("tests/platform/test_shm_cleanup.py::test_a_semaphore_another_run_just_created_is_kept",),
    ),
    Mutation(
        "damaged-checkpoint-not-checked",
        "the restart check does not look at finished checkpoints: a deleted one fails only when it is read",
        "verl_oel/oel/run_integrity.py",
        "    if stage == CHECKPOINT:  # the round's model",
        "    if False:  # the round's model",
        (
            "tests/oel/test_oel_run_integrity.py::"
            "test_a_damaged_run_directory_is_refused_naming_the_file_and_nothing_is_changed",
        ),
    ),
    Mutation(
        "checkpoint-copied-in-place",
        "the checkpoint is copied straight into its folder: a full disk leaves a partial model there",
        "verl_oel/oel/trainer.py",
        "        shutil.copytree(source, staging, dirs_exist_ok=True)\n",
        "        shutil.copytree(source, target, dirs_exist_ok=True)\n",
        (
            "tests/oel/test_oel_run_integrity.py::"
            "test_a_full_disk_during_a_checkpoint_keeps_every_model_whole_and_the_run_resumes",
        ),
    ),
    Mutation(
        "shm-ledger-takes-a-neighbours-segment",
        "a launch's ledger writes down every new /dev/shm segment, a neighbour run's too, for later removal",
        "verl_oel/platform/shm.py",
        "if name in new and pids & ours)",
        "if name in new)",
        (
            "tests/platform/test_shm_cleanup.py::"
            "test_what_a_killed_launch_left_is_removed_at_the_next_start_and_nothing_else",
        ),
    ),
    Mutation(
        "launches-report-usage",
        "a launch leaves vLLM's and Ray's usage reports on (vLLM posts to its server, appends to ~/.config)",
        "verl_oel/network.py",
        "    env = {API_KEY: secrets.token_urlsafe(32), **NO_USAGE_REPORTS}\n",
        "    env = {API_KEY: secrets.token_urlsafe(32)}\n",
        ("tests/test_network.py::test_a_launch_turns_off_vllms_and_rays_usage_reports",),
    ),
    Mutation(
        "tail-aware-loss-gradient-left-to-autograd",
        "the tail-aware top-k loss lets autograd differentiate its value: equal in exact arithmetic, but at "
        "teacher == student its gradient is round-off, not 0",
        "verl_oel/distill/losses.py",
        "    per_token = value + (grad * (student - student.detach())).sum(-1)\n",
        "    per_token = (student.exp() * (student - teacher)).sum(-1)"
        " + student_tail.exp() * log_tail_ratio\n",
        (
            "tests/distill/test_losses.py::"
            "test_tail_aware_topk_reverse_kl_is_exactly_zero_with_zero_gradient_at_teacher_equal_student",
        ),
    ),
    Mutation(
        "teacher-tail-from-its-top-k-log-probs",
        "the tail-aware loss takes the teacher's tail as 1 - sum(exp(log-probs at the ids)): round-off for a "
        "confident teacher in float32",
        "verl_oel/distill/losses.py",
        "        log_tail_ratio = student_tail - _teacher_log_tail("
        "batch, rows, on_support.ids, chunk_size)\n",
        "        log_tail_ratio = student_tail - torch.log((-torch.expm1(torch.logsumexp(teacher, -1).clamp("
        "max=0.0))).clamp_min(torch.finfo(teacher.dtype).tiny))\n",
        (
            "tests/distill/test_losses.py::test_the_tail_aware_loss_keeps_a_confident_teachers_tail_in_float32",
        ),
    ),
    Mutation(
        "a-negative-knowledge-budget-accepted",
        "oel.extraction.budget_tokens is not checked at start (a negative budget reached the length sums)",
        "verl_oel/oel/extraction_stage.py",
        '            for key in ("num_streams", "games_per_stream", "budget_tokens", "max_item_tokens")\n',
        '            for key in ("num_streams", "games_per_stream", "max_item_tokens")\n',
        ("tests/oel/test_oel_config.py::test_a_bad_extraction_value_is_named_in_full",),
    ),
    Mutation(
        "knowledge-diff-on-raw-text",
        "verl-oel report --diff matches items by raw text: a re-punctuated item shows as removed and added",
        "verl_oel/oel/knowledge_report.py",
        '                by_key.setdefault(normalise_item(item["text"]), item["text"])\n',
        '                by_key.setdefault(item["text"], item["text"])\n',
        ("tests/oel/test_oel_report.py::test_verl_oel_report_diffs_two_rounds_knowledge",),
    ),
    Mutation(
        "empty-round-reported-with-knowledge",
        "a round whose extraction wrote no item reports its teacher's no-knowledge score as 'with knowledge'",
        "verl_oel/oel/report.py",
        '    return record["round"] > 0 and record["knowledge_items"] == 0\n',
        "    return False\n",
        (
            "tests/oel/test_oel_report.py::test_a_round_whose_extraction_wrote_nothing_shows_no_knowledge_numbers",
        ),
    ),
    Mutation(
        "forward-kl-over-the-students-top-k",
        "forward_kl's update reads the student's top-k ids instead of the teacher's own",
        "verl_oel/distill/actor_loss.py",
        "TEACHER_TOPK_IDS if self.config.uses_teacher_topk else TOPK_IDS",
        "TOPK_IDS",
        (
            "tests/distill/test_teacher_pass.py::"
            "test_forward_kl_over_the_teachers_top_k_through_the_actor_path_matches_the_direct_formula",
        ),
    ),
    Mutation(
        "full-kl-teacher-read-at-the-students-positions",
        "the full reverse KL reads the teacher's response-only logits at the student's packed positions",
        "verl_oel/distill/losses.py",
        "log_q = _chunk_log_probs(flat_teacher, teacher_rows[start:stop], temperature).to(dtype)",
        "log_q = _chunk_log_probs(flat_teacher, rows[start:stop], temperature).to(dtype)",
        (
            "tests/distill/test_losses.py::"
            "test_full_reverse_kl_from_the_teachers_response_rows_matches_bruteforce",
        ),
    ),
    Mutation(
        "teacher-ships-no-log-probs-at-its-own-top-k",
        "the teacher pass of a loss over its own top-k ships its ids without its log-probs there",
        "verl_oel/distill/teacher.py",
        "    at = ids if ids is not None else (topk_ids if own_topk_logprobs else None)\n",
        "    at = ids\n",
        (
            "tests/distill/test_teacher_pass.py::"
            "test_forward_kl_over_the_teachers_top_k_through_the_actor_path_matches_the_direct_formula",
        ),
    ),
    Mutation(
        "eval-cli-drops-the-knowledge",
        "verl-oel eval --knowledge FILE plays prompts without the knowledge, still reporting with_knowledge",
        "verl_oel/evaluation.py",
        "        knowledge=knowledge,\n",
        '        knowledge="",\n',
        ("tests/integration/test_verl_games_cpu.py::test_eval_with_knowledge_plays_prompts_that_hold_it",),
        stack="verl",
    ),
    Mutation(
        "knowledge-leaks-into-the-no-knowledge-evaluation",
        "the round's evaluation 'without knowledge' plays the held-out games with the round's knowledge",
        "verl_oel/oel/trainer.py",
        "if trained else None\n        result = self._evaluate(round, None)\n",
        "if trained else None\n        result = self._evaluate(round, self._round_knowledge(round))\n",
        (
            "tests/oel/test_oel_learns_cpu.py::test_without_consolidation_nothing_is_learned_and_no_knowledge_leaks",
        ),
        stack="verl",
    ),
    Mutation(
        "teacher-refresh-does-nothing",
        "a round's teacher refresh leaves the ref model as it was: round 2's teacher is the base, not pi_1",
        "verl_oel/oel/trainer.py",
        "        self.refresh_teacher()\n        teacher = self.state.previous_model(round)\n",
        "        teacher = self.state.previous_model(round)\n",
        (
            "tests/oel/test_oel_run_cpu.py::"
            "test_two_rounds_leave_every_artefact_and_round_two_learns_from_round_one",
        ),
        stack="verl",
    ),
    Mutation(
        "consolidation-climbs-the-kl",
        "the update's loss has the wrong sign: the student moves away from the teacher",
        "verl_oel/distill/actor_loss.py",
        "            loss_mat=per_token,\n",
        "            loss_mat=-per_token,\n",
        (
            "tests/distill/test_consolidation_cpu.py::"
            "test_kl_to_the_knowledge_conditioned_teacher_falls[one rank]",
        ),
        stack="verl",
    ),
    Mutation(
        "resume-after-consolidation-from-the-previous-model",
        "a run killed after consolidation, before its checkpoint, resumes from pi_{r-1}: the round's "
        "training is lost",
        "verl_oel/oel/run_state.py",
        "        if self.is_done(step.round, CONSOLIDATION):\n",
        "        if False:\n",
        (
            "tests/oel/test_oel_run_cpu.py::test_a_run_killed_at_every_kind_of_stage_resumes_to_the_same_result",
        ),
        stack="verl",
    ),
    Mutation(
        "actor-loss-without-the-temperature",
        "the update's loss reads the raw logits at temperature 1, as if verl's engine had scaled them",
        "verl_oel/distill/actor_loss.py",
        "            temperature=self.temperature,\n",
        "            temperature=1.0,\n",
        (
            "tests/distill/test_teacher_pass.py::"
            "test_sampled_token_losses_through_the_actor_path_match_the_direct_formula",
        ),
    ),
    Mutation(
        "deployment-games-not-generated-ahead",
        "the deployment stage's games are not generated ahead (the rollout would compile them)",
        "verl_oel/oel/stage_data.py",
        "    elif stage == DEPLOYMENT:\n",
        '    elif stage == "not-a-stage":\n',
        (
            "tests/oel/test_oel_stage_data.py::test_the_games_a_stage_plays_are_read_from_the_rows_it_writes",
            "tests/oel/test_oel_stage_games.py::"
            "test_the_unfinished_stages_games_are_generated_ahead_and_a_resume_finds_them",
        ),
    ),
    Mutation(
        "cached-games-generated-again",
        "games already on disk are sent to the worker pool again instead of being skipped",
        "verl_oel/envs/game_generation.py",
        "            elif game.path.is_file():\n",
        "            elif False:\n",
        (
            "tests/oel/test_oel_stage_games.py::"
            "test_the_unfinished_stages_games_are_generated_ahead_and_a_resume_finds_them",
        ),
    ),
    Mutation(
        "a-failed-game-generation-is-skipped",
        "a game whose generation failed is counted as cached and the stage goes on without it",
        "verl_oel/envs/game_generation.py",
        "            return future.result()\n        except Exception as error:",
        "            return future.result()\n        except Exception:\n            return False, 0.0\n"
        "        except BaseException as error:",
        ("tests/envs/test_game_generation.py::test_a_game_that_cannot_be_generated_is_named",),
    ),
    Mutation(
        "teacher-trusts-the-prompt-column",
        "the teacher pass builds its prompt from a prompt column that is not the student's, unchecked",
        "verl_oel/distill/worker.py",
        "            if knowledge and tokenize_chat(messages) != student_prompt.tolist():\n",
        "            if False:\n",
        (
            "tests/distill/test_length_safety.py::"
            "test_worker_refuses_a_prompt_column_that_is_not_the_students_prompt",
        ),
    ),
    Mutation(
        "online-rows-keep-the-placeholder-prompt",
        "the online mode's rows keep the game rows' placeholder prompt, from which the teacher's is built",
        "verl_oel/oel/stage_data.py",
        '            row["prompt"] = opening_messages(',
        '            row["placeholder"] = opening_messages(',
        (
            "tests/oel/test_oel_stage_data.py::test_online_rows_carry_the_real_opening_prompt_and_one_stream_each",
        ),
    ),
    Mutation(
        "ood-entries-play-the-trained-game",
        "every oel.ood.games entry plays the run's own game instead of its own",
        "verl_oel/oel/stage_data.py",
        "        game=entry.game,\n        settings=entry.game_settings,\n",
        "        game=loop.game,\n        settings=loop.game_settings,\n",
        (
            "tests/oel/test_oel_stage_data.py::"
            "test_ood_games_are_the_same_every_round_and_share_no_seed_with_the_held_out_games",
        ),
    ),
    Mutation(
        "ood-change-against-the-previous-round",
        "the report's OOD table shows each round's change from the previous round's instead of the base's",
        "verl_oel/oel/report.py",
        '                cell += f" ({100 * (value - value_of(base)):+.1f})"\n',
        '                cell += f" ({100 * (value - value_of(previous)):+.1f})"\n'
        "            previous = record\n",
        (
            "tests/oel/test_oel_report.py::"
            "test_out_of_domain_games_are_tabled_against_the_base_and_drawn_in_a_third_panel",
        ),
    ),
    Mutation(
        "ifbench-checks-the-stripped-reply",
        "IFBench's strict check reads the reply stripped of surrounding whitespace, not as it was written",
        "verl_oel/ifbench.py",
        "verdicts.append(bool(response.strip() and checker.check_following(response)))",
        "verdicts.append(bool(response.strip() and checker.check_following(response.strip())))",
        (
            "tests/test_ifbench.py::test_known_replies_get_ifbench_strict_verdicts",
            "tests/test_ifbench.py::test_every_checkable_prompt_gets_the_verdicts_of_ifbench_own_evaluation",
        ),
    ),
    Mutation(
        "a-round-without-knowledge-still-trains",
        "a round whose extraction kept no item consolidates anyway (on round-off), not keeping its model",
        "verl_oel/oel/trainer.py",
        '        if sum(self.state.summary(round, EXTRACTION)["items"]) == 0:\n',
        "        if False:\n",
        (
            "tests/oel/test_oel_empty_round_cpu.py::"
            "test_a_round_without_knowledge_skips_consolidation_and_keeps_the_previous_model",
        ),
        stack="verl",
    ),
]


def _copy_of_the_repository(into: Path) -> Path:
    """Tracked and untracked (not ignored) files: what the working tree holds, without .venv or runs."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (into / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, into / name)
    return into


def _pytest(copy: Path, tests: tuple[str, ...]) -> tuple[int, list[str]]:
    # The copy's package first on the path, ahead of the editable install of the working tree.
    env = {**os.environ, "PYTHONPATH": f"{copy}{os.pathsep}{copy / 'tests'}"}
    probe = subprocess.run(
        [sys.executable, "-c", "import verl_oel; print(verl_oel.__file__)"],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not Path(probe).resolve().is_relative_to(copy.resolve()):
        raise SystemExit(f"the copy's tests would import {probe}, not the copy's package")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
    )
    failures = [line[:300] for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
    return done.returncode, failures


def run(mutation: Mutation, broken_only: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="verl-oel-mutation-") as tmp:
        copy = _copy_of_the_repository(Path(tmp))
        unbroken = None if broken_only else _pytest(copy, mutation.tests)[0]
        target = copy / mutation.path
        source = target.read_text()
        if source.count(mutation.old) != 1:
            raise SystemExit(f"{mutation.name}: the code to break is not once in {mutation.path}; update it")
        target.write_text(source.replace(mutation.old, mutation.new))
        broken, failures = _pytest(copy, mutation.tests)
    caught = unbroken in (0, None) and broken != 0
    return {
        "name": mutation.name,
        "caught": caught,
        "unbroken_exit": unbroken,  # None: not run (--broken-only)
        "broken_exit": broken,
        # What failed and why (pytest's summary lines): a failure for another reason (a launch that could
        # not start, a timeout) is not the bug being caught.
        "broken_failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="checks to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the checks and the bug each plants")
    parser.add_argument("--verl", action="store_true", help="also the checks whose tests launch verl")
    parser.add_argument(
        "--broken-only",
        action="store_true",
        help="skip the run on the unbroken copy (for [verl] checks on a commit whose suite passed: halves "
        "their cost; the JSON then says unbroken_exit null)",
    )
    args = parser.parse_args()
    by_name = {m.name: m for m in MUTATIONS}
    if args.list:
        for m in MUTATIONS:
            print(f"{m.name}{' [verl]' if m.stack == 'verl' else ''}: {m.why} ({', '.join(m.tests)})")
        return
    unknown = [n for n in args.names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown check(s) {unknown}; --list shows them")
    results = []
    default = [m for m in MUTATIONS if args.verl or m.stack == "unit"]
    for m in [by_name[n] for n in args.names] or default:
        result = run(m, broken_only=args.broken_only)
        results.append(result)
        verdict = "caught" if result["caught"] else "NOT CAUGHT"
        print(f"{m.name}: {verdict} ({m.why})", flush=True)
        for line in result["broken_failures"]:
            print(f"    {line}", flush=True)
    caught = sum(r["caught"] for r in results)
    print(json.dumps({"checks": len(results), "caught": caught, "results": results}))
    if not all(r["caught"] for r in results):
        sys.exit(1)


if __name__ == "__main__":
    main()
