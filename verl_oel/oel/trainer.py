"""The OEL loop as one verl trainer: every stage of every round in ONE verl launch.

Selected from YAML through verl's own trainer registry (``trainer.v1.trainer_mode: oel``); ``verl-oel
train`` opens the run directory, then launches verl's ``main_ppo`` with this mode (``trainer.py``).
``OELTrainer`` is the consolidation trainer (``verl_oel.distill.trainer``) whose ``fit`` runs the rounds
instead of one training loop. Between consolidation epochs, the "recipe callback" of the design card, it
uses the pieces verl already started once:

- extraction, deployment and evaluation are verl's validation pass (``_validate``) over rows this module
  writes: the same agent loops, vLLM server, reward function and ``val_kwargs`` sampling as training;
  the agent loops write knowledge streams and deployment episodes to the run directory;
- consolidation is verl's training step on the round's replayed deployment prompts (in the online mode,
  on the round's fresh games, which the student plays there), with the frozen teacher (verl's ref,
  refreshed from the actor at the round's start) reading them with the knowledge; a round whose
  extraction kept no knowledge skips it and keeps its model (``_nothing_to_consolidate``);
- the checkpoint is verl's own HF save of the actor, published into the run directory.

Stage markers (``RunState``) make a killed run resumable: the launcher restarts verl from the newest
model on disk (``RunState.start_model``) and this trainer skips every finished stage. Everything a
stage samples is seeded per row and each round starts with a fresh optimizer, so the resumed run
reproduces the uninterrupted one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import transfer_queue as tq
from omegaconf import DictConfig, OmegaConf, open_dict
from torchdata.stateful_dataloader import StatefulDataLoader
from verl.trainer.ppo.utils import create_rl_dataset, create_rl_sampler
from verl.trainer.ppo.v1.trainer_base import register_trainer
from verl.utils.dataset.rl_dataset import collate_fn
from verl.utils.debug import marked_timer
from verl.utils.skip import SkipManager
from verl.utils.tracking import DapoFilteredRewardTableLogger, Tracking, ValidationGenerationsLogger

from verl_oel.agent_loop.ifbench_loop import reply_path
from verl_oel.atomic_io import (
    leftover_temporaries,
    publish_folder,
    staged_folder,
    write_parquet_atomic,
    write_text_atomic,
)
from verl_oel.console import emit_event, log_problem
from verl_oel.distill.trainer import ConsolidationTrainer
from verl_oel.distill.worker import weights_fingerprint
from verl_oel.evaluation import validation_metric
from verl_oel.ifbench import (
    IFBenchPrompt,
    PromptVerdict,
    checkable_prompts,
    follows_instructions,
    instruction_strict,
    offline_unchecked_instructions,
    prompt_strict,
    shipped_prompts,
)
from verl_oel.knowledge import load_stream, stream_path
from verl_oel.oel.config import TRAINER_MODE, OELConfig
from verl_oel.oel.extraction_stage import collect_extraction, extraction_rows, stream_specs
from verl_oel.oel.round_eval import (
    IFBENCH_FRACTIONS,
    OOD_RATES,
    ConsolidationSummary,
    IFBenchScore,
    InContextPoint,
    OODResult,
    RoundEval,
    save_ifbench_record,
    save_round_eval,
)
from verl_oel.oel.run_state import (
    CHECKPOINT,
    CONSOLIDATION,
    DEPLOYMENT,
    EVALUATION,
    EXTRACTION,
    IN_CONTEXT,
    TEACHER_REFRESH,
    RunState,
)
from verl_oel.oel.stage_data import (
    IFBENCH_SOURCE,
    consolidation_rows,
    deployment_rows,
    evaluation_rows,
    ifbench_rows,
    online_rows,
    ood_rows,
)
from verl_oel.oel.stage_games import StageGames


def _plain(value: Any) -> Any:
    """A metric value as plain JSON data (verl's metrics hold numpy scalars)."""
    if isinstance(value, np.generic):
        return value.item()
    return value


@register_trainer(TRAINER_MODE)
class OELTrainer(ConsolidationTrainer):
    """All rounds of Online Experiential Learning in one verl launch (see the module docstring)."""

    def __init__(self, config: DictConfig) -> None:
        self.loop = OELConfig.from_mapping(OmegaConf.to_container(config.oel, resolve=True))
        if self.loop.run_dir is None:
            raise ValueError("oel.run_dir: the OEL trainer needs the run directory (verl-oel train sets it)")
        super().__init__(config)

    # ---------------------------------------------------------------- verl hooks

    def _init_dataloader(self) -> None:
        """No dataset at start-up: every stage writes the rows it plays or trains on."""
        self.train_dataset = self.val_dataset = None
        self.train_dataloader = self.val_dataloader = None
        self.train_dataloader_it = None
        with open_dict(self.config):
            # verl's non-"sync" trainer modes refill exactly one prompt per dataloader fetch.
            self.config.data.gen_batch_size = 1
        self.steps_per_epoch = self.loop.consolidation_steps
        # At least one: verl builds the actor's LR schedule even for a run that never trains.
        self.total_training_steps = max(1, self.loop.rounds * self.loop.consolidation_steps)
        with open_dict(self.config):
            # The LR schedule's horizon counts optimizer updates over the whole run.
            self.config.actor_rollout_ref.actor.optim.total_training_steps = self.total_training_steps

    def fit(self, agent_loop_manager: Any) -> None:
        self.agent_loop_manager = agent_loop_manager
        SkipManager.init(self.config)
        names = (self.config.trainer.project_name, self.config.trainer.experiment_name)
        self.logger = Tracking(
            project_name=names[0],
            experiment_name=names[1],
            default_backend=self.config.trainer.logger,
            config=OmegaConf.to_container(self.config, resolve=True),
        )
        self.validation_generations_logger = ValidationGenerationsLogger(*names)
        self.dapo_filtered_reward_logger = DapoFilteredRewardTableLogger(*names)
        self.prev_step_profile = self.curr_step_profile = self.next_step_profile = False
        self.state = RunState.attach(self.loop.run_dir)
        stages = {
            TEACHER_REFRESH: self._teacher_refresh,
            EXTRACTION: self._extraction,
            IN_CONTEXT: self._in_context,
            DEPLOYMENT: self._deployment,
            CONSOLIDATION: self._consolidation,
            EVALUATION: self._evaluation,
            CHECKPOINT: self._checkpoint,
        }
        # Every unfinished stage's games are generated ahead, in worker processes (oel/stage_games.py).
        with StageGames(self.loop, self.state) as games:
            while (step := self.state.next_stage()) is not None:
                stage = stages[step.stage] if step.round > 0 else self._evaluate_base
                log_problem(f"round {step.round}: {step.stage} ...")
                emit_event("stage_start", round=step.round, stage=step.stage)  # the launcher's console
                self.state.stage_dir_for_retry(step.round, step.stage)
                self.global_steps = self._tracking_step(step.round)
                started = time.monotonic()
                generation = games.wait_for(step)  # before verl plays them
                summary = {"seconds": 0.0, **stage(step.round), **generation}
                summary["seconds"] = round(time.monotonic() - started, 1)
                self.state.mark_done(step.round, step.stage, summary)
                self.logger.log(
                    data=self._stage_metrics(step.round, step.stage, summary), step=self.global_steps
                )
                log_problem(f"round {step.round}: {step.stage} done {json.dumps(summary)}")
                emit_event("stage_done", round=step.round, stage=step.stage, summary=summary)
        self._shutdown_dump_executor()

    def _tracking_step(self, round: int) -> int:
        """The step a stage logs at: the last consolidation step before it, so a resumed run logs at the
        same steps as an uninterrupted one and the steps never go back."""
        steps = self.loop.consolidation_steps
        if round > 0 and self.state.is_done(round, CONSOLIDATION):
            return round * steps
        return max(0, round - 1) * steps

    @staticmethod
    def _stage_metrics(round: int, stage: str, summary: dict[str, Any]) -> dict[str, float]:
        """A finished stage's numbers for verl's tracking (console, wandb, tensorboard...)."""
        return {
            f"oel/{stage}/{key}": float(value)
            for key, value in summary.items()
            if isinstance(value, int | float) and not isinstance(value, bool)
        } | {"oel/round": float(round)}

    # ---------------------------------------------------------------- playing rows

    def _play(
        self, rows: list[dict[str, Any]], path: Path, max_prompt_length: int | None = None
    ) -> dict[str, float]:
        """Play ``rows`` once through verl's validation pass; returns verl's validation metrics.
        ``max_prompt_length``: the longest prompt verl keeps, when not ``data.max_prompt_length``."""
        write_parquet_atomic(rows, path)
        dataset = self._dataset(path, is_train=False, max_prompt_length=max_prompt_length)
        self.val_dataset = dataset
        self.val_dataloader = StatefulDataLoader(
            dataset=dataset,
            batch_size=len(dataset),
            num_workers=0,
            shuffle=False,
            drop_last=False,
            collate_fn=collate_fn,
        )
        return self._validate()

    def _dataset(self, path: Path, is_train: bool, max_prompt_length: int | None = None) -> Any:
        """verl's dataset of the rows in ``path``, all of them: verl drops a row whose prompt is longer than
        ``data.max_prompt_length`` (or ``max_prompt_length``), which would silently change what a stage plays
        or trains on."""
        data_config = self.config.data
        if max_prompt_length is not None:
            data_config = OmegaConf.merge(data_config, {"max_prompt_length": max_prompt_length})
        dataset = create_rl_dataset([str(path)], data_config, self.tokenizer, self.processor, is_train)
        rows = pq.ParquetFile(path).metadata.num_rows
        if len(dataset) != rows:
            raise RuntimeError(
                f"{path}: verl kept {len(dataset)} of {rows} rows (prompts longer than "
                f"{data_config.max_prompt_length} tokens are dropped): raise data.max_prompt_length"
            )
        return dataset

    def _use_train_rows(self, path: Path) -> None:
        """Make ``path`` verl's training data, read from its first row in order."""
        self.train_dataset = self._dataset(path, is_train=True)
        self.train_dataloader = StatefulDataLoader(
            dataset=self.train_dataset,
            batch_size=1,
            num_workers=0,
            drop_last=True,
            collate_fn=collate_fn,
            sampler=create_rl_sampler(self.config.data, self.train_dataset),
        )
        self.train_dataloader_it = None

    def _nothing_to_consolidate(self, round: int) -> str | None:
        """Why round ``round`` keeps pi_{r-1} unchanged, or None. A round whose streams hold no item gives
        the teacher the student's own prompt: consolidation would train on float round-off (and a moving
        teacher on its own drift, which wrecked the ablation's round 2), and an in-context evaluation would
        be the no-knowledge one again. Such a round skips its in_context, deployment and training; its
        checkpoint is still published (pi_r = pi_{r-1}), so the next round starts as usual."""
        if sum(self.state.summary(round, EXTRACTION)["items"]) == 0:
            return "no knowledge: the round's extraction kept no item"
        return None

    def _round_knowledge(self, round: int) -> list[str]:
        """The round's knowledge as the teacher reads it: each stream's cut-point snapshot, rendered."""
        root = self.state.layout.knowledge_root(round)
        return [
            load_stream(stream_path(root, round, index)).render()
            for index in range(self.loop.extraction.num_streams)
        ]

    # ---------------------------------------------------------------- the stages

    def _evaluate(self, round: int, knowledge: list[str] | None, stage: str = EVALUATION) -> dict[str, float]:
        """The held-out games, played by the model the rollout server holds now; ``model_fingerprint``
        says which weights those are (comparable with a saved model's ``weights_fingerprint``)."""
        name = "with_knowledge" if knowledge else "no_knowledge"
        path = self.state.layout.stage_dir(round, stage) / f"{name}.parquet"
        metrics = self._play(evaluation_rows(self.loop, knowledge), path)
        source = f"verl_oel/{self.loop.game}"
        return {
            "pass_rate": validation_metric(metrics, source, "pass"),
            "tokens_per_turn": validation_metric(metrics, source, "tokens_per_turn"),
            "turns_per_game": validation_metric(metrics, source, "turns"),
            "response_tokens_per_game": validation_metric(metrics, source, "response_tokens"),
            "model_fingerprint": self.actor_rollout_wg.actor_fingerprint()[0],
        }

    def _evaluate_ood(self, round: int) -> tuple[OODResult, ...]:
        """Every ``oel.ood.games`` entry, played by the model the rollout server holds now, no knowledge."""
        results = []
        for index, entry in enumerate(self.loop.ood.games):
            path = self.state.layout.stage_dir(round, EVALUATION) / f"ood_{index}.parquet"
            metrics = self._play(ood_rows(self.loop, index), path)
            source = f"verl_oel/{entry.game}"
            turns = validation_metric(metrics, source, "turns")
            invalid = validation_metric(metrics, source, "invalid_actions")
            results.append(
                OODResult(
                    name=entry.name,
                    num_games=entry.num_games,
                    pass_rate=validation_metric(metrics, source, "pass"),
                    # Per turn, over all the games' turns (both are means over the same games).
                    valid_action_rate=1.0 - invalid / turns,
                )
            )
        return tuple(results)

    def _evaluate_ifbench(self, round: int) -> IFBenchScore | None:
        """The ``oel.ood.ifbench_prompts`` IFBench prompts, answered by the model the rollout server holds
        now, non-thinking and without knowledge; the replies and each instruction's strict verdict go to the
        stage's ``ifbench.json``. None when the run does not measure IFBench."""
        if not self.loop.ood.ifbench:
            return None
        stage_dir = self.state.layout.stage_dir(round, EVALUATION)
        max_tokens = self.loop.ood.ifbench_max_tokens or int(self.config.data.max_response_length)
        replies_dir = stage_dir / "ifbench_replies"
        rows = ifbench_rows(self.loop, max_tokens, replies_dir)
        # Not a student prompt (nothing trains on it): it need only fit the rollout, as the launch checked.
        prompt_length = int(self.config.actor_rollout_ref.rollout.prompt_length)
        metrics = self._play(rows, stage_dir / "ifbench.parquet", max_prompt_length=prompt_length)
        verdicts = []
        for row in rows:
            prompt = IFBenchPrompt.from_json(row["reward_model"]["ground_truth"])
            reply = json.loads(reply_path(replies_dir, prompt.key).read_text(encoding="utf-8"))
            verdicts.append(
                PromptVerdict(
                    key=prompt.key,
                    instruction_id_list=prompt.instruction_id_list,
                    response=reply["response"],
                    response_tokens=reply["response_tokens"],
                    follow_instruction_list=follows_instructions(prompt, reply["response"]),
                )
            )
        score = IFBenchScore(
            prompt_strict=prompt_strict(verdicts),
            instruction_strict=instruction_strict(verdicts),
            prompts=len(verdicts),
            shipped_prompts=len(shipped_prompts()),
            checkable_prompts=len(checkable_prompts()),
            left_out_instructions=offline_unchecked_instructions(),
            max_tokens=max_tokens,
        )
        # verl's reward scored the replies it decoded itself: the saved replies must be the same ones.
        judged = validation_metric(metrics, IFBENCH_SOURCE, "pass")
        if not math.isclose(judged, score.prompt_strict, abs_tol=1e-9):
            raise RuntimeError(
                f"IFBench: verl's validation pass scored {judged} but the replies saved in {replies_dir} "
                f"score {score.prompt_strict}"
            )
        save_ifbench_record(self.state.layout.ifbench_json(round), score, verdicts)
        return score

    @staticmethod
    def _ood_metrics(results: tuple[OODResult, ...], ifbench: IFBenchScore | None) -> dict[str, float]:
        """The OOD results as stage-summary numbers (logged through verl's tracking as oel/evaluation/...)."""
        metrics = {
            f"ood/{result.name}/{name}": getattr(result, name) for result in results for name in OOD_RATES
        }
        if ifbench is not None:
            metrics |= {f"ood/ifbench/{name}": getattr(ifbench, name) for name in IFBENCH_FRACTIONS}
            metrics["ood/ifbench/prompts"] = ifbench.prompts
        return metrics

    def _evaluate_base(self, round: int) -> dict[str, Any]:
        result = self._evaluate(round, None)
        ood, ifbench = self._evaluate_ood(round), self._evaluate_ifbench(round)
        record = RoundEval(
            round=0,
            num_games=self.loop.evaluation.games,
            pass_rate_no_knowledge=result["pass_rate"],
            tokens_per_turn=result["tokens_per_turn"],
            turns_per_game=result["turns_per_game"],
            response_tokens_per_game=result["response_tokens_per_game"],
            ood=ood,
            ifbench=ifbench,
        )
        save_round_eval(self.state.layout, record)
        return result | self._ood_metrics(ood, ifbench)

    def _teacher_refresh(self, round: int) -> dict[str, Any]:
        """The frozen teacher of round r is pi_{r-1}: the actor as the round starts (after a resume, the
        model verl loaded, which is the same policy)."""
        self.refresh_teacher()
        teacher = self.state.previous_model(round)
        # Which weights the teacher really holds, comparable with a saved model's (weights_fingerprint).
        fingerprint = self.actor_rollout_wg.teacher_fingerprint()[0]
        document = {"round": round, "teacher": teacher, "fingerprint": fingerprint}
        write_text_atomic(
            self.state.layout.stage_dir(round, TEACHER_REFRESH) / "teacher.json", json.dumps(document)
        )
        return {"teacher": teacher, "teacher_fingerprint": fingerprint}

    def _extraction(self, round: int) -> dict[str, Any]:
        out_dir = self.state.layout.knowledge_root(round)
        config = self.loop.extraction
        specs = stream_specs(config, round, out_dir)
        self._play(extraction_rows(specs, config.concurrent), out_dir / "streams.parquet")
        result = collect_extraction(out_dir, config, round)
        return {
            "streams": len(result.streams),
            "items": result.items,
            "pass_rate": result.pass_rate,
            "in_context_curve": result.in_context_curve,
        }

    def _in_context(self, round: int) -> dict[str, Any]:
        """The round's teacher, pi_{r-1}, on the held-out games with the round's knowledge in its prompt:
        the paper's "knowledge in context" number. It runs before consolidation, while the rollout server
        still holds pi_{r-1} (also after a resume: the launcher starts an unconsolidated round from it)."""
        if reason := self._nothing_to_consolidate(round):
            return {"skipped": reason, "model": self.state.previous_model(round)}
        result = self._evaluate(round, self._round_knowledge(round), stage=IN_CONTEXT)
        return {**result, "model": self.state.previous_model(round)}

    def _deployment(self, round: int) -> dict[str, Any]:
        """Fresh games without knowledge; the agent loop saves each episode, then one row per turn prompt.
        In the online mode the games are not played here: their rows are written, consolidation plays them."""
        if reason := self._nothing_to_consolidate(round):
            return {"skipped": reason}
        out_dir = self.state.layout.deployment_dir(round)
        if self.loop.mode == "online":
            rows = online_rows(self.loop, round, self._round_knowledge(round))
            write_parquet_atomic(rows, out_dir / "prompts.parquet")
            return {"games": len(rows), "played_by": CONSOLIDATION}
        episodes_dir = out_dir / "episodes"
        rows = deployment_rows(self.loop, round, episodes_dir)
        self._play(rows, out_dir / "games.parquet")
        episodes = [json.loads(path.read_text()) for path in sorted(episodes_dir.glob("episode_*.json"))]
        if len(episodes) != len(rows):
            raise RuntimeError(f"deployment saved {len(episodes)} of {len(rows)} episodes in {episodes_dir}")
        prompts = consolidation_rows(self.loop, round, episodes, self._round_knowledge(round))
        batch = int(self.config.data.train_batch_size)
        if len(prompts) < batch:
            raise RuntimeError(
                f"deployment saved {len(prompts)} turn prompts, fewer than data.train_batch_size={batch}: "
                "raise oel.deployment.games"
            )
        write_parquet_atomic(prompts, out_dir / "prompts.parquet")
        return {
            "games": len(episodes),
            "pass_rate": sum(e["won"] for e in episodes) / len(episodes),
            "turn_prompts": len(prompts),
        }

    def _consolidation(self, round: int) -> dict[str, Any]:
        """``consolidation_steps`` of verl's training step from pi_{r-1} with a fresh optimizer on the rows
        the deployment stage wrote (replayed turn prompts, or the online mode's games); saves pi_r as an HF
        folder (``_save_actor``). A round with nothing to consolidate saves pi_{r-1} unchanged as pi_r."""
        layout = self.state.layout
        out_dir = layout.stage_dir(round, CONSOLIDATION)
        if reason := self._nothing_to_consolidate(round):
            # No step: the actor still holds pi_{r-1}, saved as pi_r like a trained round's model.
            write_text_atomic(layout.metrics_jsonl(round), "")
            return {"hf_model": self._save_actor(out_dir), "steps": 0, "skipped": reason}
        steps = self.loop.consolidation_steps
        self._use_train_rows(layout.deployment_dir(round) / "prompts.parquet")
        self.actor_rollout_wg.reset_optimizer()
        # Steps are numbered across rounds (round r holds steps (r-1)*S+1 .. r*S), resumed or not.
        self.global_steps = (round - 1) * steps
        records = []
        for _ in range(steps):
            self.global_steps += 1
            SkipManager.set_step(self.global_steps)
            if self.loop.teacher == "moving":
                self.refresh_teacher()
            metrics: dict[str, Any] = {}
            self.timing_raw = {}
            with marked_timer("step", self.timing_raw):
                batch = self.step(metrics, self.timing_raw)
                self.on_step_end()  # the rollout server gets the new weights
                metrics.update(self._consume_sync_metrics())
            self._compute_metrics(
                batch, metrics, self.timing_raw, global_steps=self.global_steps, epoch=round - 1
            )
            tq.kv_clear(keys=batch.keys, partition_id=batch.partition_id)
            metrics["oel/round"] = round
            self.logger.log(data=metrics, step=self.global_steps)
            records.append({"step": self.global_steps, "data": {k: _plain(v) for k, v in metrics.items()}})
            emit_event("progress", round=round, stage=CONSOLIDATION, done=len(records), total=steps)
        lines = "".join(json.dumps(record, default=str) + "\n" for record in records)
        write_text_atomic(layout.metrics_jsonl(round), lines)
        hf_model = self._save_actor(out_dir)
        kl = [record["data"]["actor/oel/kl"] for record in records]
        return {"hf_model": hf_model, "steps": len(kl), "kl_first": kl[0], "kl_last": kl[-1], "kl": kl}

    def _save_actor(self, out_dir: Path) -> str:
        """The actor as an HF folder under ``out_dir`` (verl's checkpoint manager, ``save_contents:
        [hf_model]``), its config.json stating the saved dtype; returns the folder."""
        hf_model = out_dir / "actor" / "huggingface"
        self.actor_rollout_wg.save_checkpoint(
            str(out_dir / "actor"), None, self.global_steps, max_ckpt_to_keep=None
        )
        if not (hf_model / "config.json").is_file() or not list(hf_model.glob("*.safetensors")):
            raise RuntimeError(f"consolidation saved no HF model in {hf_model}")
        align_config_dtype(hf_model)
        return str(hf_model)

    def _evaluation(self, round: int) -> dict[str, Any]:
        """pi_r on the held-out games without knowledge, then the OOD games and IFBench; the round's record
        joins them with the teacher's in-context result (the ``in_context`` stage) and the extraction's and
        consolidation's numbers."""
        extraction = self.state.summary(round, EXTRACTION)
        trained = self.state.is_done(round, CONSOLIDATION)
        consolidation = self.state.summary(round, CONSOLIDATION) if trained else None
        result = self._evaluate(round, None)
        ood, ifbench = self._evaluate_ood(round), self._evaluate_ifbench(round)
        in_context = self.state.summary(round, IN_CONTEXT) if self.loop.evaluation.with_knowledge else None
        with_knowledge = None if in_context is None or "skipped" in in_context else in_context
        curve = extraction["in_context_curve"]
        record = RoundEval(
            round=round,
            num_games=self.loop.evaluation.games,
            pass_rate_no_knowledge=result["pass_rate"],
            tokens_per_turn=result["tokens_per_turn"],
            pass_rate_with_knowledge=with_knowledge["pass_rate"] if with_knowledge else None,
            tokens_per_turn_with_knowledge=with_knowledge["tokens_per_turn"] if with_knowledge else None,
            turns_per_game=result["turns_per_game"],
            response_tokens_per_game=result["response_tokens_per_game"],
            # A run resumed from before these were measured has an in_context summary without them.
            turns_per_game_with_knowledge=with_knowledge.get("turns_per_game") if with_knowledge else None,
            response_tokens_per_game_with_knowledge=(
                with_knowledge.get("response_tokens_per_game") if with_knowledge else None
            ),
            knowledge_items=sum(extraction["items"]),
            in_context_curve=tuple(InContextPoint(games=i + 1, pass_rate=p) for i, p in enumerate(curve)),
            consolidation=ConsolidationSummary(
                kl_first=consolidation["kl_first"],
                kl_last=consolidation["kl_last"],
                steps=consolidation["steps"],
            )
            if consolidation and "skipped" not in consolidation
            else None,
            consolidation_skipped=consolidation.get("skipped") if consolidation else None,
            ood=ood,
            ifbench=ifbench,
        )
        save_round_eval(self.state.layout, record)
        return result | self._ood_metrics(ood, ifbench)

    def _checkpoint(self, round: int) -> dict[str, Any]:
        return publish_checkpoint(self.state, round)


def publish_checkpoint(state: RunState, round: int) -> dict[str, Any]:
    """Copy pi_r's HF folder beside the checkpoint folder, check transformers loads it, then rename it in:
    the checkpoint folder is either absent (stage unfinished) or whole. A copy that fails (a full disk)
    leaves no copy behind, the previous rounds' checkpoints and consolidation's folder untouched, and the
    stage unfinished: the same command resumes it once there is room."""
    target = state.layout.checkpoint_dir(round)
    source = Path(state.summary(round, CONSOLIDATION)["hf_model"])
    for leftover in leftover_temporaries(target):  # a killed attempt's copy
        shutil.rmtree(leftover)
    with staged_folder(target) as staging:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        parameters, fingerprint = verify_hf_folder(staging)
        publish_folder(staging, target)  # replaces the empty folder stage_dir_for_retry made
    return {"model": str(target), "parameters": parameters, "fingerprint": fingerprint}


def verify_hf_folder(folder: Path) -> tuple[int, list[float]]:
    """Load the folder as the next round's launches will (transformers, tokenizer with its chat template);
    returns the parameter count and the weights' fingerprint. A checkpoint that does not load must never
    be published."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if not tokenizer.chat_template:
        raise RuntimeError(f"{folder}: the tokenizer has no chat template; the game prompts need one")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype="auto")
    return sum(parameter.numel() for parameter in model.parameters()), weights_fingerprint(model)


def align_config_dtype(folder: Path) -> str:
    """Make config.json state the dtype the weights are saved in; returns it.

    verl's HF save builds its model skeleton in bfloat16 (so config.json says ``bfloat16``) and then saves
    the actor's own state dict, float32 on CPU: transformers' ``dtype="auto"`` would then load a float32
    checkpoint as bfloat16, silently rounding the consolidated weights.
    """
    from safetensors import safe_open

    shard = sorted(folder.glob("*.safetensors"))[0]
    with safe_open(str(shard), framework="pt") as weights:
        dtype = str(weights.get_tensor(next(iter(weights.keys()))).dtype).removeprefix("torch.")
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = dtype
    write_text_atomic(config_path, json.dumps(config, indent=2) + "\n")
    return dtype
