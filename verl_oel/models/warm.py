"""The warmed tiny model (``verl-oel build-model warm``): a model that can USE and WRITE knowledge.

No real model plays the paper's games offline, so OEL's learning is proven on CPU with the hidden-rule
doors (``verl_oel.envs.hidden_rule``) and a tiny Qwen3 given two skills by a short, deterministic
supervised phase on the WARM families only:

(a) acting: on exactly the per-turn prompt the game agent loop builds (the game's instruction as the
    system message, the turn prompt as the user message, knowledge placed by ``with_knowledge``), it
    answers `` [sign]`` (with the space the door lines put before each sign). With an item stating the
    family's rule in its knowledge (alone, repeated, or among unrelated items) the sign is the rule's;
    WITHOUT knowledge it is trained on the first door listed: the game shuffles its doors, so it plays
    at chance until it learns the rule (a uniformly random door, the first target tried, did not form:
    the tiny model then mostly named a sign of no door, below chance);
(b) extracting: on exactly the extraction prompt (``build_extraction_messages`` of the game record the
    extraction loop builds, with the stream's knowledge so far, possibly empty) it writes one item
    naming the rule the trajectory's outcome shows: ``- EXPERIENCE ITEM: [sign] doors lead out.``

Both skills are copies (of the sign in the knowledge, of the sign in the outcome line), so they carry
over to HELD-OUT families, whose games the model never saw (their signs are words of the synthetic
copy tasks like any other, never preferred without knowledge). The OEL loop must then move the rule
of a held-out family from the knowledge into the weights.

Trained on the full prompts alone, the tiny model only learns the marginal over the warm signs and
never forms a copying circuit. So a first phase trains on SHORT synthetic prompts made of the lines
the real prompts hold around a sign (door lines, knowledge items, the record's reply and result line),
over a small pool of one-token words (every game sign, held-out ones included, and a few dozen
others; see ``copy_words``): answer the knowledge item's sign, any door's sign, or the plaque's sign
as an item. The second phase trains on the pipeline's prompts of the warm families, mixed with a few
synthetic examples.

The extraction skill depends on the seed (measured): seed 0 writes the held-out rule from 40/40 games;
seed 1 from 19/40 lost games (it copies another bracketed word of the record, such as its own reply's).

What did NOT form copying within ~1,000 steps (measured, issue 7): prompts over ~2,000 words;
induction pre-training on repeated random words (with a fixed repeat distance it learns a positional
shortcut that does not transfer; with varied distances it stays at chance for 800 steps).

The loss is on the reply tokens only (the reply and ``<|im_end|>``, as the loop decodes it). The
build is cached like the tiny model's: ``build_info.json`` records a hash of every setting, the seed
and ``WARM_VERSION``; the same seed gives byte-identical weights (fixed seeds, a fixed number of torch
threads, deterministic algorithms). Two threads, the machine's two cores: a build is ~10 minutes with
nothing else running (on a machine shared with other jobs, two threads spin against them and can run
many times slower; build first, then run).
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import transformers

from verl_oel.console import StepProgress
from verl_oel.envs import make_game
from verl_oel.envs.hidden_rule import (
    COLOURS,
    DEAD_END_REASON,
    HELD_OUT_FAMILIES,
    SIGNS,
    WARM_FAMILIES,
    WIN_REASON,
    HiddenRuleGame,
    rule_text,
)
from verl_oel.knowledge import DEFAULT_MARKER, GameRecord, GameTurn, build_extraction_messages, render_items
from verl_oel.knowledge.injection import with_knowledge
from verl_oel.models.build_folder import (
    BuildModelError,
    TinyModelSpec,
    build_folder,
    library_versions,
    tiny_config,
)
from verl_oel.models.tokenizer import build_qwen_prefix_tokenizer, qwen_vocab_sha256

# Bump when the warm-up's data or training changes for the same settings, so cached builds are redone.
WARM_VERSION = 4
GAME = "hidden-rule"
BUILD_THREADS = 2

# Knowledge items: the rule as the extractor writes it, other phrasings of it, and unrelated items.
RULE_PHRASINGS = (
    "[{sign}] doors lead out.",
    "[{sign}] doors lead out",
    "[{sign}] doors lead",
    "[{sign}] doors",
    "Open the door marked [{sign}].",
    "Only [{sign}] doors lead out; the others are dead ends.",
    "The plaque says [{sign}] doors lead out.",
)
OTHER_ITEMS = (
    "Read every door before you choose.",
    "Reply with one bracketed word only.",
    "A dead end ends the game at once.",
    "The colour of a door does not matter.",
    "Each room has exactly one exit.",
    "Think briefly, then act.",
    "Do not repeat a door that failed.",
    "Signs are written in square brackets.",
)


def rule_item(sign: str) -> str:
    """The item the warmed extractor writes for a family (without the marker)."""
    return RULE_PHRASINGS[0].format(sign=sign)


@dataclasses.dataclass(frozen=True)
class WarmModelSpec:
    """The warm model's shape (the tiny model's by default) and its two supervised phases.

    Phase 1 (``copy_steps``) trains on SHORT synthetic prompts built from the same lines the real
    prompts hold around a sign (door lines, knowledge items, the record's reply and result line), over
    ``copy_words``: cheap steps in which the copying circuit forms. Phase 2
    (``steps``) trains on exactly the pipeline's prompts of the WARM families, still mixed with some
    synthetic examples (``copy_batch_late``); in ``relabel_share`` of its examples every sign is renamed
    to a random word, so that copying, not remembering the 26 warm signs, is what lowers the loss.
    """

    model: TinyModelSpec = TinyModelSpec()
    extra_copy_words: int = 34
    copy_steps: int = 1000
    copy_batch: int = 36
    copy_lr: float = 5e-3
    steps: int = 150
    game_batch: int = 8
    extraction_batch: int = 4
    copy_batch_late: int = 12
    lr: float = 1e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    # Share of game examples WITH the rule in the knowledge (the rest: no knowledge, the first door).
    knowledge_share: float = 0.7
    # Share of pipeline-prompt examples whose signs are renamed to random words (forces copying).
    relabel_share: float = 0.8
    door_counts: tuple[int, ...] = (3, 4, 4, 5)
    families: tuple[str, ...] = WARM_FAMILIES


# ---------------------------------------------------------------------------------------------------
# Prompts, exactly as the pipeline builds them


def game_messages(game: HiddenRuleGame, knowledge: str) -> list[dict[str, str]]:
    """The per-turn prompt of ``verl_oel.agent_loop.game_loop.opening_messages`` (copied here: that
    module imports verl): instruction as system, turn prompt as user, knowledge by ``with_knowledge``."""
    messages = [
        {"role": "system", "content": game.instruction},
        {"role": "user", "content": game.turn_prompt()},
    ]
    return with_knowledge(messages, knowledge)


def extraction_messages(
    instruction: str,
    observations: Sequence[str],
    replies: Sequence[str],
    won: bool,
    reason: str,
    knowledge: str,
) -> list[dict[str, str]]:
    """The extraction prompt as ``verl_oel.agent_loop.extraction_loop`` builds it: the record pairs each
    observation the game showed before a reply (the first observation, then each answer) with that reply."""
    turns = [GameTurn(observation=o, reply=r) for o, r in zip(observations, replies, strict=False)]
    record = GameRecord(instructions=instruction, turns=turns, won=won, reason=reason)
    return build_extraction_messages(record, knowledge)


def _prompt_ids(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    return list(ids["input_ids"] if isinstance(ids, dict | transformers.BatchEncoding) else ids)


def _reply_ids(tokenizer: Any, reply: str) -> list[int]:
    return tokenizer.encode(reply, add_special_tokens=False) + [tokenizer.eos_token_id]


# ---------------------------------------------------------------------------------------------------
# Training data


def _random_knowledge(rng: random.Random, sign: str | None) -> str:
    """Rendered knowledge: the rule of ``sign`` (1-2 phrasings), mixed with 0-3 unrelated items."""
    items = []
    if sign is not None:
        # The extractor's own phrasing most often: it is what the OEL loop puts in the knowledge.
        phrasings = [RULE_PHRASINGS[0]] * 4 + list(RULE_PHRASINGS[1:])
        items += [rng.choice(phrasings).format(sign=sign) for _ in range(rng.choice((1, 1, 1, 2)))]
    items += rng.sample(OTHER_ITEMS, rng.choice((0, 0, 1, 2, 3)))
    rng.shuffle(items)
    return render_items(items)


def _new_game(rng: random.Random, spec: WarmModelSpec, family: str) -> tuple[HiddenRuleGame, str]:
    game = make_game(GAME, family=family, num_doors=rng.choice(spec.door_counts))
    return game, game.reset(rng.randrange(2**31))


def game_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """One turn prompt and its target reply: the rule's sign with knowledge, the first door listed
    without."""
    game, _ = _new_game(rng, spec, rng.choice(spec.families))
    if rng.random() < spec.knowledge_share:
        knowledge, reply = _random_knowledge(rng, game.exit_sign), f" [{game.exit_sign}]"
    else:
        knowledge = _random_knowledge(rng, None) if rng.random() < 0.1 else ""
        # The first door listed: the game shuffles its doors, so this player wins at chance.
        reply = f" [{game.doors[0][1]}]"
    messages = game_messages(game, knowledge)
    game.close()
    if words and rng.random() < spec.relabel_share:
        messages, reply = relabel(rng, words, (messages, reply), SIGNS)
    return _prompt_ids(tokenizer, messages), _reply_ids(tokenizer, reply)


def _played_reply(rng: random.Random, game: HiddenRuleGame) -> str:
    """A reply as an unwarmed or warmed player may give it: mostly a door, sometimes not."""
    roll = rng.random()
    if roll < 0.8:
        return f" [{rng.choice(game.doors)[1]}]"
    if roll < 0.9:
        return f"[{rng.choice(WARM_FAMILIES + HELD_OUT_FAMILIES)}]"
    return rng.choice(("", "I open a door.", "[", "door", "[red]", "]"))


def extraction_example(
    rng: random.Random, spec: WarmModelSpec, tokenizer: Any, words: Sequence[str] = ()
) -> tuple[list[int], list[int]]:
    """One extraction prompt (a played game, the stream's knowledge so far) and the rule's item."""
    game, first = _new_game(rng, spec, rng.choice(spec.families))
    observations, replies = [first], []
    while game.outcome is None:
        reply = _played_reply(rng, game)
        result = game.step(reply)
        observations.append(result.observation)
        replies.append(reply)
    roll = rng.random()
    if roll < 0.5:
        knowledge = ""
    elif roll < 0.8:
        knowledge = _random_knowledge(rng, game.exit_sign)
    else:
        knowledge = _random_knowledge(rng, None)
    messages = extraction_messages(
        game.instruction, observations, replies, game.outcome.won, game.outcome.reason, knowledge
    )
    target = f"{DEFAULT_MARKER} {rule_item(game.exit_sign)}"
    game.close()
    if words and rng.random() < spec.relabel_share:
        messages, target = relabel(rng, words, (messages, target), SIGNS)
    return _prompt_ids(tokenizer, messages), _reply_ids(tokenizer, target)


def copy_words(tokenizer: Any, extra_words: int) -> tuple[str, ...]:
    """The synthetic phase's signs: every game sign and ``extra_words`` other words that are one token
    inside brackets (a fixed sample).

    A small pool is what lets copying form in minutes: over ~2,000 words a word is seen too rarely, and
    ~1,000 steps left the copy loss at chance. The held-out signs are in the pool like any other word,
    as often a sign to copy as a distractor (kept out, they would only ever be distractors and the model
    would learn never to copy them); only the held-out families' GAMES never appear in the warm-up.
    """
    open_ids = tokenizer.encode("[", add_special_tokens=False)
    close_ids = tokenizer.encode("]", add_special_tokens=False)
    words = set()
    for token, index in tokenizer.get_vocab().items():
        if not (token.isascii() and token.isalpha() and token.islower() and 3 <= len(token) <= 7):
            continue
        if tokenizer.encode(f"[{token}]", add_special_tokens=False) != open_ids + [index] + close_ids:
            continue
        if tokenizer.encode(f" [{token}]", add_special_tokens=False)[1:2] != [index]:
            continue
        words.add(token)
    others = sorted(words - set(COLOURS) - set(SIGNS))
    return tuple(SIGNS) + tuple(random.Random("warm/copy-words").sample(others, extra_words))


def _synthetic_room(rng: random.Random, words: Sequence[str], answer: str) -> tuple[list[str], str]:
    """A room's signs (``answer`` among them; others may be any sign, held-out ones included) and text."""
    count = rng.randint(2, 5)
    pool = [w for w in rng.sample(words, count + 2) if w != answer]
    others = pool[: count - 1]
    signs = [answer, *others]
    rng.shuffle(signs)
    lines = "\n".join(f"- a {rng.choice(COLOURS)} door marked [{sign}]" for sign in signs)
    head = rng.choice((f"You are in a room with {count} doors:\n", "", ""))
    return signs, head + lines


COPY_KINDS = ("knowledge", "door", "plaque")


def copy_example(
    rng: random.Random, words: Sequence[str], tokenizer: Any, kind: str
) -> tuple[list[int], list[int]]:
    """A short synthetic prompt whose answer copies a sign: the knowledge's rule (``knowledge``), any
    door of the room (``door``), or the plaque's sign into an item (``plaque``)."""
    answer = rng.choice(words)
    signs, room = _synthetic_room(rng, words, answer)
    if kind == "knowledge":
        phrasings = [RULE_PHRASINGS[0]] * 4 + list(RULE_PHRASINGS[1:])
        items = [rng.choice(phrasings).format(sign=answer) for _ in range(rng.choice((1, 1, 1, 2)))]
        items += rng.sample(OTHER_ITEMS, rng.choice((0, 0, 1, 2)))
        rng.shuffle(items)
        head = rng.choice(("Experiential knowledge from earlier games:\n", ""))
        prompt, reply = f"{head}{render_items(items)}\n\n{room}", f" [{answer}]"
    elif kind == "door":
        prompt, reply = room, f" [{rng.choice(signs)}]"
    else:
        played = rng.choice(signs)
        won = played == answer
        reason = f"{WIN_REASON if won else DEAD_END_REASON}; the plaque says {rule_text(answer)}"
        result = f"You {'won' if won else 'lost'}. The game's reason: {reason}"
        roll = rng.random()
        if roll < 0.5:
            knowledge = "(nothing recorded yet)"
        else:
            items = rng.sample(OTHER_ITEMS, rng.choice((0, 1, 2)))
            if roll < 0.8:
                items.append(rule_item(answer))
            rng.shuffle(items)
            knowledge = render_items(items) or "(nothing recorded yet)"
        prompt = (
            f"{room}\n\nYou replied:\n[{played}]\n\n### Result\n\n{result}\n\n"
            f"## Experience so far\n\n{knowledge}"
        )
        reply = f"{DEFAULT_MARKER} {rule_item(answer)}"
    messages = [{"role": "user", "content": prompt}]
    return _prompt_ids(tokenizer, messages), _reply_ids(tokenizer, reply)


def relabel(
    rng: random.Random, words: Sequence[str], example: tuple[list[dict[str, str]], str], signs: Sequence[str]
) -> tuple[list[dict[str, str]], str]:
    """The same prompt and reply with each of ``signs`` (in brackets) renamed to a random word."""
    messages, reply = example
    mapping = dict(zip(signs, rng.sample(words, len(signs)), strict=True))

    def rename(text: str) -> str:
        return re.sub(r"\[(\w+)\]", lambda m: f"[{mapping.get(m.group(1), m.group(1))}]", text)

    return [{**m, "content": rename(m["content"])} for m in messages], rename(reply)


def copy_batches(
    rng: random.Random, words: Sequence[str], tokenizer: Any, size: int
) -> list[list[tuple[list[int], list[int]]]]:
    """``size`` synthetic examples in one group per kind (short groups pad little), a third each."""
    return [
        [copy_example(rng, words, tokenizer, kind) for _ in range(size // len(COPY_KINDS))]
        for kind in COPY_KINDS
    ]


def _collate(examples: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded ids, attention mask, and the positions whose next token is a reply token."""
    width = max(len(p) + len(r) for p, r in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    rows, cols, targets = [], [], []
    for row, (prompt, reply) in enumerate(examples):
        seq = prompt + reply
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
        for offset, token in enumerate(reply):
            rows.append(row)
            cols.append(len(prompt) + offset - 1)
            targets.append(token)
    return {
        "input_ids": ids,
        "attention_mask": mask,
        "rows": torch.tensor(rows),
        "cols": torch.tensor(cols),
        "targets": torch.tensor(targets),
    }


def _reply_loss(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over the reply tokens, projecting only those positions to the vocabulary."""
    # Right padding under a causal mask: no real token attends to a pad, so no padding mask is needed
    # (a padding mask sends attention down a much slower path on CPU).
    hidden = model.model(input_ids=batch["input_ids"]).last_hidden_state
    logits = model.lm_head(hidden[batch["rows"], batch["cols"]])
    loss = torch.nn.functional.cross_entropy(logits, batch["targets"], reduction="sum")
    return loss, int(batch["targets"].numel())


# ---------------------------------------------------------------------------------------------------
# Build


@contextmanager
def _deterministic_torch(seed: int) -> Iterator[None]:
    """Fixed threads, seeds and algorithms for the build; the caller's settings come back afterwards."""
    threads = torch.get_num_threads()
    deterministic = torch.are_deterministic_algorithms_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.set_num_threads(BUILD_THREADS)
        torch.use_deterministic_algorithms(True)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(deterministic)
            torch.set_num_threads(threads)


def _new_model(spec: TinyModelSpec, tokenizer: Any) -> transformers.Qwen3ForCausalLM:
    return transformers.Qwen3ForCausalLM(tiny_config(spec, tokenizer))


def _run_phase(
    name: str,
    model: Any,
    steps: int,
    lr: float,
    warmup_steps: int,
    spec: WarmModelSpec,
    draw: Any,
    pad_id: int,
    log_every: int,
) -> None:
    """AdamW with warm-up and cosine decay over ``steps``; ``draw()`` gives a step's example groups."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=spec.weight_decay
    )

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, steps - warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    running, note = [], ""
    # A bar on a terminal, else four lines (25/50/75/100%): the build is short on the demo's console.
    progress = StepProgress(f"warm-up {name}", steps) if log_every else None
    for step in range(steps):
        total, count, parts = torch.zeros(()), 0, []
        for examples in draw():
            if examples:
                loss, n = _reply_loss(model, _collate(examples, pad_id))
                total, count = total + loss, count + n
                parts.append(loss.item() / n)
        loss = total / count
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        optimizer.step()
        scheduler.step()
        running.append(parts)
        if log_every and ((step + 1) % log_every == 0 or step + 1 == steps):
            means = [sum(values) / len(values) for values in zip(*running, strict=True)]
            note = f"reply loss per token {' / '.join(f'{m:.3f}' for m in means)}"
            running = []
        if progress is not None:
            progress.update(step + 1, note)
    if progress is not None:
        progress.close()


def train_warm_model(spec: WarmModelSpec, seed: int, log_every: int = 50) -> tuple[Any, Any]:
    """Runs the supervised phases in memory; returns (model, tokenizer). Deterministic per seed."""
    tokenizer = build_qwen_prefix_tokenizer(spec.model.vocab_size, spec.model.max_position_embeddings)
    words = copy_words(tokenizer, spec.extra_copy_words)
    # Renamed games never turn into a held-out family's game: no held-out sign replaces a warm one.
    game_words = [word for word in words if word not in HELD_OUT_FAMILIES]
    rng = random.Random(f"warm/{seed}")
    pad_id = tokenizer.pad_token_id
    with _deterministic_torch(seed):
        model = _new_model(spec.model, tokenizer)
        model.train()
        # Phase 1: short synthetic copies (knowledge / door / plaque).
        _run_phase(
            "copy",
            model,
            spec.copy_steps,
            spec.copy_lr,
            spec.warmup_steps,
            spec,
            lambda: copy_batches(rng, words, tokenizer, spec.copy_batch),
            pad_id,
            log_every,
        )
        # Phase 2: the pipeline's prompts (games / extraction / knowledge / door / plaque).
        _run_phase(
            "prompts",
            model,
            spec.steps,
            spec.lr,
            spec.warmup_steps,
            spec,
            lambda: [
                [game_example(rng, spec, tokenizer, game_words) for _ in range(spec.game_batch)],
                [extraction_example(rng, spec, tokenizer, game_words) for _ in range(spec.extraction_batch)],
                *copy_batches(rng, words, tokenizer, spec.copy_batch_late),
            ],
            pad_id,
            log_every,
        )
        model.eval()
    return model, tokenizer


def build_warm_model(
    out_dir: str | Path, seed: int = 0, spec: WarmModelSpec | None = None, force: bool = False
) -> Path:
    """Builds (or finds already built) the warmed tiny model in ``out_dir``; returns its path."""
    spec = spec or WarmModelSpec()
    try:
        vocab_sha256 = qwen_vocab_sha256()
    except FileNotFoundError as err:
        raise BuildModelError(str(err)) from err
    settings = {
        "kind": "warm",
        "warm_version": WARM_VERSION,
        "seed": seed,
        "spec": dataclasses.asdict(spec),
        "game": GAME,
        "held_out_families": list(HELD_OUT_FAMILIES),
        "build_threads": BUILD_THREADS,
        "qwen_vocab_sha256": vocab_sha256,
        "versions": library_versions(),
    }

    def write(folder: Path) -> None:
        model, tokenizer = train_warm_model(spec, seed)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)

    return build_folder(Path(os.path.abspath(out_dir)), settings, write, force)


# ---------------------------------------------------------------------------------------------------
# Measuring the skills (tests, reports)

EVAL_SAMPLING = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
GREEDY = {"do_sample": False}


def generate_replies(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[list[dict[str, str]]],
    sampling: dict[str, Any],
    max_new_tokens: int,
    seed: int = 0,
    batch_size: int = 32,
) -> list[str]:
    """Replies to chat prompts with transformers' generate (left-padded batches), decoded as the loop does."""
    replies: list[str] = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for first in range(0, len(prompts), batch_size):
            chunk = [_prompt_ids(tokenizer, messages) for messages in prompts[first : first + batch_size]]
            width = max(len(ids) for ids in chunk)
            ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(c)) + c for c in chunk])
            mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in chunk])
            output = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                **sampling,
            )
            replies += tokenizer.batch_decode(output[:, width:], skip_special_tokens=True)
    return replies


def play_games(
    model: Any,
    tokenizer: Any,
    family: str,
    seeds: Sequence[int],
    knowledge: str = "",
    sampling: dict[str, Any] | None = None,
    num_doors: int = 4,
    max_new_tokens: int = 16,
) -> list[dict[str, Any]]:
    """One-turn hidden-rule games played by the model; each result holds what extraction needs."""
    games = []
    for seed in seeds:
        game = make_game(GAME, family=family, num_doors=num_doors)
        games.append((game, game.reset(seed)))
    prompts = [game_messages(game, knowledge) for game, _ in games]
    replies = generate_replies(model, tokenizer, prompts, sampling or EVAL_SAMPLING, max_new_tokens)
    results = []
    for (game, first), reply in zip(games, replies, strict=True):
        result = game.step(reply)
        results.append(
            {
                "instruction": game.instruction,
                "observations": [first, result.observation],
                "replies": [reply],
                "won": result.outcome.won,
                "reason": result.outcome.reason,
                "invalid": result.invalid,
            }
        )
        game.close()
    return results


def extract_replies(
    model: Any,
    tokenizer: Any,
    played: Sequence[dict[str, Any]],
    knowledge: str = "",
    sampling: dict[str, Any] | None = None,
    max_new_tokens: int = 24,
) -> list[str]:
    """The model's extraction replies for played games (see ``play_games``), with ``knowledge`` so far."""
    prompts = [
        extraction_messages(
            p["instruction"], p["observations"], p["replies"], p["won"], p["reason"], knowledge
        )
        for p in played
    ]
    return generate_replies(model, tokenizer, prompts, sampling or EVAL_SAMPLING, max_new_tokens)
