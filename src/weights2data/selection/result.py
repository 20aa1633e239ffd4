"""The outcome of one selection strategy."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Selection:
    strategy: str
    indices: list[int]  # corpus rows, in pick / rank order
    scores: list[float]  # the strategy's score of each pick (greedy: cos(S, q) it would reach)
    curve: list[float] = field(default_factory=list)  # greedy only: cos(S, q) after each pick
    stats: dict = field(default_factory=dict)  # greedy only: how the argmax was found

    @property
    def peak(self) -> tuple[int, float] | None:
        """(number of picks, cos) where cos(S, q) peaked; None for non-greedy strategies."""
        if not self.curve:
            return None
        best = max(range(len(self.curve)), key=self.curve.__getitem__)
        return best + 1, self.curve[best]
