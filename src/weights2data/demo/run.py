"""The demo's one code path, for any task: prepare θ0, the expert θf and every `select` run
(prepare.py), judge every selection with the evaluation protocol (evaluation/protocol.py, the
same one `weights2data evaluate` uses), and collect what the report shows. Every finished
stage is cached under `cache/` so a second run only does what is missing."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import output
from ..evaluation import protocol
from ..evaluation.evaluate import Run
from ..evaluation.metrics import SentenceEncoder, distribution, leakage, ot_distance
from ..evaluation.protocol import fingerprint, write_atomic
from .prepare import Hidden, Prepared, prepare, select_stage, slug
from .sizes import Sizes

__all__ = ["Hidden", "run_demo"]

SNIPPET = 160  # characters of each first pick shown in the report
FIRST_PICKS = 5


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
        "select": {name or "main": _select_info(p, name) for name in runs},
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


def _select_info(p: Prepared, name: str) -> dict:
    """One select run: its options, the layers its gradients were taken of, and its timings
    (the manifest's per step; the stage's wall and CPU seconds when it ran in this process)."""
    r, stage = p.runs[name], select_stage(name, p.strategies)
    return {"folder": str(r.folder), "config": r.manifest["config"],
            "head_init": r.manifest.get("head_init"),
            "eligible_documents": r.manifest.get("eligible_documents"),
            "layers": [la["name"] for la in r.manifest.get("layers", [])],
            "timings_s": r.manifest.get("timings_s"),
            "stage_s": p.stages.seconds.get(stage), "stage_cpu_s": p.stages.cpu_seconds.get(stage)}


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
    # SELECT, the two references and the strongest baseline are trained first: an interrupted
    # run (resumed from the cache later) has the rows every comparison needs.
    first = [n for n in ("select", "random", "oracle", "topk-balanced") if n in p.names]
    order = first + [n for n in p.names if n not in first]
    jobs = [(name, k, 1.0) for k in p.sizes.ks for name in order]
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
