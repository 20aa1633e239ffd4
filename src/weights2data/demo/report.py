"""The demo's outputs: the paper-style table (text) and a self-contained report.html with
matplotlib figures embedded as base64 PNGs."""

from __future__ import annotations

import base64
import html
import io
import json

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to PNG bytes
import matplotlib.pyplot as plt  # noqa: E402


def _rows(results: dict) -> list[tuple[str, dict]]:
    return [*results["strategies"].items(), ("oracle", results["oracle"])]


def table(results: dict) -> str:
    """Metric ± sd and OT distance per strategy and K, with base and expert."""
    ks = [str(k) for k in results["sizes"]["ks"]]
    acc = results["metric"] == "accuracy"
    unit = "accuracy %" if acc else "perplexity (lower is better)"
    conf_col = any("label_confidence" in e for _, per_k in results["strategies"].items()
                   for e in per_k.values())
    width = 37 if conf_col else 26
    name_w = max(26, *(len(n) + 2 for n, _ in _rows(results)))
    head = f"{'strategy':<{name_w}}" + "".join(f"{'K=' + k:>{width}}" for k in ks)
    lines = [f"{results['task']}: {unit} ± sd over {results['sizes']['seeds']} seed(s); "
             "OT = distance to the true training data (lower is closer)"
             + ("; conf = θf's mean probability of the autolabels trained on" if conf_col else ""),
             head]
    for name, per_k in _rows(results):
        cells = []
        for k in ks:
            e = per_k[k]
            conf = "" if not conf_col else (f"  conf {e['label_confidence']:.2f}"
                                            if "label_confidence" in e else "           ")
            cells.append(f"{e['mean']:6.1f} ± {e['sd']:4.1f}  OT {e['ot']:5.3f}{conf}")
        lines.append(f"{name:<{name_w}}" + "".join(f"{c:>{width}}" for c in cells))
    for name in ("expert", "base"):
        label = f"{name} ({'θf' if name == 'expert' else 'θ0'})"
        lines.append(f"{label:<{name_w}}" + f"{results[name]:6.1f}".ljust(width - 3).rjust(width))
    return "\n".join(lines)


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _by_strategy(results: dict) -> str:
    k = str(max(results["sizes"]["ks"]))
    rows = _rows(results)
    names = [n for n, _ in rows]
    means = [e[k]["mean"] for _, e in rows]
    sds = [e[k]["sd"] for _, e in rows]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#c44e52" if n == "select" else "#4c72b0" if n != "oracle" else "#55a868"
              for n in names]
    ax.bar(names, means, yerr=sds, color=colors, capsize=4)
    ax.axhline(results["expert"], ls="--", c="k", lw=1, label="expert θf")
    ax.axhline(results["base"], ls=":", c="grey", lw=1, label="base θ0")
    ax.set_ylabel(results["metric"])
    ax.set_title(f"{results['metric']} after retraining θ0 on each selection (K={k})")
    ax.legend(loc="best", fontsize=8)
    plt.setp(ax.get_xticklabels(), rotation=25, ha="right")
    return _png(fig)


def _by_k(results: dict) -> str:
    ks = results["sizes"]["ks"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for name, per_k in _rows(results):
        ax.errorbar(ks, [per_k[str(k)]["mean"] for k in ks], yerr=[per_k[str(k)]["sd"] for k in ks],
                    marker="o", capsize=3, label=name)
    ax.axhline(results["expert"], ls="--", c="k", lw=1, label="expert θf")
    ax.set_xscale("log")
    ax.set_xlabel("K (documents selected)")
    ax.set_ylabel(results["metric"])
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def _stacked(results: dict, field: str, title: str) -> str | None:
    k = str(max(results["sizes"]["ks"]))
    rows = [(n, e[k][field]) for n, e in _rows(results) if field in e[k]]
    if field == "labels" and results.get("true_labels"):
        rows.append(("true data", results["true_labels"]))
    if not rows:
        return None
    cats = sorted({c for _, d in rows for c in d})
    fig, ax = plt.subplots(figsize=(8, 3.6))
    left = [0.0] * len(rows)
    for c in cats:
        vals = [d.get(c, 0.0) for _, d in rows]
        ax.barh([n for n, _ in rows], vals, left=left, label=c)
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.set_title(f"{title} (K={k})")
    ax.legend(fontsize=8, bbox_to_anchor=(1.01, 1), loc="upper left")
    return _png(fig)


def write_html(results: dict, path) -> None:
    """A single HTML file: the table, the figures, the sizes and timings."""
    figures = [("Accuracy by strategy" if results["metric"] == "accuracy"
                else "Perplexity by strategy", _by_strategy(results))]
    if len(results["sizes"]["ks"]) > 1:
        figures.append((f"{results['metric'].capitalize()} against K", _by_k(results)))
    for field, title in (("sources", "Where each selection came from"),
                         ("labels", "Label distribution (autolabels; true labels for the oracle)")):
        png = _stacked(results, field, title)
        if png:
            figures.append((title, png))
    body = [f"<h1>weights2data demo: {html.escape(results['task'])}</h1>",
            "<p>θ0 is retrained on each selection with one fixed recipe; the expert θf is the "
            "model whose training data is being recovered; the oracle trains on K true training "
            "documents with their true labels.</p>",
            f"<pre>{html.escape(table(results))}</pre>"]
    for title, png in figures:
        body.append(f"<h2>{html.escape(title)}</h2><img alt='{html.escape(title)}' "
                    f"src='data:image/png;base64,{png}'>")
    details = {k: results[k] for k in ("sizes", "documents", "recipes", "timings_s",
                                       "cached_stages", "machine")}
    body.append(f"<h2>Sizes, recipe, timings</h2><pre>{html.escape(json.dumps(details, indent=2))}"
                "</pre>")
    path.write_text("<!doctype html><html><head><meta charset='utf-8'><title>weights2data demo"
                    "</title><style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
                    "pre{background:#f6f6f6;padding:1em;overflow:auto}</style></head><body>"
                    + "\n".join(body) + "</body></html>\n")
