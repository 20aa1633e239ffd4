"""Typed options for every stage. Each run serialises its config into manifest.json."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

Task = Literal["classify-head", "classify-tokens", "lm"]
Projection = Literal["dense-rademacher", "dense-gaussian", "kronecker"]

STRATEGIES = (
    "select",
    "select-batched",
    "topk",
    "topk-balanced",
    "random",
    "loss-min",
    "loss-max",
    "loss-diff",
)


class UserError(Exception):
    """Bad input: the message says what to fix. The CLI prints it on one line and exits 2."""


@dataclass
class ModelConfig:
    """Where the two checkpoints come from and how to frame their task."""

    base: str
    finetuned: str
    task: Task | None = None  # None: detect from the checkpoint
    labels: list[str] | None = None  # label words, classify-tokens only
    prompt_template: str = "{text}"  # classify-tokens: the label word follows this
    gguf_file: str | None = None
    head_init: Literal["auto", "base", "zeros"] = "auto"
    # auto: bfloat16 on a GPU that supports it, float32 elsewhere
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    trust_remote_code: bool = False


@dataclass
class CorpusConfig:
    """The public seed corpus to search."""

    path: str
    text_column: str = "text"
    max_length: int = 128
    limit: int | None = None  # first N rows only (debugging)


@dataclass
class GradientConfig:
    """Which checkpoints gradients are taken at, and how they are compressed."""

    checkpoints: int = 3  # P: θ0 + j/P·Δ for j = 0..P-1
    grad_at: Literal["interpolated", "finetuned"] = "interpolated"
    # Which layers: auto, last, changed, adapter, or module names / globs (gradients/layers.py)
    layers: list[str] = field(default_factory=lambda: ["auto"])
    exact_max: int = 65_536  # keep gradients exact up to this many entries (all layers together)
    projection: Projection = "kronecker"
    projection_dim: int = 4096
    batch_tokens: int | None = None  # padded tokens per batch (None: sized to the device)
    batch_size: int | None = None  # at most this many documents per batch (None: no cap)
    seed: int = 0
    store: str | None = None  # a folder: passes go to a resumable on-disk store (store.py)
    store_dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    shard_size: int = 4096  # documents per store shard


@dataclass
class SelectionConfig:
    """How many documents to pick and with which strategies."""

    k: int
    strategies: list[str] = field(default_factory=lambda: ["select"])
    reset_every: int | None = None  # select-batched: S resets every b picks (default K/10)
    seed: int = 0
    greedy: Literal["exact", "stochastic"] = "exact"  # how each greedy step is found
    epsilon: float = 0.01  # stochastic greedy: (N/K)·ln(1/ε) rows scored per step
    # Classification: within each autolabel, drop this share of the documents θf is least sure
    # of (0: keep all). Uncertain autolabels are the likeliest to be wrong; no class is removed.
    confidence_quantile: float = 0.0


@dataclass
class SelectConfig:
    """Everything `weights2data select` needs."""

    model: ModelConfig
    corpus: CorpusConfig
    gradients: GradientConfig
    selection: SelectionConfig
    out: str | None = None
    overwrite: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
