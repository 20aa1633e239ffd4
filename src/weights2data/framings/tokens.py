"""A tokenised corpus, computed once per run and reused by every pass, and the token-budget
batches cut from it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

DEFAULT_CPU_BATCH_TOKENS = 4096  # padded tokens per batch on a CPU


@dataclass
class Tokens:
    """Token ids of N documents, flat (one int32 array and offsets: a 10^7-document corpus
    as Python lists would take several times the memory), plus how many tokens of each
    document are text (not special or template tokens)."""

    flat: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (N + 1,) int64
    content: np.ndarray  # (N,) int64: text tokens kept of each document

    @classmethod
    def from_lists(cls, ids: Sequence[Sequence[int]], content: Sequence[int]) -> Tokens:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
        return cls(flat, offsets, np.asarray(content, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def ids(self, i: int) -> np.ndarray:
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def subset(self, rows: Sequence[int]) -> Tokens:
        """These documents only, in this order."""
        return Tokens.from_lists([self.ids(i) for i in rows], self.content[list(rows)])


def plan_batches(lengths: np.ndarray, batch_tokens: int, max_docs: int | None = None) -> list[np.ndarray]:
    """Rows grouped into batches, longest documents first, each holding at most
    `batch_tokens` padded tokens (rows × longest row) and at most `max_docs` rows. A
    document longer than the budget gets a batch of its own. Deterministic."""
    order = np.argsort(-lengths, kind="stable")
    out: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(lengths[order[start]]), 1)  # sorted: the first row is the longest
        n = max(1, batch_tokens // longest)
        if max_docs:
            n = min(n, max_docs)
        out.append(order[start : start + n])
        start += n
    return out


def collate(tokens: Tokens, rows: np.ndarray, pad_id: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Right-padded input_ids and attention_mask for these rows, on `device` (pinned host
    memory and a non-blocking copy when the device is a GPU)."""
    lengths = tokens.lengths[rows]
    width = int(lengths.max())
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for k, (i, n) in enumerate(zip(rows, lengths)):
        ids[k, :n] = tokens.ids(int(i))
        mask[k, :n] = 1
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
    if device.type == "cuda":
        return {k: v.pin_memory().to(device, non_blocking=True) for k, v in batch.items()}
    return {k: v.to(device) for k, v in batch.items()}


def batches(tokens: Tokens, pad_id: int, device: torch.device, batch_tokens: int,
            max_docs: int | None = None) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(row indices, padded batch) over every document, longest first."""
    for rows in plan_batches(tokens.lengths, batch_tokens, max_docs):
        yield torch.from_numpy(rows), collate(tokens, rows, pad_id, device)
