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

A third phase adds the multi-turn ``hidden-rule-corridor`` of the warm families, whose turn prompts hold a
game log (``corridor_data.py``), so that one build serves both the one-turn demo and the corridor recipe.

The extraction skill depends on the seed (measured): seed 0 writes the held-out rule from 40/40 games;
seed 1 from 19/40 lost games (it copies another bracketed word of the record, such as its own reply's).

What did NOT form copying within ~1,000 steps (measured, issue 7): prompts over ~2,000 words;
induction pre-training on repeated random words (with a fixed repeat distance it learns a positional
shortcut that does not transfer; with varied distances it stays at chance for 800 steps).

The loss is on the reply tokens only (the reply and ``<|im_end|>``, as the loop decodes it); each step's
examples are batched by length (``train._length_buckets``). The build is cached like the tiny model's:
``build_info.json`` records a hash of every setting, the seed and ``WARM_VERSION``. The same seed on the
same CPU gives byte-identical weights (fixed seeds, a fixed number of torch threads, deterministic
algorithms, and a child interpreter whose float kernels the caller's environment cannot choose:
``train.KERNEL_VARIABLES``). Another CPU may build another model: the last float bits of its kernels
differ, and a thousand steps amplify them (README "The warm build": which CPU the tests' figures come
from, and what an earlier kernel pin cost and did not deliver). Two threads, the machine's two cores:
a build takes ~10 minutes on an AMD EPYC with nothing else running (on a machine shared with other
jobs, two threads spin against them and can run many times slower; build first, then run).
"""

from verl_oel.models.warm.data import copy_batches, copy_example, copy_words, extraction_example, game_example
from verl_oel.models.warm.probes import (
    EVAL_SAMPLING,
    GREEDY,
    extract_replies,
    generate_replies,
    play_corridor_games,
    play_games,
)
from verl_oel.models.warm.prompts import extraction_messages, game_messages
from verl_oel.models.warm.spec import GAME, WARM_VERSION, WarmModelSpec, rule_item
from verl_oel.models.warm.train import build_warm_model, train_warm_model

__all__ = [
    "EVAL_SAMPLING",
    "GAME",
    "GREEDY",
    "WARM_VERSION",
    "WarmModelSpec",
    "build_warm_model",
    "copy_batches",
    "copy_example",
    "copy_words",
    "extract_replies",
    "extraction_example",
    "extraction_messages",
    "game_example",
    "game_messages",
    "generate_replies",
    "play_corridor_games",
    "play_games",
    "rule_item",
    "train_warm_model",
]
