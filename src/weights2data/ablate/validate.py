"""Validation: for a seeded sample of mixtures, train BASE on the union (same recipe, same
tokens) and correlate merged-proxy perplexity with trained perplexity across mixtures,
beside the naive proxy (mean of the unit models' own perplexities)."""

from __future__ import annotations

import html
import itertools
import json
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..config import UserError
from ..output import atomic_folder, check_destination, png_base64, versions, write_json
from .merge import merge_into
from .pool import Pool, train_union
from .score import EvalSet, mixture_name, perplexity, score_mixtures, write_table

PROXIES = ("merged", "naive")


def sample_mixtures(mixtures: list[tuple[str, ...]], n: int, seed: int = 0) -> list[tuple[str, ...]]:
    """A seeded sample of n candidate mixtures, spread evenly over their sizes."""
    if n < 1:
        raise UserError(f"--sample must be positive, got {n}")
    rng = random.Random(seed)
    by_size = {k: list(g) for k, g in itertools.groupby(sorted(mixtures, key=len), key=len)}
    for group in by_size.values():
        rng.shuffle(group)
    picked: list[tuple[str, ...]] = []
    while len(picked) < min(n, len(mixtures)):  # round-robin over sizes
        for group in by_size.values():
            if group and len(picked) < n:
                picked.append(group.pop())
    return picked


def correlations(proxy: list[float], trained: list[float]) -> dict[str, float | None]:
    """Pearson and Spearman correlation of two series (None when undefined: < 3 points or constant)."""
    x, y = np.asarray(proxy, float), np.asarray(trained, float)
    if len(x) != len(y):
        raise ValueError("series differ in length")
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"pearson": None, "pearson_p": None, "spearman": None, "spearman_p": None, "n": len(x)}
    from scipy import stats  # only where correlations are computed

    p = stats.pearsonr(x, y)
    s = stats.spearmanr(x, y)
    return {"pearson": float(p.statistic), "pearson_p": float(p.pvalue),
            "spearman": float(s.statistic), "spearman_p": float(s.pvalue), "n": len(x)}


@dataclass
class Validation:
    rows: list[dict]  # one per validated mixture: merged:/naive:/trained:<set>
    correlations: dict[str, dict[str, dict]]  # eval set -> proxy -> correlations
    base: dict[str, float]  # θ0 perplexity per eval set
    eval_sets: list[EvalSet]
    train_steps: int  # optimizer steps spent on the union models (new or reused)
    timings_s: dict[str, float]


def validate(pool: Pool, eval_sets: list[EvalSet], mixtures: list[tuple[str, ...]], device: str = "cpu",
             batch_size: int = 8, progress: bool = True, scores: list[dict] | None = None,
             model=None, tokenizer=None) -> Validation:
    """Train (or reuse) one union model per mixture and correlate it with both proxies.
    `scores`: rows of an earlier score_mixtures call over the same eval sets, reused when they
    cover these mixtures."""
    t0 = time.perf_counter()
    if model is None:
        model, tokenizer = pool.load_base(device)
    framing = pool.framing(tokenizer)
    base_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = {mixture_name(m) for m in mixtures}
    known = {r["mixture"]: r for r in scores or []}
    if not names <= known.keys() or "base" not in known:
        known = {r["mixture"]: r for r in score_mixtures(pool, mixtures, eval_sets, device, batch_size,
                                                           progress, model, tokenizer)}
    t_proxy = time.perf_counter()
    folders = []
    for mix in tqdm(mixtures, desc="union models", unit="model", disable=not progress):
        folders.append(train_union(pool, mix, model, base_state, framing, progress))
    t_train = time.perf_counter()
    rows = []
    try:
        for mix, folder in zip(mixtures, folders):
            merge_into(model, base_state, [folder / "delta.safetensors"], [1.0])
            proxy = known[mixture_name(mix)]
            row = {"mixture": mixture_name(mix), "size": len(mix)}
            # The protocol's rule: an under-trained union model must be visible.
            row["train_loss"] = json.loads((folder / "unit.json").read_text()).get(
                "final_train_loss", float("nan"))
            for e in eval_sets:
                row[f"merged:{e.name}"] = proxy[f"ppl:{e.name}"]
                row[f"naive:{e.name}"] = proxy[f"naive:{e.name}"]
                row[f"trained:{e.name}"] = perplexity(framing, model, e.texts, batch_size)
            rows.append(row)
    finally:
        model.load_state_dict(base_state)
    corr = {e.name: {p: correlations([r[f"{p}:{e.name}"] for r in rows],
                                     [r[f"trained:{e.name}"] for r in rows]) for p in PROXIES}
            for e in eval_sets}
    base = {e.name: known["base"][f"ppl:{e.name}"] for e in eval_sets}
    steps = pool.spec.recipe.steps * sum(len(m) for m in mixtures)
    timings = {"proxies": t_proxy - t0, "union_training": t_train - t_proxy,
               "union_eval": time.perf_counter() - t_train}
    return Validation(rows, corr, base, eval_sets, steps, {k: round(v, 1) for k, v in timings.items()})


def correlation_table(v: Validation) -> str:
    """Plain-text table: Pearson / Spearman per eval set and proxy."""
    def f(x):
        return "   n/a" if x is None else f"{x:+.3f}"

    lines = [f"{'eval set':<14}{'proxy':<8}{'pearson':>9}{'spearman':>10}   (n = {len(v.rows)} mixtures)"]
    for name, by_proxy in v.correlations.items():
        for p in PROXIES:
            c = by_proxy[p]
            lines.append(f"{name:<14}{p:<8}{f(c['pearson']):>9}{f(c['spearman']):>10}")
    return "\n".join(lines)


def _scatter_png(v: Validation) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(v.eval_sets)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4), squeeze=False)
    for ax, e in zip(axes[0], v.eval_sets):
        y = [r[f"trained:{e.name}"] for r in v.rows]
        for p, marker in zip(PROXIES, ("o", "x")):
            c = v.correlations[e.name][p]["spearman"]
            label = f"{p} proxy (ρ={c:+.2f})" if c is not None else f"{p} proxy"
            ax.scatter([r[f"{p}:{e.name}"] for r in v.rows], y, marker=marker, label=label)
        ax.set_title(f"{e.name} (θ0: {v.base[e.name]:.2f})")
        ax.set_xlabel("proxy perplexity")
        ax.set_ylabel("trained-on-union perplexity")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return png_base64(fig)


def report_html(v: Validation, title: str = "weights2data ablate: validation") -> str:
    """A self-contained page: correlations, the scatter plot, and the per-mixture table."""
    esc = html.escape
    corr = "".join(
        f"<tr><td>{esc(name)}</td><td>{p}</td>"
        + "".join(f"<td>{'n/a' if c[k] is None else f'{c[k]:+.3f}'}</td>"
                  for k in ("pearson", "pearson_p", "spearman", "spearman_p"))
        + "</tr>"
        for name, by_p in v.correlations.items() for p, c in by_p.items())
    cols = [k for k in v.rows[0] if k not in ("mixture", "size")]
    table = "".join(
        f"<tr><td>{esc(r['mixture'])}</td><td>{r['size']}</td>"
        + "".join(f"<td>{r[k]:.3f}</td>" for k in cols) + "</tr>" for r in v.rows)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>{esc(title)}</h1>
<p>{len(v.rows)} mixtures, each also trained on the union of its units (same recipe, same
tokens). Correlation across mixtures of proxy perplexity with trained perplexity.
<i>merged</i>: θ0 + token-weighted mean of the units' deltas; <i>naive</i>: mean of the unit
models' own perplexities.</p>
<table><tr><th>eval set</th><th>proxy</th><th>Pearson</th><th>p</th><th>Spearman</th><th>p</th></tr>
{corr}</table>
<p><img alt="scatter" src="data:image/png;base64,{_scatter_png(v)}"></p>
<table><tr><th>mixture</th><th>size</th>{''.join(f'<th>{esc(c)}</th>' for c in cols)}</tr>
{table}</table></body></html>
"""


def write_validation(out: str | Path, pool: Pool, v: Validation, overwrite: bool = False) -> Path:
    """validation.csv/.jsonl, correlations.json, report.html, manifest.json."""
    out = Path(out)
    check_destination(out, overwrite)

    def write(tmp: Path) -> None:
        write_table(v.rows, tmp, "validation")
        write_json(tmp / "correlations.json", v.correlations)
        (tmp / "report.html").write_text(report_html(v))
        write_json(tmp / "manifest.json", {
            "complete": True, "pool": str(pool.path.resolve()), "base_fingerprint": pool.base_fingerprint,
            "base_perplexity": v.base, "union_train_steps": v.train_steps, "timings_s": v.timings_s,
            "eval_sets": [{"name": e.name, "tokens": e.tokens, "fingerprint": e.fingerprint()}
                          for e in v.eval_sets],
            "versions": versions(),
        })

    atomic_folder(out, write, overwrite)
    return out
