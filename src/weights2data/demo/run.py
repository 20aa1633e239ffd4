"""The demo's one code path, for any task: build θ0 and the expert θf, run `select` (the real
pipeline, written to a cached output folder), judge every selection with the evaluation
protocol (evaluation/protocol.py, the same one `weights2data evaluate` uses), and collect what
the report shows. Every finished stage is cached under `cache/` so a second run only does
what is missing."""

from __future__ import annotations

import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .. import output
from ..config import ModelConfig
from ..evaluation import protocol
from ..evaluation.evaluate import Run, load_run
from ..evaluation.metrics import SentenceEncoder, distribution, leakage, ot_distance
from ..evaluation.protocol import (
    EvalSets,
    Setup,
    fingerprint,
    fixed,
    load_setup,
    redraw,
    redrawn,
    write_atomic,
)
from ..evaluation.train import Recipe, train
from ..framings import make_framing
from ..pipeline import select
from . import data
from .sizes import Sizes

SNIPPET = 160  # characters of each first pick shown in the report
FIRST_PICKS = 5


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

    def run(self, name: str, done: bool, work: Callable[[], None]) -> None:
        if done:
            self.cached.append(name)
            self.log(f"[cached] {name}")
            return
        self.log(f"[run] {name}")
        with self.timed(name):
            work()
        self.log(f"[done] {name} in {self.seconds[name]:.1f} s (CPU {self.cpu_seconds[name]:.1f} s)")


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

    stages.run("write seed corpus", corpus_path.exists(), write_corpus)
    build_models(hidden, make_base, sizes, cache, stages, progress)

    k_max = max(sizes.ks)
    runs: dict[str, Run] = {}
    for name, opts in ({"": {}} | sizes.variants).items():
        folder = work / (f"select-k{k_max}" if not name else f"variant-{slug(name)}-k{k_max}")
        names = strategies if not name else ["select"]
        # Variants that only change which rows are eligible reuse the main run's gradients.
        store = work / "store" if set(opts) <= {"confidence_quantile"} else None
        stages.run(f"select ({name or ', '.join(names)})", (folder / output.MANIFEST).exists(),
                   lambda folder=folder, names=names, opts=opts, store=store: select(
                       base=str(base_dir), finetuned=str(expert_dir), corpus=str(corpus_path),
                       k=k_max, strategies=names, max_length=sizes.max_length,
                       checkpoints=opts.get("checkpoints", sizes.checkpoints),
                       grad_at=opts.get("grad_at", "interpolated"),
                       head_init=opts.get("head_init", "auto"),
                       confidence_quantile=opts.get("confidence_quantile", 0.0),
                       seed=sizes.seed, out=str(folder),
                       store=None if store is None else str(store),
                       overwrite=True, progress=progress))
        runs[name] = load_run(folder)
    return Prepared(hidden, sizes, strategies, work, base_dir, expert_dir, corpus_rows, runs,
                    stages)


def model_dirs(hidden: Hidden, sizes: Sizes, cache: Path) -> tuple[Path, Path]:
    """Where θ0 and θf live in the cache. The expert does not depend on the seed corpus:
    presets that share its recipe share it."""
    base_key = fingerprint({"task": hidden.task, "seed": sizes.seed, "layers": sizes.layers,
                            "labels": hidden.label_names, "heal": sizes.heal_key()})
    expert_key = {"base": base_key, "train": fingerprint(hidden.train), "seed": sizes.seed,
                  "recipe": [sizes.max_length, sizes.expert_epochs, sizes.expert_lr, sizes.batch_size]}
    return Path(cache) / f"base-{base_key}", Path(cache) / f"expert-{fingerprint(expert_key)}"


def build_models(hidden: Hidden, make_base: Callable[[Path], None], sizes: Sizes, cache: Path,
                 stages: Stages, progress: bool = True) -> tuple[Path, Path]:
    """Build (or reuse) θ0 and the expert θf in the cache."""
    base_dir, expert_dir = model_dirs(hidden, sizes, cache)
    stages.run("build base θ0", (base_dir / "config.json").exists(),
               lambda: output.atomic_folder(base_dir, make_base, overwrite=True))
    stages.run(f"fine-tune expert θf ({sizes.expert_epochs:g} epochs)",
               (expert_dir / "config.json").exists(),
               lambda: _train_expert(hidden, sizes, base_dir, expert_dir, progress))
    return base_dir, expert_dir


def run_demo(
    hidden: Hidden,
    make_base: Callable[[Path], None],
    sizes: Sizes,
    cache: Path,
    strategies: list[str],
    progress: bool = True,
    log: Callable[[str], None] = print,
    encoder_folder: str | Path | None = None,
) -> dict:
    """Run (or resume) the whole demo and return the results as a dict."""
    cache = Path(cache)
    p = prepare(hidden, make_base, sizes, cache, strategies, progress, log)
    schedule = sizes.schedule()
    budgets = {1.0: schedule}
    if sizes.recipe_check:
        budgets |= {f: schedule.scaled(f) for f in (0.5, 2.0)}
    with p.stages.timed("retrain + measure"):
        points, measured = _retrain(p, budgets, progress)
    with p.stages.timed("OT distances, first picks"):
        rows, first_picks = _describe(p, measured, cache / "embeddings", encoder_folder, progress)
    lm, runs = p.lm, p.runs
    results = {
        "task": hidden.task,
        "name": hidden.name,
        "metric": "perplexity" if lm else "accuracy",
        "lower_is_better": lm,
        "sizes": sizes.to_dict(),
        "documents": {"seed_corpus": len(p.corpus_rows),
                      "leaked": sum(r["leaked"] for r in p.corpus_rows),
                      "train": len(p.train_texts), "val": len(hidden.val), "test": len(hidden.test)},
        "schedule": schedule.to_dict(),
        "recipes": {str(k): schedule.recipe(k).to_dict() for k in sizes.ks},
        "seeds": list(range(sizes.seeds)),
        "select": {name or "main": {"folder": str(r.folder), "config": r.manifest["config"],
                                    "head_init": r.manifest.get("head_init"),
                                    "eligible_documents": r.manifest.get("eligible_documents"),
                                    "timings_s": r.manifest.get("timings_s")}
                   for name, r in runs.items()},
        "label_names": hidden.label_names,
        "true_labels": None if lm else distribution(p.train_labels, hidden.label_names),
        **points,
        "base_model": _base_info(p.base_dir),
        "strategies": rows,
        "oracle": rows.pop("oracle"),
        "curves": {name or "select": c["select"] for name, r in runs.items()
                   if "select" in (c := _read_curves(r))},
        "first_picks": first_picks,
        "timings_s": p.stages.seconds,
        "cpu_s": p.stages.cpu_seconds,
        "cached_stages": p.stages.cached,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                    "device": str(p.setup_for("oracle").pair.device)},
        "cache": str(p.work),
        "versions": output.versions(),
    }
    if sizes.recipe_check:
        from .recipe_check import compare

        k = min(sizes.ks)
        results["recipe_check"] = compare(
            {f: {n: measured[n, k, f] for n in _checked(p)} for f in budgets}, k,
            lower_is_better=lm)
    return results


def _checked(p: Prepared) -> list[str]:
    """The rows the recipe check reruns: the strategies and the oracle, not the variants."""
    return [*p.strategies, "oracle"]


def _retrain(p: Prepared, budgets: dict, progress: bool) -> tuple[dict, dict]:
    """Base and expert on test/validation, and every (row, K, budget) through the protocol."""
    sets = p.sets()
    evals = p.work / "evals"

    def point(name: str, model) -> dict:
        path = evals / f"{name}-{sets.fingerprint()}.json"
        if not path.exists():
            write_atomic(path, sets.measure(p.setup_for("oracle"), model))
        return json.loads(path.read_text())

    setup = p.setup_for("oracle")
    points = {"base": point("base", setup.pair.base),
              "expert": point("expert", setup.pair.finetuned)}
    seeds = list(range(p.sizes.seeds))
    jobs = [(name, k, 1.0) for k in p.sizes.ks for name in p.names]
    jobs += [(name, min(p.sizes.ks), f) for f in budgets if f != 1.0 for name in _checked(p)]
    measured: dict[tuple[str, int, float], dict] = {}
    bar = tqdm(total=len(jobs), desc="retrain", disable=not progress, unit="row")
    # Two passes: the first skips rows another process sharing the cache is working on, the
    # second waits for them, so several `demo` processes split one grid between them.
    for wait in (False, True):
        for name, k, f in [j for j in jobs if j not in measured]:
            bar.set_postfix_str(f"{name} K={k}" + (f" budget ×{f:g}" if f != 1.0 else ""))
            out = protocol.evaluate(p.setup_for(name), p.draw(name, k), k, budgets[f], seeds,
                                    sets, cache=evals, wait=wait)
            if out is not None:
                measured[name, k, f] = out
                bar.update()
    bar.close()
    return points, measured


def _describe(p: Prepared, measured: dict, embeddings: Path, encoder_folder, progress: bool
              ) -> tuple[dict, dict]:
    """Each row's results per K with what it trained on (seed-0 selection): OT distance to the
    true data, label and source shares, θf's confidence, leakage; and its first picks."""
    embeddings.mkdir(exist_ok=True)  # keyed by content: shared by every preset
    encoder: list[SentenceEncoder] = []
    sizes, lm, names = p.sizes, p.lm, p.hidden.label_names

    def embed(name: str, texts: list[str]) -> np.ndarray:
        path = embeddings / f"{slug(name)}-{fingerprint([sizes.embed_length, texts])}.npy"
        if path.exists():
            return np.load(path)
        if not encoder:
            encoder.append(SentenceEncoder(encoder_folder, max_length=sizes.embed_length))
        out = encoder[0](texts, progress=progress)
        tmp = path.with_name(f".{path.stem}.partial-{os.getpid()}.npy")
        np.save(tmp, out)
        os.replace(tmp, path)
        return out

    true_emb = embed("true", p.train_texts)
    leaked_idx = [i for i, r in enumerate(p.corpus_rows) if r["leaked"]]
    rows: dict[str, dict] = {}
    first: dict[str, list[dict]] = {}
    for name in p.names:
        oracle = name == "oracle"
        pool = p.train_texts if oracle else p.corpus_texts
        full = p.picks(name, max(sizes.ks), 0)
        emb = embed(name, [pool[i] for i in full])
        labels = p.train_labels if oracle else p.autolabels
        per_k = {}
        for k in sizes.ks:
            entry = {**measured[name, k, 1.0], "ot": ot_distance(emb[:k], true_emb)}
            idx = p.picks(name, k, 0)
            if not lm:
                entry["labels"] = distribution([int(labels[i]) for i in idx], names)
            if not oracle:
                entry["sources"] = distribution([p.corpus_rows[i]["source"] for i in idx])
                if not lm:
                    entry["label_confidence"] = float(p.confidence[idx].mean())
                if leaked_idx:
                    entry["leakage"] = leakage(idx, leaked_idx)
            per_k[str(k)] = entry
        rows[name] = per_k
        first[name] = [{"rank": r + 1, "index": i, "text": pool[i][:SNIPPET],
                        "source": "hidden" if oracle else p.corpus_rows[i]["source"],
                        "label": None if lm else names[int(labels[i])]}
                       for r, i in enumerate(full[:FIRST_PICKS])]
    return rows, first


def _read_curves(run: Run) -> dict:
    path = run.folder / "curves.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _base_info(base_dir: Path) -> dict | None:
    """What make_base recorded about θ0 (lm: truncation and healing, held-out perplexity)."""
    path = base_dir / "base.json"
    return json.loads(path.read_text()) if path.exists() else None


def _work_key(hidden: Hidden, sizes: Sizes) -> dict:
    """What the cached expert, corpus and selections depend on (not K-list, seeds or recipe)."""
    return {"task": hidden.task, "train": fingerprint(hidden.train),
            "val": fingerprint(hidden.val), "test": fingerprint(hidden.test),
            "seed_corpus": fingerprint(hidden.seed), "max_length": sizes.max_length,
            "checkpoints": sizes.checkpoints,
            "expert": [sizes.expert_epochs, sizes.expert_lr, sizes.batch_size],
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
    validation or test split)."""
    lm = hidden.task == "lm"
    cls = AutoModelForCausalLM if lm else AutoModelForSequenceClassification
    model = cls.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    framing = make_framing(hidden.task, tok, sizes.max_length, ModelConfig(str(base_dir), ""))
    texts = [r["text"] for r in hidden.train]
    labels = None if lm else [r["label"] for r in hidden.train]
    steps = max(1, math.ceil(sizes.expert_epochs * len(texts) / sizes.batch_size))
    log = train(model, framing, texts, labels,
                Recipe(steps=steps, lr=sizes.expert_lr, batch_size=sizes.batch_size, seed=sizes.seed),
                progress=progress)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        output.write_json(tmp / "expert.json", {"steps": steps, "final_train_loss": log.final_loss})

    output.atomic_folder(expert_dir, write, overwrite=True)
