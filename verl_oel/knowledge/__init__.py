"""Experiential knowledge: extraction prompts, the item parser, budgeted streams, storage.

Pure Python on purpose (no torch, no verl): the same code runs in the rollout workers that
extract items, the trainer that builds teacher prompts, and offline tools that inspect a run.
"""

from verl_oel.knowledge.counts import KnowledgeCounts
from verl_oel.knowledge.extraction_prompt import (
    GameRecord,
    GameTurn,
    build_extraction_messages,
    game_record_line,
)
from verl_oel.knowledge.parsing import (
    DEFAULT_MARKER,
    ParsedItems,
    check_marker,
    normalise_item,
    parse_items,
    render_items,
)
from verl_oel.knowledge.storage import (
    FORMAT_VERSION,
    KnowledgeFormatError,
    load_store,
    load_stream,
    round_dir,
    save_store,
    save_stream,
    stream_path,
)
from verl_oel.knowledge.stream import (
    KnowledgeItem,
    KnowledgeStore,
    KnowledgeStream,
    TokenCounter,
    approx_token_count,
)

__all__ = [
    "DEFAULT_MARKER",
    "FORMAT_VERSION",
    "GameRecord",
    "GameTurn",
    "KnowledgeCounts",
    "KnowledgeFormatError",
    "KnowledgeItem",
    "KnowledgeStore",
    "KnowledgeStream",
    "ParsedItems",
    "TokenCounter",
    "approx_token_count",
    "build_extraction_messages",
    "game_record_line",
    "check_marker",
    "load_store",
    "load_stream",
    "normalise_item",
    "parse_items",
    "render_items",
    "round_dir",
    "save_store",
    "save_stream",
    "stream_path",
]
