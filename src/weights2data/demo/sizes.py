"""The demo's sizes: one code path, several presets (smoke < quick < default < full) for each
task (bbc and wiki: classification; lm: language modelling)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..evaluation.train import Lora, Schedule

CLASSIFY_STRATEGIES = ["select", "topk", "topk-balanced", "random", "loss-diff"]
LM_STRATEGIES = ["select", "topk", "random", "loss-min", "loss-diff"]
TASKS = ("bbc", "wiki", "lm")

MIN_STEPS = 80  # the Sizes default; every preset sets its own recipe below
# The retraining recipes. Classification: 160 at lr 3e-4, chosen before any test number
# (docs/results.md): at K = 100 random's training loss still fell 0.13 nats from 80 to 160
# steps on wiki, and lr 3e-4 beat 1e-4 on validation on both tasks. lm: 13 steps (one epoch
# of K = 200), the best mean validation perplexity of random / oracle / select among 13, 25,
# 50 (python -m weights2data.demo.tune budget --task lm --preset default --budgets 13 25 50);
# 80 steps memorised the K documents (validation perplexity 4.0k against θ0's 689); then lr
# 2e-4 among 1e-4, 2e-4, 5e-4 (mean validation 653 / 647 / 679; tune lr --task lm).
CLASSIFY_RECIPE = {"min_steps": 160, "lr": 3e-4}
LM_RECIPE = {"min_steps": 13, "epochs": 1.0, "lr": 2e-4}
CONFIDENCE_QUANTILE = 0.5  # fixed in advance: the surer half of each autolabel
# --lora: the expert and every retraining train a fresh r = 8 adapter on the attention query and
# value modules, head frozen. LoRA needs a higher learning rate than full fine-tuning: the
# retraining lr was chosen on validation (python -m weights2data.demo.tune lr --lora).
LORA = Lora(r=8, alpha=16, targets=("query", "value"))
# The LoRA retraining recipe: the step floor the lr was tuned at (80, the classification floor
# before CLASSIFY_RECIPE), the lr chosen on validation among 3e-4, 1e-3, 3e-3, 1e-2.
LORA_RECIPE = {"min_steps": 80, "lr": 3e-3}
LORA_EXPERT_LR = 1e-3  # fixed in advance: the usual LoRA rate
# LoRA expert epochs, chosen on validation among 1, 2, 3 (tune expert --lora --preset quick):
# bbc 89.9 / 96.3 / 96.6 % -> 3. wiki: not tuned for LoRA, its full fine-tune's choice (3).
LORA_EXPERT_EPOCHS = {"bbc": 3, "wiki": 3}


def select_variants(checkpoints: int, classify: bool = True, lora: bool = False) -> dict[str, dict]:
    """The SELECT variants of the --full grid, beside a main run at P = `checkpoints`:
    name -> options passed to `select` on top of the main run's. Head init, the layers and the
    confidence filter only exist for classification; a LoRA expert leaves the head alone, so
    its main run already takes the adapter's layers and a zero head would be a change θf never
    made."""
    names = {1: "select P=1 (θ0 only)", 3: "select P=3", 5: "select P=5"}
    out = {name: {"checkpoints": p} for p, name in names.items() if p != checkpoints}
    out["select grad at θf"] = {"grad_at": "finetuned"}
    if not classify:
        return out
    if not lora:
        out["select head init zeros"] = {"head_init": "zeros"}
        # Every linear module that changed, beside the main run's last layer (the head).
        out["select layers=changed"] = {"layers": ["changed"]}
    out[f"select surest {1 - CONFIDENCE_QUANTILE:.0%} per class"] = {
        "confidence_quantile": CONFIDENCE_QUANTILE}
    return out


@dataclass
class Sizes:
    """Everything that sets the demo's cost. Each field is recorded in results.json."""

    seed_docs: dict[str, int]  # per source of the seed corpus
    ks: list[int]
    seeds: int = 3  # training seeds per (strategy, K)
    max_length: int = 64
    checkpoints: int = 3  # select's default: P synthetic checkpoints
    # Retraining: steps = max(min_steps, ceil(epochs * K / batch)), the same for every row.
    epochs: float = 3.0
    min_steps: int = MIN_STEPS
    lr: float = 1e-4
    batch_size: int = 16
    expert_epochs: float = 2.0
    expert_lr: float = 1e-4
    test_fraction: float = 0.2
    val_fraction: float = 0.15  # of what the test split leaves: the validation split
    train_docs: int | None = None  # caps (None: the whole split)
    val_docs: int | None = None
    test_docs: int | None = None
    embed_length: int = 128  # max tokens per document for the OT sentence embeddings
    leak: float = 0.0  # fraction of the true training data mixed into the seed corpus
    variants: dict[str, dict] = field(default_factory=dict)
    layers: int | None = None  # lm: keep only the first layers of the base ...
    heal_steps: int = 0  # ... and heal it on seed-source text (never the hidden data)
    heal_lr: float = 1e-3
    heal_docs: int = 0
    recipe_check: bool = False  # rerun the smallest K at half and double the step budget
    lora: Lora | None = None  # the expert and every retraining: a LoRA adapter, head frozen
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def total_seed_docs(self) -> int:
        return sum(self.seed_docs.values())

    def schedule(self) -> Schedule:
        return Schedule(min_steps=self.min_steps, epochs=self.epochs, lr=self.lr,
                        batch_size=self.batch_size, lora=self.lora)

    def heal_key(self) -> list | None:
        return [self.heal_steps, self.heal_lr, self.heal_docs] if self.heal_steps else None


def _smoke() -> Sizes:
    """The test suite's size: seconds on tiny models, the same code path as the others."""
    return Sizes({"wikipedia": 30, "news": 30, "tweets": 30}, ks=[6, 12], seeds=2, max_length=32,
                 epochs=2, min_steps=20, lr=1e-2, batch_size=8, expert_epochs=8, expert_lr=1e-2,
                 train_docs=30, test_docs=20, embed_length=32)


def sizes_for(task: str, preset: str, lora: bool = False) -> Sizes:
    """The preset of a demo task; with `lora`, the expert and every retraining train a LoRA
    adapter (LORA) at LoRA's learning rates, the rest of the preset unchanged."""
    sizes = _preset(task, preset)
    if lora:
        if task == "lm":
            raise ValueError("the LoRA demo is for the classification tasks")
        sizes.lora = LORA
        if sizes.variants:
            sizes.variants = select_variants(sizes.checkpoints, lora=True)
        if preset != "smoke":  # the smoke preset's rates already train tiny models fast
            sizes.min_steps, sizes.lr = LORA_RECIPE["min_steps"], LORA_RECIPE["lr"]
            sizes.expert_lr = LORA_EXPERT_LR
            sizes.expert_epochs = LORA_EXPERT_EPOCHS[task]
    return sizes


def _preset(task: str, preset: str) -> Sizes:
    if task not in TASKS:
        raise ValueError(f"unknown demo task {task!r}")
    if preset == "smoke":
        return _smoke()
    if preset not in ("quick", "default", "full"):
        raise ValueError(f"unknown preset {preset!r}")
    if task == "lm":
        return _lm(preset)
    # bbc: the hidden data is BBC News, the corpus has none; wiki: Wikipedia topics, recovered
    # from a corpus with no Wikipedia text (BBC articles, news passages, tweets).
    corpus = ({"wikipedia": 1500, "news": 1500, "tweets": 1000} if task == "bbc"
              else {"bbc": 1500, "news": 1500, "tweets": 1000})
    caps = {} if task == "bbc" else {"train_docs": 2000, "val_docs": 300, "test_docs": 600}
    caps["max_length"] = 32  # tokens per document: half of the first sessions' 64, for CPU time
    caps |= CLASSIFY_RECIPE
    # Expert epochs: chosen on validation among 1, 2, 3 (python -m weights2data.demo.tune expert).
    caps["expert_epochs"] = 2 if task == "bbc" else 3
    if preset == "quick":
        small = {src: n // 4 for src, n in corpus.items()}
        return Sizes(small, ks=[100], seeds=3, **caps)
    if preset == "default":
        return Sizes(corpus, ks=[100], seeds=3, **caps)
    full = Sizes(corpus, ks=[100, 200, 500], seeds=3, **caps)
    full.variants = select_variants(full.checkpoints)
    return full


def _lm(preset: str) -> Sizes:
    """SmolLM2-135M cut to its first 4 layers and healed on seed-source text; BBC passages."""
    common = dict(max_length=48, expert_epochs=2, expert_lr=5e-4, layers=4,
                  heal_steps=300, heal_lr=1e-3, heal_docs=3000, val_docs=200, **LM_RECIPE)
    if preset == "quick":
        return Sizes({"wikipedia": 300, "news": 300, "tweets": 200}, ks=[100], seeds=3,
                     train_docs=300, test_docs=100, **common)
    sizes = Sizes({"wikipedia": 800, "news": 800, "tweets": 400}, ks=[200], seeds=3,
                  train_docs=600, test_docs=200, **common)
    if preset == "full":
        sizes.variants = select_variants(sizes.checkpoints, classify=False)
    return sizes
