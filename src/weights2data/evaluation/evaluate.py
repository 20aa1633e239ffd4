"""`evaluate`: retrain θ0 on each selection of a finished `select` run with the evaluation
protocol (protocol.py) and report the task metric on a test (and validation) set, with
label/source distributions, leakage and (given the true data) the OT distance and the oracle."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import UserError
from ..corpus import load_corpus
from ..output import MANIFEST, versions
from ..pipeline import make_config
from . import protocol
from .metrics import SentenceEncoder, distribution, leakage, ot_distance
from .protocol import EvalSets, Setup, fixed, load_setup, redraw, redrawn
from .train import Schedule


@dataclass
class Run:
    """A finished `select` output folder."""

    folder: Path
    manifest: dict
    selections: dict[str, list[dict]]  # strategy -> rows of selected-<strategy>.jsonl

    @property
    def label_names(self) -> list[str] | None:
        return self.manifest.get("label_names")

    def config(self, **overrides):
        """The run's SelectConfig, rebuilt from manifest.json."""
        c = self.manifest["config"]
        flat = {**c["model"], **c["corpus"], **c["gradients"], **c["selection"]}
        flat.pop("path")
        flat.update(overrides)
        return make_config(corpus=c["corpus"]["path"], **flat)


def load_run(folder: str | Path) -> Run:
    folder = Path(folder)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise UserError(f"{folder} is not a finished select run (no {MANIFEST})")
    manifest = json.loads(manifest_path.read_text())
    selections = {}
    for name in manifest.get("strategies", {}):
        path = folder / f"selected-{name}.jsonl"
        if not path.is_file():
            raise UserError(f"{folder} lacks {path.name}, named in its manifest")
        selections[name] = [json.loads(line) for line in path.read_text().splitlines() if line]
    return Run(folder, manifest, selections)


def read_labelled(path: str | Path, text_column: str, label_column: str | None,
                  label_names: list[str] | None) -> tuple[list[str], list[int] | None]:
    """Texts and class indices of a labelled file; names map through `label_names`."""
    ds = load_corpus(path, text_column)
    texts = list(ds[text_column])
    if label_column is None:
        return texts, None
    if label_column not in ds.column_names:
        raise UserError(f"{path} has no label column {label_column!r}; pass --label-column")
    return texts, to_indices(list(ds[label_column]), label_names, str(path))


def to_indices(values: list, label_names: list[str] | None, where: str) -> list[int]:
    out = []
    for i, v in enumerate(values):
        if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            idx = int(v)
        elif label_names is not None and str(v) in label_names:
            idx = label_names.index(str(v))
        else:
            known = ", ".join(label_names) if label_names else "none known; pass --labels"
            raise UserError(f"{where} row {i}: label {v!r} is not a class (classes: {known})")
        if label_names is not None and not 0 <= idx < len(label_names):
            raise UserError(f"{where} row {i}: label {idx} is out of range 0..{len(label_names) - 1}")
        out.append(idx)
    return out


def eligible_rows(run: Run) -> list[int] | None:
    """The rows every strategy of the run could pick from (None: all), from scores.parquet."""
    q = run.manifest["config"]["selection"].get("confidence_quantile", 0.0)
    if not q:
        return None
    import pyarrow.parquet as pq

    from ..selection import confident_rows

    scores = pq.read_table(run.folder / "scores.parquet", columns=["autolabel", "loss_finetuned"])
    keep = confident_rows(scores.column("loss_finetuned").to_numpy(),
                          scores.column("autolabel").to_numpy(), q)
    return np.flatnonzero(keep).tolist()


def evaluate_run(
    run: Run,
    sets: EvalSets,
    schedule: Schedule,
    seeds: list[int],
    strategies: list[str] | None = None,
    true_texts: list[str] | None = None,
    true_labels: list[int] | None = None,
    leaked_column: str = "leaked",
    source_column: str = "source",
    setup: Setup | None = None,
    encoder: SentenceEncoder | None = None,
    progress: bool = True,
) -> dict:
    """Retrain θ0 on every selection (autolabels for classification, text for lm) with the
    protocol (protocol.evaluate) and report the metric, plus base/expert, distributions,
    leakage, OT distance and the oracle. Random and the oracle are redrawn for every seed."""
    strategies = strategies or list(run.selections)
    missing = [s for s in strategies if s not in run.selections]
    if missing:
        raise UserError(f"{run.folder} has no selection for strategy {missing[0]!r}")
    setup = setup or load_setup(run.config())
    lm = setup.task == "lm"
    if not lm and (sets.test_labels is None or (sets.val_texts and sets.val_labels is None)):
        raise UserError("a classification test or validation set needs a label column")
    names = run.label_names
    cfg = run.config()
    corpus = load_corpus(cfg.corpus.path, cfg.corpus.text_column)
    corpus_texts = list(corpus[cfg.corpus.text_column])
    sources = list(corpus[source_column]) if source_column in corpus.column_names else None
    leaked = ([i for i, x in enumerate(corpus[leaked_column]) if x]
              if leaked_column in corpus.column_names else None)
    true_emb = None
    if true_texts is not None:
        encoder = encoder or SentenceEncoder(device=setup.pair.device)
        true_emb = encoder(true_texts, progress=progress)
    k = len(run.selections[strategies[0]])
    results: dict = {
        "run": str(run.folder), "task": setup.task, "metric": setup.metric,
        "schedule": schedule.to_dict(), "recipe": schedule.recipe(k).to_dict(),
        "max_length": setup.framing.max_length, "seeds": list(seeds), "head_init": setup.head_init,
        "test_documents": len(sets.test_texts), "val_documents": len(sets.val_texts or []),
        "base": sets.measure(setup, setup.pair.base),
        "expert": sets.measure(setup, setup.pair.finetuned),
        "strategies": {}, "versions": versions(),
    }
    # Every document's autolabel (scores.parquet), so a redrawn random set has labels too.
    autolabel = None if lm else _all_autolabels(run)
    for name in strategies:
        rows = run.selections[name]
        index = [r["index"] for r in rows]
        if name == "random":  # redrawn for every seed, among the rows the run could pick from
            pool = eligible_rows(run) or list(range(len(corpus_texts)))
            draw = redrawn(corpus_texts, autolabel, len(rows), pool)
            index = [pool[i] for i in redraw(len(pool), len(rows), seeds[0])]
        else:
            draw = fixed([corpus_texts[i] for i in index],
                         None if lm else autolabel[index].tolist())
        entry = protocol.evaluate(setup, draw, len(rows), schedule, seeds, sets, progress=progress)
        texts, labels = draw(seeds[0])
        entry["k"] = len(rows)
        if labels is not None:
            entry["labels"] = distribution(labels, names)
        if sources is not None:
            entry["sources"] = distribution([sources[i] for i in index])
        if leaked is not None:
            entry["leakage"] = leakage(index, leaked)
        if true_emb is not None:
            entry["ot"] = ot_distance(encoder(texts), true_emb)
        results["strategies"][name] = entry
    if true_texts is not None:
        if not lm and true_labels is None:
            raise UserError("the oracle needs the true data's labels (a label column)")
        results["oracle"] = protocol.evaluate(setup, redrawn(true_texts, true_labels, k), k,
                                              schedule, seeds, sets, progress=progress)
    return results


def _all_autolabels(run: Run) -> np.ndarray:
    import pyarrow.parquet as pq

    return pq.read_table(run.folder / "scores.parquet", columns=["autolabel"]).column(
        "autolabel").to_numpy()


def write_results(results: dict, path: str | Path) -> Path:
    """Write results.json atomically (a temporary file renamed into place)."""
    return protocol.write_atomic(path, results)
