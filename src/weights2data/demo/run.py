"""The demo's one code path, for any task: build θ0 and the expert θf, run `select` (the real
pipeline, written to a cached output folder), retrain θ0 on every selection with one fixed
recipe over several seeds, and measure. Every finished stage is cached under `cache/` so a
second run only does what is missing."""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from .. import output
from ..config import ModelConfig
from ..evaluation.evaluate import Run, load_run
from ..evaluation.metrics import SentenceEncoder, distribution, leakage, ot_distance
from ..evaluation.retrain import Setup, load_setup, measure, retrain, summarise
from ..evaluation.train import Recipe, train
from ..framings import make_framing
from ..pipeline import select
from ..selection import run_strategy
from . import data
from .sizes import Sizes


@dataclass
class Hidden:
    """The hidden task: the expert's true training data, a held-out test set, and the public
    seed corpus the data is recovered from."""

    task: str  # "classify-head" or "lm"
    train: list[dict]  # {"text", "label"?}
    test: list[dict]
    seed: list[dict]  # {"text", "source"}
    label_names: list[str] | None = None


class Stages:
    """Wall-clock seconds per stage, and which stages came from the cache."""

    def __init__(self, log: Callable[[str], None]):
        self.seconds: dict[str, float] = {}
        self.cached: list[str] = []
        self.log = log

    def run(self, name: str, done: bool, work: Callable[[], None]) -> None:
        if done:
            self.cached.append(name)
            self.log(f"[cached] {name}")
            return
        self.log(f"[run] {name}")
        start = time.perf_counter()
        work()
        self.seconds[name] = round(time.perf_counter() - start, 1)
        self.log(f"[done] {name} in {self.seconds[name]:.1f} s")


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def recipe_for(sizes: Sizes, k: int, seed: int = 0) -> Recipe:
    """The one recipe for a training set of k documents: a fixed number of steps
    (epochs · k / batch), the same for every strategy, the oracle and random."""
    return Recipe(steps=max(1, math.ceil(sizes.epochs * k / sizes.batch_size)), lr=sizes.lr,
                  batch_size=sizes.batch_size, seed=seed)


def _write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    output.write_json(tmp, obj)
    os.replace(tmp, path)


def _read_json(path: Path):
    return json.loads(path.read_text())


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
    stages = Stages(log)
    lm = hidden.task == "lm"
    leaked_rows = _leaked(hidden, sizes)
    corpus_rows = [{"text": r["text"], "source": r["source"], "leaked": False} for r in hidden.seed]
    corpus_rows += [{"text": r["text"], "source": "bbc (leaked)", "leaked": True} for r in leaked_rows]
    corpus_rows = [corpus_rows[i] for i in np.random.default_rng(sizes.seed).permutation(len(corpus_rows))]

    base_key = fingerprint({"task": hidden.task, "seed": sizes.seed, "layers": sizes.layers,
                            "labels": hidden.label_names})
    work = cache / f"{'lm' if lm else 'classify'}-{fingerprint(_work_key(hidden, sizes))}"
    # The expert does not depend on the seed corpus: presets that share its recipe share it.
    expert_key = {"base": base_key, "train": fingerprint(hidden.train), "seed": sizes.seed,
                  "recipe": [sizes.max_length, sizes.expert_epochs, sizes.expert_lr, sizes.batch_size]}
    base_dir = cache / f"base-{base_key}"
    expert_dir = cache / f"expert-{fingerprint(expert_key)}"
    corpus_path = work / "corpus.jsonl"
    work.mkdir(parents=True, exist_ok=True)

    def write_corpus():
        tmp = corpus_path.with_name(f".corpus.partial-{os.getpid()}.jsonl")
        data.write_jsonl(corpus_rows, tmp)
        os.replace(tmp, corpus_path)

    stages.run("write seed corpus", corpus_path.exists(), write_corpus)
    stages.run("build base θ0", (base_dir / "config.json").exists(),
               lambda: output.atomic_folder(base_dir, make_base, overwrite=True))
    stages.run("fine-tune expert θf", (expert_dir / "config.json").exists(),
               lambda: _train_expert(hidden, sizes, base_dir, expert_dir, progress))

    k_max = max(sizes.ks)
    variants = sizes.variants
    runs: dict[str, Run] = {}
    select_opts = {"": {}} | variants
    for name, opts in select_opts.items():
        folder = work / (f"select-k{k_max}" if not name else f"variant-{slug(name)}-k{k_max}")
        names = strategies if not name else ["select"]
        stages.run(f"select ({name or ', '.join(names)})", (folder / output.MANIFEST).exists(),
                   lambda folder=folder, names=names, opts=opts: select(
                       base=str(base_dir), finetuned=str(expert_dir), corpus=str(corpus_path),
                       k=k_max, strategies=names, max_length=sizes.max_length,
                       checkpoints=opts.get("checkpoints", sizes.checkpoints),
                       grad_at=opts.get("grad_at", "interpolated"),
                       head_init=opts.get("head_init", "auto"),
                       min_confidence=opts.get("min_confidence", 0.0),
                       batch_size=sizes.select_batch_size, seed=sizes.seed, out=str(folder),
                       overwrite=True, progress=progress))
        runs[name] = load_run(folder)

    # θ0 as select saw it, per head init (a zero-head variant retrains a zero-head θ0).
    setups: dict[str, Setup] = {}

    def setup_for(run: Run) -> Setup:
        head = run.manifest.get("head_init") or "none"
        if head not in setups:
            # The cache's own paths, not those recorded in the manifest: a moved cache still works.
            setups[head] = load_setup(run.config(base=str(base_dir), finetuned=str(expert_dir)))
        return setups[head]

    main = runs[""]
    test_texts = [r["text"] for r in hidden.test]
    test_labels = None if lm else [r["label"] for r in hidden.test]
    train_texts = [r["text"] for r in hidden.train]
    train_labels = None if lm else [r["label"] for r in hidden.train]
    evals = work / "evals"
    evals.mkdir(exist_ok=True)

    def cached_value(name: str, compute: Callable[[], float]) -> float:
        path = evals / f"{name}.json"
        if path.exists():
            return _read_json(path)["value"]
        value = compute()
        _write_json_atomic(path, {"value": value})
        return value

    start = time.perf_counter()
    base_value = cached_value("base", lambda: measure(setup_for(main), setup_for(main).pair.base,
                                                      test_texts, test_labels))
    expert_value = cached_value("expert", lambda: measure(
        setup_for(main), setup_for(main).pair.finetuned, test_texts, test_labels))

    # Every (strategy, K, seed) retraining, one cached file each.
    rows = {name: main.selections[name] for name in strategies}
    rows |= {name: runs[name].selections["select"] for name in variants}
    scores = pq.read_table(main.folder / "scores.parquet")
    autolabels = None if lm else scores.column("autolabel").to_numpy()
    # θf's probability of each autolabel: low values mean the label a selection trains on is a
    # coin toss, which the test set never needs to reveal.
    confidence = None if lm else np.exp(-scores.column("loss_finetuned").to_numpy())
    n_docs = len(corpus_rows)

    def picks(name: str, k: int, seed: int) -> list[int]:
        if name == "random" and seed != 0:  # a fresh random draw per seed
            return run_strategy("random", k, n=n_docs, seed=seed).indices
        return [r["index"] for r in rows[name][:k]]  # greedy, top-k, loss: prefixes of K_max

    def oracle_picks(k: int, seed: int) -> list[int]:
        # a prefix of one permutation, so the smaller K's documents are among the larger K's
        return np.random.default_rng(seed).permutation(len(train_texts))[:k].tolist()

    def job_file(name: str, k: int, seed: int) -> str:
        # Keyed by what was trained on, so a different K_max or corpus never reuses a stale value.
        idx = oracle_picks(k, seed) if name == "oracle" else picks(name, k, seed)
        return f"{slug(name)}-k{k}-s{seed}-{fingerprint([recipe_for(sizes, k).to_dict(), idx])}.json"

    jobs = [(name, k, s) for k in sizes.ks for name in [*rows, "oracle"] for s in range(sizes.seeds)]
    todo = [j for j in jobs if not (evals / job_file(*j)).exists()]
    bar = tqdm(jobs, desc="retrain", disable=not progress, unit="model")
    for name, k, s in bar:
        bar.set_postfix_str(f"{name} K={k} seed={s}", refresh=True)
        run = main if name in strategies or name == "oracle" else runs[name]

        def compute(name=name, k=k, s=s, run=run) -> float:
            if name == "oracle":
                idx = oracle_picks(k, s)
                texts = [train_texts[i] for i in idx]
                labels = None if lm else [train_labels[i] for i in idx]
            else:
                idx = picks(name, k, s)
                texts = [corpus_rows[i]["text"] for i in idx]
                labels = None if lm else autolabels[idx].tolist()
            return retrain(setup_for(run), texts, labels, recipe_for(sizes, k), [s],
                           test_texts, test_labels)["values"][0]

        cached_value(job_file(name, k, s).removesuffix(".json"), compute)
    if todo:
        stages.seconds[f"retrain + measure ({len(todo)} models)"] = round(
            time.perf_counter() - start, 1)
    else:
        stages.cached.append("retrain + measure")

    # Similarity to the true data: OT distance, labels, sources, leakage (seed-0 selections).
    embeddings = cache / "embeddings"  # keyed by content: shared by every preset
    embeddings.mkdir(exist_ok=True)
    encoder: list[SentenceEncoder] = []

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

    start = time.perf_counter()
    true_emb = embed("true", train_texts)
    leaked_idx = [i for i, r in enumerate(corpus_rows) if r["leaked"]]
    results_strategies: dict[str, dict] = {}
    for name in [*rows, "oracle"]:
        if name == "oracle":
            full = oracle_picks(k_max, 0)
            emb = embed("oracle", [train_texts[i] for i in full])
        else:
            full = picks(name, k_max, 0)
            emb = embed(name, [corpus_rows[i]["text"] for i in full])
        per_k = {}
        for k in sizes.ks:
            values = [_read_json(evals / job_file(name, k, s))["value"]
                      for s in range(sizes.seeds)]
            entry = {**summarise(values), "ot": ot_distance(emb[:k], true_emb)}
            if name == "oracle":
                idx = oracle_picks(k, 0)
                if not lm:
                    entry["labels"] = distribution([train_labels[i] for i in idx], hidden.label_names)
            else:
                idx = picks(name, k, 0)
                entry["sources"] = distribution([corpus_rows[i]["source"] for i in idx])
                if not lm:
                    entry["labels"] = distribution(autolabels[idx].tolist(), hidden.label_names)
                    entry["label_confidence"] = float(confidence[idx].mean())
                if leaked_idx:
                    entry["leakage"] = leakage(idx, leaked_idx)
            per_k[str(k)] = entry
        results_strategies[name] = per_k
    stages.seconds["OT distances"] = round(time.perf_counter() - start, 1)

    oracle = results_strategies.pop("oracle")
    return {
        "task": hidden.task,
        "metric": "perplexity" if lm else "accuracy",
        "lower_is_better": lm,
        "sizes": sizes.to_dict(),
        "documents": {"seed_corpus": len(corpus_rows), "leaked": len(leaked_idx),
                      "train": len(train_texts), "test": len(test_texts)},
        "recipes": {str(k): recipe_for(sizes, k).to_dict() for k in sizes.ks},
        "select": {name or "main": {"folder": str(r.folder), "config": r.manifest["config"],
                                    "head_init": r.manifest.get("head_init"),
                                    "timings_s": r.manifest.get("timings_s")}
                   for name, r in runs.items()},
        "label_names": hidden.label_names,
        "true_labels": None if lm else distribution(train_labels, hidden.label_names),
        "base": base_value,
        "expert": expert_value,
        "strategies": results_strategies,
        "oracle": oracle,
        "timings_s": stages.seconds,
        "cached_stages": stages.cached,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "device": str(setup_for(main).pair.device)},
        "cache": str(work),
        "versions": output.versions(),
    }


def _work_key(hidden: Hidden, sizes: Sizes) -> dict:
    """What the cached expert, corpus and selections depend on (not K-list or seeds)."""
    return {"task": hidden.task, "train": fingerprint(hidden.train),
            "test": fingerprint(hidden.test), "seed_corpus": fingerprint(hidden.seed),
            "max_length": sizes.max_length, "checkpoints": sizes.checkpoints,
            "expert": [sizes.expert_epochs, sizes.expert_lr, sizes.batch_size],
            "leak": sizes.leak, "layers": sizes.layers, "seed": sizes.seed,
            "select_batch": sizes.select_batch_size}


def _leaked(hidden: Hidden, sizes: Sizes) -> list[dict]:
    if sizes.leak <= 0:
        return []
    n = int(round(sizes.leak * len(hidden.train)))
    idx = np.random.default_rng(sizes.seed + 1).choice(len(hidden.train), n, replace=False)
    return [hidden.train[i] for i in sorted(idx)]


def _train_expert(hidden: Hidden, sizes: Sizes, base_dir: Path, expert_dir: Path,
                  progress: bool) -> None:
    """θf = θ0 fine-tuned on the hidden training data with its true labels."""
    lm = hidden.task == "lm"
    cls = AutoModelForCausalLM if lm else AutoModelForSequenceClassification
    model = cls.from_pretrained(base_dir)
    tok = AutoTokenizer.from_pretrained(base_dir)
    framing = make_framing(hidden.task, tok, sizes.max_length, ModelConfig(str(base_dir), ""))
    texts = [r["text"] for r in hidden.train]
    labels = None if lm else [r["label"] for r in hidden.train]
    steps = max(1, math.ceil(sizes.expert_epochs * len(texts) / sizes.batch_size))
    train(model, framing, texts, labels,
          Recipe(steps=steps, lr=sizes.expert_lr, batch_size=sizes.batch_size, seed=sizes.seed),
          progress=progress)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)

    output.atomic_folder(expert_dir, write, overwrite=True)
