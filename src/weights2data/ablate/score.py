"""Scoring mixtures: the perplexity of each mixture's merged model on each eval set.

Perplexity = exp(token-weighted mean next-token loss), with the `lm` framing's loss.
Every unit in a scored mixture is also evaluated alone, which gives the naive proxy
(the mean of the unit models' own perplexities) beside the merged one.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..config import UserError
from ..corpus import load_corpus
from ..evaluation.metrics import perplexity
from ..framings import LanguageModel
from ..output import atomic_folder, check_destination, versions, write_json
from .merge import merge_units
from .pool import Pool


@dataclass
class EvalSet:
    name: str
    texts: list[str]
    tokens: int  # predicted tokens (what perplexity averages over)
    source: str

    def fingerprint(self) -> str:
        return hashlib.sha256("\0".join(self.texts).encode()).hexdigest()


def load_eval_sets(specs: list[str], framing: LanguageModel, text_column: str = "text",
                   limit: int | None = None) -> list[EvalSet]:
    """Parse `name=path` specs and refuse eval sets with nothing to predict."""
    if not specs:
        raise UserError("give at least one --eval NAME=PATH")
    sets: list[EvalSet] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise UserError(f"--eval {spec!r}: expected NAME=PATH")
        if any(s.name == name for s in sets):
            raise UserError(f"--eval {name!r} is given twice")
        texts = list(load_corpus(path, text_column, limit)[text_column])
        sets.append(make_eval_set(name, texts, framing, path))
    return sets


def make_eval_set(name: str, texts: list[str], framing: LanguageModel, source: str = "") -> EvalSet:
    tokens = sum(max(n - 1, 0) for n in framing.token_counts(texts)) if texts else 0
    if tokens == 0:
        raise UserError(f"eval set {name!r} has no tokens to predict (every document needs at least 2)")
    return EvalSet(name, texts, tokens, source)


def mixture_name(units) -> str:
    return "+".join(units)


def parse_mixtures(spec: str, pool: Pool) -> list[tuple[str, ...]]:
    """`size=2,3`: every combination of the pool's units of those sizes; otherwise a file with
    one mixture a line, units (or partition names, meaning all their units) joined by '+'."""
    ids = sorted(pool.units)
    if not ids:
        raise UserError(f"pool {pool.path} holds no finished units")
    if spec.startswith("size="):
        try:
            sizes = sorted({int(s) for s in spec[5:].split(",") if s.strip()})
        except ValueError:
            raise UserError(f"--mixtures {spec!r}: sizes must be integers, e.g. size=2,3") from None
        if not sizes or min(sizes) < 1 or max(sizes) > len(ids):
            raise UserError(f"--mixtures {spec!r}: sizes must lie in 1..{len(ids)} (the pool's units)")
        return [c for k in sizes for c in itertools.combinations(ids, k)]
    path = Path(spec)
    if not path.is_file():
        raise UserError(f"--mixtures {spec!r}: neither size=K[,K...] nor a file")
    by_partition: dict[str, list[str]] = {}
    for uid, u in pool.units.items():
        by_partition.setdefault(u["partition"], []).append(uid)
    mixtures: list[tuple[str, ...]] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        names = [s.strip() for s in line.replace(",", "+").split("+") if s.strip()]
        if not names or line.lstrip().startswith("#"):
            continue
        units: set[str] = set()
        for name in names:
            if name in pool.units:
                units.add(name)
            elif name in by_partition:
                units.update(by_partition[name])
            else:
                raise UserError(f"{path} line {n}: {name!r} is neither a unit nor a partition of the pool")
        mix = tuple(sorted(units))
        if mix not in mixtures:
            mixtures.append(mix)
    if not mixtures:
        raise UserError(f"{path} lists no mixtures")
    return mixtures


def score_mixtures(pool: Pool, mixtures: list[tuple[str, ...]], eval_sets: list[EvalSet],
                   device: str = "cpu", batch_size: int = 8, progress: bool = True,
                   model=None, tokenizer=None) -> list[dict]:
    """Rows for θ0, each unit used, and each mixture: perplexity per eval set
    (`ppl:<set>`), and for mixtures the naive proxy (`naive:<set>`)."""
    if model is None:
        model, tokenizer = pool.load_base(device)
    framing = pool.framing(tokenizer)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def evaluate() -> dict[str, float]:
        return {f"ppl:{e.name}": perplexity(framing, model, e.texts, batch_size) for e in eval_sets}

    rows = [{"mixture": "base", "kind": "base", "size": 0, "tokens": 0, **evaluate()}]
    used = sorted({u for m in mixtures for u in m})
    single: dict[str, dict] = {}
    bar = tqdm(total=len(used) + len(mixtures), desc="score", unit="model", disable=not progress)
    try:
        for uid in used:
            merge_units(model, base_state, pool, [uid])
            single[uid] = evaluate()
            rows.append({"mixture": uid, "kind": "unit", "size": 1, "tokens": pool.tokens(uid),
                         **single[uid]})
            bar.update()
        for mix in mixtures:
            merge_units(model, base_state, pool, list(mix))
            row = {"mixture": mixture_name(mix), "kind": "mixture", "size": len(mix),
                   "tokens": sum(pool.tokens(u) for u in mix), **evaluate()}
            for e in eval_sets:
                row[f"naive:{e.name}"] = sum(single[u][f"ppl:{e.name}"] for u in mix) / len(mix)
            rows.append(row)
            bar.update()
    finally:
        bar.close()
        model.load_state_dict(base_state)
    return rows


def ranking(rows: list[dict], eval_sets: list[EvalSet]) -> dict[str, list[dict]]:
    """Mixtures from best (lowest merged perplexity) to worst, per eval set."""
    mixes = [r for r in rows if r["kind"] == "mixture"]
    return {e.name: [{"mixture": r["mixture"], "ppl": r[f"ppl:{e.name}"]}
                     for r in sorted(mixes, key=lambda r: r[f"ppl:{e.name}"])] for e in eval_sets}


def write_table(rows: list[dict], folder: Path, stem: str) -> None:
    """<stem>.csv and <stem>.jsonl with one column per key seen in any row."""
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(folder / f"{stem}.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    with open(folder / f"{stem}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)


def write_scores(out: str | Path, pool: Pool, rows: list[dict], eval_sets: list[EvalSet],
                 seconds: float, overwrite: bool = False, top: int = 10) -> Path:
    """scores.csv/.jsonl, ranking.json (all), ranking.md (top per eval set), manifest.json."""
    out = Path(out)
    check_destination(out, overwrite)
    ranked = ranking(rows, eval_sets)

    def write(tmp: Path) -> None:
        write_table(rows, tmp, "scores")
        write_json(tmp / "ranking.json", ranked)
        base = rows[0]
        lines = ["# Best mixtures per eval set (merged-model perplexity, lower is better)", ""]
        for e in eval_sets:
            lines += [f"## {e.name}  ({e.tokens} tokens; base θ0: {base[f'ppl:{e.name}']:.3f})", "",
                      "| rank | mixture | perplexity |", "|---:|---|---:|"]
            lines += [f"| {i + 1} | {r['mixture']} | {r['ppl']:.3f} |"
                      for i, r in enumerate(ranked[e.name][:top])]
            lines.append("")
        (tmp / "ranking.md").write_text("\n".join(lines))
        write_json(tmp / "manifest.json", {
            "complete": True, "pool": str(pool.path.resolve()), "base_fingerprint": pool.base_fingerprint,
            "eval_sets": [{"name": e.name, "source": e.source, "documents": len(e.texts),
                           "tokens": e.tokens, "fingerprint": e.fingerprint()} for e in eval_sets],
            "mixtures": sum(r["kind"] == "mixture" for r in rows), "seconds": round(seconds, 1),
            "versions": versions(),
        })

    atomic_folder(out, write, overwrite)
    return out


def timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - t0
