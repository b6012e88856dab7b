"""``oel_extract_stream``: one knowledge stream, built by the policy from its own games.

A dataset row is a stream (or several, for the sequential baseline). For each game of the
stream the policy plays WITHOUT knowledge (the paper's per-turn mode), then reads that game's
trajectory together with the stream's knowledge so far and writes new experience items, all
through verl's rollout server. Rows run concurrently in verl's agent-loop worker, so the
streams of a round share the vLLM server's batches instead of waiting for each other.

The stream is saved after every game (atomically), so a killed run loses at most the game in
flight; the knowledge used for training is the snapshot at the cut point (the paper
accumulates N games and trains on the knowledge after N/2).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from verl.experimental.agent_loop.agent_loop import AgentLoopOutput, register

from verl_oel.atomic_io import write_text_atomic
from verl_oel.data.episode_spec import EpisodeSpec
from verl_oel.envs import make_game
from verl_oel.knowledge import (
    DEFAULT_MARKER,
    GameRecord,
    GameTurn,
    KnowledgeCounts,
    KnowledgeStream,
    build_extraction_messages,
    game_record_line,
    save_stream,
)
from verl_oel.seeds import extraction_request_seed

from .game_loop import EpisodeRecord, GameAgentLoop, _call_game, merge_rollout_fields

AGENT_NAME = "oel_extract_stream"


KNOWLEDGE_SOURCES = ("items", "trajectories")


@dataclass(frozen=True)
class StreamSpec:
    """One stream to build. ``games`` are played in order; ``in_context_games`` (may be empty)
    are played WITH the knowledge so far after each game, for the in-context curve."""

    round: int
    stream: int
    games: list[EpisodeSpec]
    out_dir: str
    budget_tokens: int = 8192
    cut_after: int | None = None
    show_previous_knowledge: bool = True
    marker: str = DEFAULT_MARKER
    max_item_tokens: int = 256
    in_context_games: list[EpisodeSpec] = field(default_factory=list)
    sampling_seed: int = 0
    # "items": the model's extracted items (OEL); "trajectories": each game's raw record as the item
    # (an ablation; the model's reply is still generated and logged, not kept).
    knowledge_source: str = "items"

    def __post_init__(self) -> None:
        if self.knowledge_source not in KNOWLEDGE_SOURCES:
            raise ValueError(
                f"knowledge_source={self.knowledge_source!r}; expected one of {list(KNOWLEDGE_SOURCES)}"
            )

    def to_json(self) -> str:
        data = asdict(self)
        data["games"] = [json.loads(g.to_json()) for g in self.games]
        data["in_context_games"] = [json.loads(g.to_json()) for g in self.in_context_games]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> StreamSpec:
        data = json.loads(text)
        data["games"] = [EpisodeSpec(**g) for g in data["games"]]
        data["in_context_games"] = [EpisodeSpec(**g) for g in data.get("in_context_games", [])]
        return cls(**data)


def game_record(instruction: str, record: EpisodeRecord) -> GameRecord:
    turns = [
        GameTurn(observation=o, reply=r) for o, r in zip(record.observations, record.replies, strict=False)
    ]
    return GameRecord(instructions=instruction, turns=turns, won=record.won, reason=record.reason)


@register(AGENT_NAME)
class KnowledgeExtractionLoop(GameAgentLoop):
    """Builds the streams in ``extra_info["oel_streams"]`` one after another (usually one)."""

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        specs = [StreamSpec.from_json(text) for text in json.loads(kwargs["extra_info"]["oel_streams"])]
        start = time.perf_counter()
        summaries, last, rollout_fields = [], None, {}
        for spec in specs:
            summary, last = await self._build_stream(spec, sampling_params, rollout_fields)
            summaries.append(summary)
        prompt_ids, output = last
        response_ids = list(output.token_ids)[: self.response_length]
        passes = [p for s in summaries for p in s["passes"]]
        return AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids,
            response_mask=[1] * len(response_ids),
            num_turns=2,
            metrics={},
            extra_fields={
                **rollout_fields,
                "oel_stream_pass_rate": sum(passes) / len(passes) if passes else 0.0,
                "oel_extract_wall_s": time.perf_counter() - start,
                "oel_streams_summary": json.dumps(summaries),
            },
        )

    def _count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    async def _play(
        self, episode: EpisodeSpec, sampling_params: dict[str, Any], rollout_fields: dict[str, Any]
    ) -> tuple[str, EpisodeRecord]:
        game = await _call_game(lambda: make_game(episode.game, **episode.settings))
        try:
            first = await _call_game(game.reset, episode.seed)
            record, _, _ = await self.play_per_turn(game, episode, sampling_params, first)
            merge_rollout_fields(rollout_fields, record.rollout_fields)
            return game.instruction, record
        finally:
            await _call_game(game.close)

    async def _build_stream(self, spec: StreamSpec, sampling_params: dict[str, Any], rollout_fields: dict):
        stream = KnowledgeStream(
            round=spec.round,
            index=spec.stream,
            budget_tokens=spec.budget_tokens,
            marker=spec.marker,
            count_tokens=self._count_tokens,
        )
        out = Path(spec.out_dir)
        started = time.time()
        log: list[dict[str, Any]] = []
        passes: list[bool] = []
        in_context: list[bool] = []
        last = None
        for index, episode in enumerate(spec.games):
            seeded = {
                **sampling_params,
                "seed": extraction_request_seed(spec.sampling_seed, spec.stream, index),
            }
            instruction, record = await self._play(episode, seeded, rollout_fields)
            passes.append(record.won)
            messages = build_extraction_messages(
                game_record(instruction, record),
                stream.render(),
                show_knowledge=spec.show_previous_knowledge,
                marker=spec.marker,
            )
            prompt_ids = await self.ct_build_initial_tokens(messages)
            output = await self._generate(
                prompt_ids, seeded, min(spec.max_item_tokens, self.response_length), rollout_fields
            )
            reply = self.tokenizer.decode(output.token_ids, skip_special_tokens=True)
            kept = reply
            if spec.knowledge_source == "trajectories":
                kept = f"{spec.marker} {game_record_line(game_record(instruction, record))}"
            counts = stream.add_reply(kept, seed=episode.seed, won=record.won, game=episode.game)
            last = (prompt_ids, output)
            if spec.in_context_games:
                probe = spec.in_context_games[index % len(spec.in_context_games)]
                _, probe_record = await self._play(
                    EpisodeSpec(**{**asdict(probe), "knowledge": stream.render()}), seeded, rollout_fields
                )
                in_context.append(probe_record.won)
            log.append(
                {
                    "game": episode.game,
                    "seed": episode.seed,
                    "won": record.won,
                    "reason": record.reason,
                    "turns": record.turns,
                    "reply": reply,
                    "counts": asdict(counts),
                    "items": len(stream.items),
                    "in_context_won": in_context[-1] if spec.in_context_games else None,
                }
            )
            # Saved after every game: a kill loses at most the game in flight.
            save_stream(stream, out / "accumulated")
            write_text_atomic(
                out / "accumulated" / f"round_{spec.round:03d}" / f"stream_{spec.stream:02d}.log.jsonl",
                "".join(json.dumps(entry) + "\n" for entry in log),
            )
            if spec.cut_after is not None and index + 1 == spec.cut_after:
                save_stream(stream, out)
        if spec.cut_after is None or spec.cut_after > len(spec.games):
            save_stream(stream, out)
        # Wall-clock span of this stream, so a benchmark can compare concurrent and sequential.
        write_text_atomic(
            out / "accumulated" / f"round_{spec.round:03d}" / f"stream_{spec.stream:02d}.timing.json",
            json.dumps({"start": started, "end": time.time()}),
        )
        summary = {
            "round": spec.round,
            "stream": spec.stream,
            "games": len(spec.games),
            "passes": passes,
            "in_context_passes": in_context,
            "items": len(stream.items),
            "tokens": stream.tokens(),
            **{f"counts_{k}": v for k, v in asdict(stream.counts or KnowledgeCounts()).items()},
        }
        return summary, last
