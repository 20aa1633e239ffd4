"""mixture.json, report.html (a bar chart per method) and a text table of a mixture estimate."""

from __future__ import annotations

import html
from pathlib import Path

from ..output import atomic_folder, check_destination, png_base64, versions, write_json

LABELS = {
    "adam": "Adam-aware fit (ours)",
    "gradient": "gradient NNLS (ours)",
    "select": "share of SELECT picks",
    "topk": "share of top-k picks",
    "loss": "mean loss drop",
}


def bar_chart_png(groups: list[str], series: dict[str, dict[str, float]],
                  errors: dict[str, tuple[dict, dict]] | None = None, title: str = "",
                  ylabel: str = "proportion") -> str:
    """A grouped bar chart (one group per domain, one bar per series) as base64 PNG.
    matplotlib is imported here only: nothing else in weights2data needs it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    errors = errors or {}
    x = np.arange(len(groups))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.3 * len(groups) * max(1, len(series)) / 2), 3.6))
    for k, (name, values) in enumerate(series.items()):
        y = [values.get(g, 0.0) for g in groups]
        err = None
        if name in errors and errors[name][0] is not None:
            lo, hi = errors[name]
            err = [[max(0.0, v - lo.get(g, v)) for g, v in zip(groups, y)],
                   [max(0.0, hi.get(g, v) - v) for g, v in zip(groups, y)]]
        ax.bar(x + (k - (len(series) - 1) / 2) * width, y, width, yerr=err, capsize=3, label=name)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    if title:
        ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_base64(fig)


def table(result) -> str:
    """Proportions per domain (rows) and method (columns), as plain text."""
    methods = list(result.estimates)
    names = list(result.estimates["gradient"].proportions)
    lines = [f"{'domain':<16}" + "".join(f"{m:>12}" for m in methods)]
    for d in names:
        cells = []
        for m in methods:
            e = result.estimates[m]
            cells.append(f"{e.proportions.get(d, 0.0):>12.3f}")
        lines.append(f"{d:<16}" + "".join(cells))
    a, g = result.estimates["adam"], result.estimates["gradient"]
    lines.append(f"headline method: {result.config.mixture.method}")
    lines.append(f"adam fit: cos(q, expected Adam update) = {a.extra['cosine']:.3f} at batch "
                 f"{a.extra['batch']:.3g}{' (fitted)' if a.extra['batch_fitted'] else ''}")
    lines.append(f"gradient fit explains {g.extra['explained']:.1%} of ‖q‖²"
                 + ("; an 'other' share was added" if g.extra["other_added"] else ""))
    if g.low is not None:
        lines.append(f"{g.extra['confidence']:.0%} bootstrap intervals (gradient): " + ", ".join(
            f"{d} [{g.low[d]:.3f}, {g.high[d]:.3f}]" for d in names))
    return "\n".join(lines)


def report_html(result) -> str:
    esc = html.escape
    a, g = result.estimates["adam"], result.estimates["gradient"]
    names = list(g.proportions)
    series = {LABELS.get(m, m): e.proportions for m, e in result.estimates.items()}
    chart = bar_chart_png(names, series, {LABELS["gradient"]: (g.low, g.high)},
                          f"proportions of {result.config.mixture.weighting}")
    rows = "".join(
        f"<tr><td>{esc(d)}</td><td>{result.documents.get(d, '')}</td>"
        + "".join(f"<td>{e.proportions.get(d, 0.0):.3f}</td>" for e in result.estimates.values())
        + (f"<td>[{g.low[d]:.3f}, {g.high[d]:.3f}]</td>" if g.low else "<td></td>") + "</tr>"
        for d in names)
    heads = "".join(f"<th>{esc(LABELS.get(m, m))}</th>" for m in result.estimates)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>weights2data mixture</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Which domains, in what proportions?</h1>
<p>base <code>{esc(result.config.model.base)}</code>, fine-tuned
<code>{esc(result.config.model.finetuned)}</code>, {sum(result.documents.values())} corpus
documents in {len(result.domains)} domains. Proportions are shares of
<b>{esc(result.config.mixture.weighting)}</b> the fine-tune trained on. Headline method:
<b>{esc(result.config.mixture.method)}</b>. The Adam-aware fit reaches cos(q, expected update) =
<b>{a.extra['cosine']:.3f}</b> at batch size {a.extra['batch']:.3g}
{"(fitted)" if a.extra['batch_fitted'] else "(given)"}. The gradient fit explains
<b>{g.extra['explained']:.1%}</b> of ‖θ0 − θf‖² of the last layer
{"(below the threshold: an <i>other</i> share was added)" if g.extra['other_added'] else ""};
intervals: {g.extra['confidence']:.0%} bootstrap over documents ({g.extra['bootstrap']} resamples).</p>
<p><img alt="proportions" src="data:image/png;base64,{chart}"></p>
<table><tr><th>domain</th><th>documents</th>{heads}<th>interval (gradient)</th></tr>{rows}</table>
</body></html>
"""


def write_output(result, out: str | Path, overwrite: bool = False) -> Path:
    """mixture.json, report.html, manifest.json, written atomically."""
    out = Path(out)
    check_destination(out, overwrite)

    def write(tmp: Path) -> None:
        write_json(tmp / "mixture.json", result.to_dict())
        (tmp / "report.html").write_text(report_html(result))
        write_json(tmp / "manifest.json", {"complete": True, "config": result.config.to_dict(),
                                           "versions": versions(), **result.info})

    atomic_folder(out, write, overwrite)
    return out
