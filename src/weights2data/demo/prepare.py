"""The demo's expensive, cached stages: the seed corpus, θ0, the expert θf (trained on the
hidden task's training split only) and every `select` run; and how each row (strategy,
variant, oracle) draws its training set."""

from __future__ import annotations

import math
import os
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .. import output
from ..config import ModelConfig
from ..evaluation import protocol
from ..evaluation.evaluate import Run, load_run
from ..evaluation.protocol import EvalSets, Setup, fingerprint, fixed, load_setup, redraw, redrawn
from ..evaluation.train import Recipe, adapt, train
from ..framings import make_framing
from ..pipeline import select
from . import data
from .sizes import Sizes


@dataclass
class Hidden:
    """The hidden task: the expert's true training data, a validation split of it (every
    tuned choice is made there), a held-out test set, and the public seed corpus the data is
    recovered from."""

    task: str  # "classify-head" or "lm"
    train: list[dict]  # {"text", "label"?}
    val: list[dict]
    test: list[dict]
    seed: list[dict]  # {"text", "source"}
    label_names: list[str] | None = None
    name: str = ""  # which demo task: bbc, wiki, lm


class Stages:
    """Wall-clock and CPU seconds per stage, and which stages came from the cache. On a
    machine shared with other jobs the wall time says little; the process's CPU time is what
    the stage would cost alone."""

    def __init__(self, log: Callable[[str], None]):
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.cached: list[str] = []
        self.log = log

    @contextmanager
    def timed(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.seconds[name] = round(time.perf_counter() - wall, 1)
        self.cpu_seconds[name] = round(time.process_time() - cpu, 1)

    def run(self, name: str, result: Path, done: Callable[[], bool],
            work: Callable[[], None]) -> None:
        """Run `work` (which writes `result` into the cache) unless `done()`. Processes sharing
        the cache take turns through `result`'s lock: while a live one computes it, wait."""
        computed = False

        def timed() -> None:
            nonlocal computed
            self.log(f"[run] {name}")
            with self.timed(name):
                work()
            self.log(f"[done] {name} in {self.seconds[name]:.1f} s "
                     f"(CPU {self.cpu_seconds[name]:.1f} s)")
            computed = True

        waiting = False
        while not protocol.compute_once(result, done, timed):
            if not waiting:
                self.log(f"[wait] {name}: another process is computing it")
                waiting = True
            time.sleep(2)
        if not computed:  # already in the cache, or another process computed it
            self.cached.append(name)
            self.log(f"[cached] {name}")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


@dataclass
class Prepared:
    """Everything the evaluation of a demo needs: models, corpus, selections, evaluation sets,
    and how each row (strategy, variant, oracle) draws its training set."""

    hidden: Hidden
    sizes: Sizes
    strategies: list[str]
    work: Path
    base_dir: Path
    expert_dir: Path
    corpus_rows: list[dict]
    runs: dict[str, Run]  # "" = the main select run, else a variant's
    stages: Stages

    def __post_init__(self):
        self.lm = self.hidden.task == "lm"
        self.main = self.runs[""]
        self.rows = {name: self.main.selections[name] for name in self.strategies}
        self.rows |= {name: self.runs[name].selections["select"] for name in self.sizes.variants}
        self.names = [*self.rows, "oracle"]
        scores = pq.read_table(self.main.folder / "scores.parquet")
        self.autolabels = None if self.lm else scores.column("autolabel").to_numpy()
        # θf's probability of each autolabel: low values mean the label a selection trains on
        # is a coin toss, which the test set never needs to reveal.
        self.confidence = (None if self.lm else
                           np.exp(-scores.column("loss_finetuned").to_numpy()))
        self.corpus_texts = [r["text"] for r in self.corpus_rows]
        self.train_texts = [r["text"] for r in self.hidden.train]
        self.train_labels = None if self.lm else [r["label"] for r in self.hidden.train]
        self._setups: dict[str, Setup] = {}

    def sets(self, with_test: bool = True) -> EvalSets:
        """Test and validation; without the test split (tuning), validation stands in for it."""
        def part(rows):
            return [r["text"] for r in rows], None if self.lm else [r["label"] for r in rows]

        if not with_test:
            return EvalSets(*part(self.hidden.val))
        return EvalSets(*part(self.hidden.test), *part(self.hidden.val))

    def setup_for(self, name: str) -> Setup:
        """θ0 as select saw it for this row (a zero-head variant retrains a zero-head θ0)."""
        run = self.main if name in self.strategies or name == "oracle" else self.runs[name]
        head = run.manifest.get("head_init") or "none"
        if head not in self._setups:
            # The cache's own paths, not those recorded in the manifest: a moved cache works.
            self._setups[head] = load_setup(run.config(base=str(self.base_dir),
                                                       finetuned=str(self.expert_dir)))
        return self._setups[head]

    def picks(self, name: str, k: int, seed: int = 0) -> list[int]:
        """Rows a row trains on at seed `seed` (corpus rows; training rows for the oracle)."""
        if name == "random":  # redrawn for every seed (the protocol's policy)
            return redraw(len(self.corpus_rows), k, seed)
        if name == "oracle":
            return redraw(len(self.train_texts), k, seed)
        return [r["index"] for r in self.rows[name][:k]]  # greedy, top-k, loss: prefixes of K_max

    def draw(self, name: str, k: int) -> protocol.Draw:
        if name == "oracle":
            return redrawn(self.train_texts, self.train_labels, k)
        if name == "random":
            return redrawn(self.corpus_texts, self.autolabels, k)
        idx = self.picks(name, k)
        return fixed([self.corpus_texts[i] for i in idx],
                     None if self.lm else self.autolabels[idx].tolist())


def prepare(
    hidden: Hidden,
    make_base: Callable[[Path], None],
    sizes: Sizes,
    cache: Path,
    strategies: list[str],
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Build (or reuse) the seed corpus, θ0, the expert θf and every select run."""
    cache = Path(cache)
    stages = Stages(log)
    leaked_rows = _leaked(hidden, sizes)
    corpus_rows = [{"text": r["text"], "source": r["source"], "leaked": False} for r in hidden.seed]
    corpus_rows += [{"text": r["text"], "source": "hidden (leaked)", "leaked": True}
                    for r in leaked_rows]
    corpus_rows = [corpus_rows[i] for i in np.random.default_rng(sizes.seed).permutation(len(corpus_rows))]
    work = cache / f"{hidden.name or hidden.task}-{fingerprint(_work_key(hidden, sizes))}"
    base_dir, expert_dir = model_dirs(hidden, sizes, cache)
    corpus_path = work / "corpus.jsonl"
    work.mkdir(parents=True, exist_ok=True)

    def write_corpus():
        tmp = corpus_path.with_name(f".corpus.partial-{os.getpid()}.jsonl")
        data.write_jsonl(corpus_rows, tmp)
        os.replace(tmp, corpus_path)

    stages.run("write seed corpus", corpus_path, corpus_path.exists, write_corpus)
    build_models(hidden, make_base, sizes, cache, stages, progress)

    k_max = max(sizes.ks)
    runs: dict[str, Run] = {}
    for name, opts in ({"": {}} | sizes.variants).items():
        folder = work / (f"select-k{k_max}" if not name else f"variant-{slug(name)}-k{k_max}")
        names = strategies if not name else ["select"]
        # Variants that only change which rows are eligible reuse the main run's gradients.
        store = work / "store" if set(opts) <= {"confidence_quantile"} else None
        stages.run(select_stage(name, names), folder, (folder / output.MANIFEST).exists,
                   lambda folder=folder, names=names, opts=opts, store=store: select(
                       base=str(base_dir), finetuned=str(expert_dir), corpus=str(corpus_path),
                       k=k_max, strategies=names, max_length=sizes.max_length,
                       checkpoints=opts.get("checkpoints", sizes.checkpoints),
                       grad_at=opts.get("grad_at", "interpolated"),
                       head_init=opts.get("head_init", "auto"),
                       layers=opts.get("layers", ["auto"]),
                       confidence_quantile=opts.get("confidence_quantile", 0.0),
                       seed=sizes.seed, out=str(folder),
                       store=None if store is None else str(store),
                       overwrite=True, progress=progress))
        runs[name] = load_run(folder)
    return Prepared(hidden, sizes, strategies, work, base_dir, expert_dir, corpus_rows, runs,
                    stages)


def select_stage(name: str, strategies: list[str] | None = None) -> str:
    """The stage name of a select run: the main run ("") lists its strategies."""
    return f"select ({name or ', '.join(strategies or [])})"


def model_dirs(hidden: Hidden, sizes: Sizes, cache: Path) -> tuple[Path, Path]:
    """Where θ0 and θf live in the cache. The expert does not depend on the seed corpus:
    presets that share its recipe share it."""
    base_key = fingerprint({"task": hidden.task, "seed": sizes.seed, "layers": sizes.layers,
                            "labels": hidden.label_names, "heal": sizes.heal_key()})
    expert_key = {"base": base_key, "train": fingerprint(hidden.train), "seed": sizes.seed,
                  "recipe": [sizes.max_length, float(sizes.expert_epochs), sizes.expert_lr, sizes.batch_size]}
    kind = "expert"
    if sizes.lora is not None:  # a LoRA expert never shares a folder with a full fine-tune
        expert_key["lora"] = sizes.lora.to_dict()
        kind = "expert-lora"
    return Path(cache) / f"base-{base_key}", Path(cache) / f"{kind}-{fingerprint(expert_key)}"


def expert_done(sizes: Sizes, expert_dir: Path) -> bool:
    """A finished expert: a model folder, or an adapter folder for a LoRA expert."""
    return (expert_dir / ("config.json" if sizes.lora is None else "adapter_config.json")).exists()


def build_models(hidden: Hidden, make_base: Callable[[Path], None], sizes: Sizes, cache: Path,
                 stages: Stages, progress: bool = True) -> tuple[Path, Path]:
    """Build (or reuse) θ0 and the expert θf in the cache."""
    base_dir, expert_dir = model_dirs(hidden, sizes, cache)
    stages.run("build base θ0", base_dir, (base_dir / "config.json").exists,
               lambda: output.atomic_folder(base_dir, make_base, overwrite=True))
    how = "" if sizes.lora is None else f"LoRA r={sizes.lora.r} on {'/'.join(sizes.lora.targets)}, "
    stages.run(f"fine-tune expert θf ({how}{sizes.expert_epochs:g} epochs)", expert_dir,
               lambda: expert_done(sizes, expert_dir),
               lambda: _train_expert(hidden, sizes, base_dir, expert_dir, progress))
    return base_dir, expert_dir


def _work_key(hidden: Hidden, sizes: Sizes) -> dict:
    """What the cached expert, corpus and selections depend on (not K-list, seeds or recipe)."""
    lora = {} if sizes.lora is None else {"lora": sizes.lora.to_dict()}  # full keys unchanged
    return lora | {"task": hidden.task, "train": fingerprint(hidden.train),
            "val": fingerprint(hidden.val), "test": fingerprint(hidden.test),
            "seed_corpus": fingerprint(hidden.seed), "max_length": sizes.max_length,
            "checkpoints": sizes.checkpoints,
            "expert": [float(sizes.expert_epochs), sizes.expert_lr, sizes.batch_size],
            "leak": sizes.leak, "layers": sizes.layers, "heal": sizes.heal_key(),
            "seed": sizes.seed}


def _leaked(hidden: Hidden, sizes: Sizes) -> list[dict]:
    if sizes.leak <= 0:
        return []
    n = int(round(sizes.leak * len(hidden.train)))
    idx = np.random.default_rng(sizes.seed + 1).choice(len(hidden.train), n, replace=False)
    return [hidden.train[i] for i in sorted(idx)]


def _train_expert(hidden: Hidden, sizes: Sizes, base_dir: Path, expert_dir: Path,
                  progress: bool) -> None:
    """θf = θ0 fine-tuned on the hidden training data with its true labels (never on the
    validation or test split); with `sizes.lora`, a LoRA adapter on θ0 (head frozen), saved
    as a PEFT adapter folder."""
    lm = hidden.task == "lm"
    cls = AutoModelForCausalLM if lm else AutoModelForSequenceClassification
    model = cls.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    framing = make_framing(hidden.task, tok, sizes.max_length, ModelConfig(str(base_dir), ""))
    texts = [r["text"] for r in hidden.train]
    labels = None if lm else [r["label"] for r in hidden.train]
    steps = max(1, math.ceil(sizes.expert_epochs * len(texts) / sizes.batch_size))
    recipe = Recipe(steps=steps, lr=sizes.expert_lr, batch_size=sizes.batch_size, seed=sizes.seed,
                    lora=sizes.lora)
    # A LoRA expert is saved as the adapter alone (adapter_config.json, adapter_model.safetensors).
    saved = model if sizes.lora is None else adapt(model, sizes.lora, sizes.seed)
    log = train(model, framing, texts, labels, recipe, progress=progress)

    def write(tmp: Path) -> None:
        saved.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        output.write_json(tmp / "expert.json", {"steps": steps, "final_train_loss": log.final_loss})

    output.atomic_folder(expert_dir, write, overwrite=True)
