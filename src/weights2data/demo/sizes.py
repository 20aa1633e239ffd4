"""The demo's sizes: one code path, several presets (smoke < quick < default < full)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

CLASSIFY_STRATEGIES = ["select", "topk", "topk-balanced", "random", "loss-diff"]
LM_STRATEGIES = ["select", "random", "loss-min", "loss-diff"]



def select_variants(checkpoints: int, classify: bool = True) -> dict[str, dict]:
    """The SELECT variants of the --full grid, beside a main run at P = `checkpoints`:
    name -> options passed to `select` on top of the main run's. Head init and the
    confidence filter only exist for classification."""
    names = {1: "select P=1 (θ0 only)", 3: "select P=3", 5: "select P=5"}
    out = {name: {"checkpoints": p} for p, name in names.items() if p != checkpoints}
    out["select grad at θf"] = {"grad_at": "finetuned"}
    if not classify:
        return out
    out["select head init zeros"] = {"head_init": "zeros"}
    out["select θf-confident (p ≥ 0.9)"] = {"min_confidence": 0.9}
    return out


@dataclass
class Sizes:
    """Everything that sets the demo's cost. Each field is recorded in results.json."""

    seed_docs: dict[str, int]  # per source of the seed corpus
    ks: list[int]
    seeds: int  # training seeds per (strategy, K)
    max_length: int = 64
    checkpoints: int = 3  # select's default: P synthetic checkpoints
    epochs: float = 5.0  # retraining: fixed steps = ceil(epochs * K / batch), same for every strategy
    lr: float = 1e-4
    batch_size: int = 16
    expert_epochs: float = 2.0
    expert_lr: float = 1e-4
    test_fraction: float = 0.2
    train_docs: int | None = None  # cap on the hidden training set (None: the whole split)
    test_docs: int | None = None  # cap on the test set (None: the whole split)
    embed_length: int = 128  # max tokens per document for the OT sentence embeddings
    select_batch_size: int = 32
    leak: float = 0.0  # fraction of the true training data mixed into the seed corpus
    variants: dict[str, dict] = field(default_factory=dict)
    layers: int | None = None  # lm: keep only the first layers of the base
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def total_seed_docs(self) -> int:
        return sum(self.seed_docs.values())


def _smoke() -> Sizes:
    """The test suite's size: seconds on tiny models, the same code path as the others."""
    return Sizes({"wikipedia": 30, "news": 30, "tweets": 30}, ks=[12], seeds=1, max_length=32,
                 epochs=2, lr=1e-3, batch_size=8, expert_epochs=4, expert_lr=3e-3,
                 train_docs=30, test_docs=20, embed_length=32, select_batch_size=16)


def classify_sizes(preset: str) -> Sizes:
    """Presets for the classification demo (all-MiniLM-L6-v2, BBC News)."""
    if preset == "smoke":
        return _smoke()
    if preset == "quick":
        return Sizes({"wikipedia": 800, "news": 800, "tweets": 400}, ks=[200], seeds=1,
                     epochs=3, expert_epochs=2)
    if preset == "default":
        return Sizes({"wikipedia": 3000, "news": 3000, "tweets": 2000}, ks=[200], seeds=2,
                     epochs=3, expert_epochs=2)
    if preset == "full":
        full = Sizes({"wikipedia": 7000, "news": 7000, "tweets": 6000}, ks=[100, 200, 500, 1000],
                     seeds=3, max_length=96)
        full.variants = select_variants(full.checkpoints)
        return full
    raise ValueError(f"unknown preset {preset!r}")


def lm_sizes(preset: str) -> Sizes:
    """Presets for the language-modelling demo (SmolLM2-135M truncated, BBC passages)."""
    if preset == "smoke":
        return _smoke()
    if preset == "quick":
        return Sizes({"wikipedia": 300, "news": 300, "tweets": 200}, ks=[100], seeds=1,
                     max_length=48, epochs=2, lr=5e-4, expert_epochs=2,
                     expert_lr=5e-4, train_docs=300, test_docs=100, layers=4)
    if preset == "default":
        return Sizes({"wikipedia": 800, "news": 800, "tweets": 400}, ks=[200], seeds=2,
                     max_length=48, epochs=2, lr=5e-4, expert_epochs=2,
                     expert_lr=5e-4, train_docs=600, test_docs=200, layers=4)
    if preset == "full":
        full = Sizes({"wikipedia": 7000, "news": 7000, "tweets": 6000}, ks=[100, 200, 500, 1000],
                     seeds=3, max_length=96, lr=5e-4, expert_epochs=2,
                     expert_lr=5e-4, layers=8)
        full.variants = select_variants(full.checkpoints, classify=False)
        return full
    raise ValueError(f"unknown preset {preset!r}")
