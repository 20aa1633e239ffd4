"""The one evaluation protocol, shared by `weights2data evaluate`, the demo and its recipe
check: for each seed, a fresh copy of θ0 is trained on the documents of a selection
(autolabels for classification) with one fixed recipe, and judged on a test set and, when
given, a validation set. Random and the oracle are redrawn for every seed (`redrawn`); every
other strategy trains on the same documents at every seed (`fixed`)."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from transformers import PreTrainedModel

from ..checkpoints import CheckpointPair, load_pair
from ..config import SelectConfig
from ..framings import Framing, make_framing
from ..output import write_json
from ..pipeline import _init_head
from .metrics import accuracy, perplexity
from .train import Recipe, Schedule, train


@dataclass
class Setup:
    """θ0 exactly as `select` saw it (same seeded missing weights, same head init), θf, and
    the framing both are trained and judged with."""

    pair: CheckpointPair
    framing: Framing
    head_init: str | None
    key: str = ""  # names this θ0 in retraining caches

    @property
    def task(self) -> str:
        return self.pair.task

    @property
    def metric(self) -> str:
        return "perplexity" if self.task == "lm" else "accuracy"


def load_setup(cfg: SelectConfig) -> Setup:
    """Load the checkpoints of a `select` config; with --head-init zeros the head of the
    base that will be retrained starts from zeros too, as it did for the gradients."""
    pair = load_pair(cfg.model, seed=cfg.gradients.seed)
    framing = make_framing(pair.task, pair.tokenizer, cfg.corpus.max_length, cfg.model)
    head_init = _init_head(cfg, pair, framing)
    key = fingerprint([Path(cfg.model.base).name, cfg.model.gguf_file, head_init, pair.task,
                       cfg.corpus.max_length, cfg.gradients.seed])
    return Setup(pair, framing, head_init, key)


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass
class EvalSets:
    """Where a retrained model is judged: the test set, and the validation set that every
    tuned choice is made on (never the test set)."""

    test_texts: list[str]
    test_labels: list[int] | None = None
    val_texts: list[str] | None = None
    val_labels: list[int] | None = None

    def measure(self, setup: Setup, model: PreTrainedModel) -> dict[str, float]:
        out = {"test": measure(setup, model, self.test_texts, self.test_labels)}
        if self.val_texts:
            out["val"] = measure(setup, model, self.val_texts, self.val_labels)
        return out

    def fingerprint(self) -> str:
        return fingerprint([self.test_texts, self.test_labels, self.val_texts, self.val_labels])


def measure(setup: Setup, model: PreTrainedModel, texts: list[str], labels: list[int] | None,
            batch_size: int = 32) -> float:
    """Accuracy in % (classification) or perplexity (lm) of `model` on (texts, labels)."""
    if setup.task == "lm":
        return perplexity(setup.framing, model, texts, batch_size)
    return 100 * accuracy(setup.framing, model, texts, labels, batch_size)


def summarise(values: list[float]) -> dict:
    """Mean, sample sd (0 for one value), n and the values themselves."""
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": list(values)}


# A training set per seed: seed -> (texts, labels or None).
Draw = Callable[[int], tuple[list[str], list[int] | None]]


def redraw(n: int, k: int, seed: int) -> list[int]:
    """The random/oracle policy: the first k rows of a permutation of n seeded by `seed`, so a
    smaller K's draw is the start of a larger K's and every seed gets a new draw. Seed s gives
    the same rows as `select --strategy random --seed s`."""
    return np.random.default_rng(seed).permutation(n)[:k].tolist()


def fixed(texts: list[str], labels: Sequence[int] | None = None) -> Draw:
    """A selection: the same documents at every seed (only the training order changes)."""
    labels = None if labels is None else [int(x) for x in labels]
    return lambda seed: (list(texts), labels)


def redrawn(texts: list[str], labels: Sequence[int] | None, k: int,
            rows: Sequence[int] | None = None) -> Draw:
    """Random or the oracle: per seed, `redraw` over `rows` (default: every row)."""
    pool = list(range(len(texts))) if rows is None else list(rows)

    def draw(seed: int):
        idx = [pool[i] for i in redraw(len(pool), min(k, len(pool)), seed)]
        return [texts[i] for i in idx], None if labels is None else [int(labels[i]) for i in idx]

    return draw


def train_and_measure(setup: Setup, texts: list[str], labels: list[int] | None, recipe: Recipe,
                      sets: EvalSets, progress: bool = False) -> dict:
    """One seed: copy θ0, train it with `recipe`, measure; the final training loss is kept so
    an under-trained run is visible."""
    if setup.task != "lm" and labels is None:
        raise ValueError("classification retraining needs labels")
    model = copy.deepcopy(setup.pair.base)
    log = train(model, setup.framing, texts, None if setup.task == "lm" else labels, recipe,
                progress=progress)
    out = {**sets.measure(setup, model), "train_loss": log.final_loss, "steps": recipe.steps}
    del model
    return out


def evaluate(setup: Setup, draw: Draw, k: int, schedule: Schedule, seeds: Sequence[int],
             sets: EvalSets, cache: str | Path | None = None, progress: bool = False,
             wait: bool = True) -> dict | None:
    """The protocol for one row (a strategy at one K): per seed, train a fresh θ0 on
    `draw(seed)` with `schedule`'s recipe for its size, measure test (and validation).

    With `cache`, each seed's result is stored under a fingerprint of θ0, the recipe, the
    exact training set and the evaluation sets, so it can never belong to another selection
    and an interrupted run resumes where it stopped. Several processes may share one cache: a
    seed another live process is computing is left to it; with `wait=False` the call then
    returns None instead of waiting for it. Returns the test metric's mean, sd, n and per-seed
    values, the same for validation (`val`), the final training losses and the recipe."""
    if not seeds:
        raise ValueError("the protocol needs at least one seed")
    runs: dict[int, dict] = {}
    while True:
        busy = False
        for seed in seeds:
            if seed in runs:
                continue
            texts, labels = draw(seed)
            recipe = schedule.recipe(len(texts), seed)
            if cache is None:
                runs[seed] = train_and_measure(setup, texts, labels, recipe, sets, progress)
                continue
            key = fingerprint([setup.key, recipe.to_dict(), texts, labels, sets.fingerprint()])
            path = Path(cache) / f"{key}.json"
            def work(path=path, texts=texts, labels=labels, recipe=recipe) -> None:
                write_atomic(path, train_and_measure(setup, texts, labels, recipe, sets, progress))

            if compute_once(path, path.is_file, work):
                runs[seed] = json.loads(path.read_text())
            else:
                busy = True
        if not busy:
            break
        if not wait:
            return None
        time.sleep(2)
    ordered = [runs[s] for s in seeds]
    out = {"metric": setup.metric, "k": k, **summarise([r["test"] for r in ordered]),
           "seeds": list(seeds),
           "recipe": {**schedule.recipe(k).to_dict(), "steps": ordered[0]["steps"], "seed": None},
           "train_loss": summarise([r["train_loss"] for r in ordered])}
    if all("val" in r for r in ordered):
        out["val"] = summarise([r["val"] for r in ordered])
    return out


def _lock(path: Path) -> Path:
    return path.with_name(f".{path.name}.lock")


def compute_once(path: Path, done: Callable[[], bool], work: Callable[[], None]) -> bool:
    """Run `work` (which writes the cached result at `path`) unless `done()`, holding `path`'s
    lock, so that processes sharing a cache never compute one result twice. True: the result
    is there; False: a live process is computing it (come back later)."""
    if done():
        return True
    if not _claim(path):
        return False
    try:
        if not done():  # finished by another process since we looked
            work()
    finally:
        _lock(path).unlink(missing_ok=True)
    return True


def _claim(path: Path) -> bool:
    """Take the lock of a cached result (True), unless a live process holds it (False); a lock
    left by a process that died is taken over."""
    lock = _lock(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or 0)
                os.kill(pid, 0)
                return False  # alive (or not ours to signal): its owner will finish it
            except ProcessLookupError:
                lock.unlink(missing_ok=True)  # its owner died: take it over
                continue
            except (ValueError, FileNotFoundError):
                return False  # being written or just released: look again later
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def write_atomic(path: str | Path, obj) -> Path:
    """Write JSON through a temporary file renamed into place: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    write_json(tmp, obj)
    os.replace(tmp, path)
    return path
