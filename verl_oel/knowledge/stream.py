"""Knowledge streams under a token budget, and the per-round store that holds them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from verl_oel.knowledge.counts import KnowledgeCounts
from verl_oel.knowledge.parsing import DEFAULT_MARKER, check_marker, parse_items, render_items

TokenCounter = Callable[[str], int]


def approx_token_count(text: str) -> int:
    """About one token per four characters, rounded up.

    For tests and tokenizer-free tools only: BPE tokenizers average close to four characters
    per token on English prose but fewer on code or other scripts, so real runs must pass
    the model tokenizer's length, e.g. ``lambda s: len(tokenizer.encode(s))``.
    """
    return (len(text) + 3) // 4


@dataclass(frozen=True)
class KnowledgeItem:
    """One experience item and where it came from, so a report can trace any rule back to
    the game (and its outcome) that taught it."""

    text: str
    round: int
    stream: int
    seed: int
    won: bool
    game: str | None = None


@dataclass
class KnowledgeStream:
    """One independently sampled sequence of items, oldest first, kept within a token budget.

    The budget applies to :meth:`render`, the exact text the teacher's prompt embeds, measured
    with ``count_tokens`` (the model tokenizer's length in real runs): token counts do not add
    up across a join, so only the rendered whole is a safe measure. When the budget is
    exceeded the oldest items go first, as the method prescribes; items are never cut.
    """

    round: int
    index: int
    budget_tokens: int
    marker: str = DEFAULT_MARKER
    count_tokens: TokenCounter = field(default=approx_token_count, compare=False, repr=False)
    items: list[KnowledgeItem] = field(default_factory=list)
    counts: KnowledgeCounts = field(default_factory=KnowledgeCounts)
    """Running totals over every reply this stream has absorbed."""

    def __post_init__(self) -> None:
        if self.budget_tokens <= 0:
            raise ValueError(f"knowledge budget_tokens must be positive, got {self.budget_tokens}")
        check_marker(self.marker)

    def texts(self) -> list[str]:
        return [item.text for item in self.items]

    def render(self) -> str:
        """The knowledge text for the teacher's (and the extractor's) prompt."""
        return render_items(self.texts(), self.marker)

    def tokens(self) -> int:
        return self.count_tokens(self.render())

    def add_reply(self, reply: str, *, seed: int, won: bool, game: str | None = None) -> KnowledgeCounts:
        """Append the new items of one extraction reply, then evict the oldest to fit.

        Returns this reply's counts (also added to :attr:`counts`). An item that alone renders
        over the budget is dropped as ``dropped_over_budget``: keeping it would evict
        everything else and still not fit.
        """
        parsed = parse_items(reply, marker=self.marker, existing=self.texts())
        over_budget = 0
        for text in parsed.items:
            if self.count_tokens(render_items([text], self.marker)) > self.budget_tokens:
                over_budget += 1
                continue
            self.items.append(KnowledgeItem(text, self.round, self.index, seed, won, game))
        evicted = 0
        while self.tokens() > self.budget_tokens:
            self.items.pop(0)
            evicted += 1
        counts = replace(
            parsed.counts,
            items_kept=parsed.counts.items_kept - over_budget,
            dropped_over_budget=over_budget,
            evicted_oldest=evicted,
        )
        self.counts += counts
        return counts


@dataclass
class KnowledgeStore:
    """All knowledge streams of one round; the teacher samples one stream per example."""

    round: int
    streams: list[KnowledgeStream]

    def __post_init__(self) -> None:
        for position, stream in enumerate(self.streams):
            if (stream.round, stream.index) != (self.round, position):
                raise ValueError(
                    f"stream at position {position} is (round {stream.round}, index {stream.index}); "
                    f"expected (round {self.round}, index {position})"
                )

    @classmethod
    def create(
        cls,
        round: int,
        num_streams: int,
        budget_tokens: int,
        *,
        marker: str = DEFAULT_MARKER,
        count_tokens: TokenCounter = approx_token_count,
    ) -> KnowledgeStore:
        """Empty streams sharing one budget, marker and token counter."""
        if num_streams <= 0:
            raise ValueError(f"knowledge num_streams must be positive, got {num_streams}")
        streams = [
            KnowledgeStream(round, index, budget_tokens, marker=marker, count_tokens=count_tokens)
            for index in range(num_streams)
        ]
        return cls(round, streams)

    def counts(self) -> KnowledgeCounts:
        return sum((stream.counts for stream in self.streams), KnowledgeCounts())

    def metrics(self, prefix: str = "knowledge") -> dict[str, float]:
        """Flat metrics for the logger: summed counts plus the per-stream mean and max of
        rendered tokens and items, the numbers that show whether the budget binds."""
        tokens = [stream.tokens() for stream in self.streams]
        items = [len(stream.items) for stream in self.streams]
        return {
            **self.counts().to_metrics(prefix),
            f"{prefix}/tokens": sum(tokens) / len(tokens),
            f"{prefix}/tokens_max": float(max(tokens)),
            f"{prefix}/items": sum(items) / len(items),
        }
