"""The demo's outputs: a text table for the terminal and a self-contained report.html (HTML
tables, matplotlib figures embedded as base64 PNGs)."""

from __future__ import annotations

import html

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to PNG bytes
import matplotlib.pyplot as plt  # noqa: E402

from ..output import png_base64  # noqa: E402
from .recipe_check import summary, tau_text  # noqa: E402

esc = html.escape


def _rows(results: dict) -> list[tuple[str, dict]]:
    return [*results["strategies"].items(), ("oracle", results["oracle"])]


def _ks(results: dict) -> list[str]:
    return [str(k) for k in results["sizes"]["ks"]]


def _unit(results: dict) -> str:
    return "accuracy %" if results["metric"] == "accuracy" else "perplexity (lower is better)"


def _n(results: dict) -> int:
    return len(results["seeds"])


def _ms(e: dict, digits: int = 1) -> str:
    return f"{e['mean']:.{digits}f} ± {e['sd']:.{digits}f}"


def _digits(results: dict) -> int:
    return 1 if results["metric"] == "accuracy" else 2


def table(results: dict) -> str:
    """Test metric mean ± sd per strategy and K, with the final training loss, base, expert."""
    ks, d = _ks(results), _digits(results)
    name_w = max(26, *(len(n) + 2 for n, _ in _rows(results)))
    cell_w = 28
    lines = [f"{results.get('name') or results['task']}{_lora_note(results)}: {_unit(results)} on "
             f"the test split, mean ± sd over n = {_n(results)} seeds; loss = final training loss",
             f"{'strategy':<{name_w}}" + "".join(f"{'K=' + k:>{cell_w}}" for k in ks)]
    for name, per_k in _rows(results):
        cells = [f"{_ms(per_k[k], d)}  loss {per_k[k]['train_loss']['mean']:.3f}" for k in ks]
        lines.append(f"{name:<{name_w}}" + "".join(f"{c:>{cell_w}}" for c in cells))
    for name in ("expert", "base"):
        label = f"{name} ({'θf' if name == 'expert' else 'θ0'})"
        lines.append(f"{label:<{name_w}}" + f"{results[name]['test']:.{d}f}".rjust(cell_w))
    if heal := _healing(results):
        lines.append(heal)
    if results.get("recipe_check"):
        lines.append(summary(results["recipe_check"]))
    for name, run in _select_runs(results):
        lines.append(f"select run {name}: {run['layer_count']} layer(s) ({run['layers']}), "
                     f"extraction {_fmt(run['extract_s'])} s, whole run {_fmt(run['total_s'])} s")
    return "\n".join(lines)


def _healing(results: dict) -> str | None:
    """lm: how far healing brought the truncated base, on held-out seed text (not the task)."""
    b = results.get("base_model") or {}
    ppl = b.get("heldout_seed_perplexity")
    if not ppl:
        return None
    return (f"base θ0: the first {b['layers_kept']} of {b['layers_total']} layers, healed "
            f"{b['heal_recipe']['steps']} steps on seed-source text; perplexity on "
            f"{b['heldout_seed_documents']} held-out seed documents {ppl['before_healing']:.3g} "
            f"before healing, {ppl['after_healing']:.1f} after")


def _extraction(timings: dict) -> float | None:
    if "store" in timings:
        return timings["store"]
    parts = [timings[k] for k in ("autolabel", "gradients") if k in timings]
    return round(sum(parts), 1) if parts else None


def _lora_note(results: dict) -> str:
    lora = results["sizes"].get("lora")
    if not lora:
        return ""
    return f" (LoRA: r = {lora['r']} on {'/'.join(lora['targets'])}, head frozen)"


def _select_runs(results: dict) -> list[tuple[str, dict]]:
    """Each select run's layers and extraction time: autolabels and gradients at every
    checkpoint (the manifest's `store` step, or `autolabel` + `gradients` without a store)."""
    from ..gradients.layers import fold_names

    out = []
    for name, info in results.get("select", {}).items():
        timings = info.get("timings_s") or {}
        layers = info.get("layers") or []
        out.append((name, {"layer_count": len(layers), "layers": fold_names(layers, most=4),
                           "extract_s": _extraction(timings),
                           "total_s": round(sum(timings.values()), 1) if timings else None}))
    return out


def _color(name: str) -> str:
    return "#c44e52" if name.startswith("select") else "#55a868" if name == "oracle" else "#4c72b0"


def _bars(results: dict, k: str) -> str:
    """Mean ± sd per row at one K, with every seed's value as a point."""
    rows = _rows(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(rows)), 3.6))
    x = list(range(len(rows)))
    ax.bar(x, [e[k]["mean"] for _, e in rows], yerr=[e[k]["sd"] for _, e in rows],
           color=[_color(n) for n, _ in rows], capsize=4, alpha=0.8)
    for i, (_, e) in enumerate(rows):
        vals = e[k]["values"]
        ax.scatter([i + 0.12 * (j - (len(vals) - 1) / 2) for j in range(len(vals))], vals,
                   color="k", s=12, zorder=3)
    ax.axhline(results["expert"]["test"], ls="--", c="k", lw=1, label="expert θf")
    ax.axhline(results["base"]["test"], ls=":", c="grey", lw=1, label="base θ0")
    if results["lower_is_better"]:
        ax.set_yscale("log")
    ax.set_xticks(x, [n for n, _ in rows], rotation=25, ha="right")
    ax.set_ylabel(results["metric"])
    ax.set_title(f"K = {k}: bars mean ± sd, points the {_n(results)} seeds")
    ax.legend(loc="best", fontsize=8)
    return png_base64(fig)


def _by_k(results: dict) -> str:
    ks = results["sizes"]["ks"]
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for name, per_k in _rows(results):
        ax.errorbar(ks, [per_k[str(k)]["mean"] for k in ks], yerr=[per_k[str(k)]["sd"] for k in ks],
                    marker="o", capsize=3, label=name)
    ax.axhline(results["expert"]["test"], ls="--", c="k", lw=1, label="expert θf")
    ax.set_xscale("log")
    if results["lower_is_better"]:
        ax.set_yscale("log")
    ax.set_xlabel("K (documents selected)")
    ax.set_ylabel(results["metric"])
    ax.legend(fontsize=7, ncol=2)
    return png_base64(fig)


def _curves(results: dict) -> str | None:
    """cos(S, q) after each greedy pick, one line per SELECT run, the grid's K marked."""
    curves = results.get("curves") or {}
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 3.6))
    for name, c in curves.items():
        ax.plot(range(1, len(c) + 1), c, label=name, lw=1.5 if name == "select" else 1)
    for k in results["sizes"]["ks"]:
        ax.axvline(k, c="grey", lw=0.6, ls=":")
    ax.set_xlabel("picks")
    ax.set_ylabel("cos(S, q)")
    ax.legend(fontsize=7)
    return png_base64(fig)


def _stacked(results: dict, field: str, k: str) -> str | None:
    rows = [(n, e[k][field]) for n, e in _rows(results) if field in e[k]]
    if field == "labels" and results.get("true_labels"):
        rows.append(("true data", results["true_labels"]))
    if not rows:
        return None
    cats = sorted({c for _, d in rows for c in d})
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1.2))
    left = [0.0] * len(rows)
    cmap = plt.get_cmap("tab20")
    for i, c in enumerate(cats):
        vals = [d.get(c, 0.0) for _, d in rows]
        ax.barh([n for n, _ in rows], vals, left=left, label=c, color=cmap(i % 20))
        left = [a + b for a, b in zip(left, vals)]
    ax.set_xlim(0, 1)
    ax.invert_yaxis()
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    return png_base64(fig)


def _html_table(head: list[str], rows: list[list], cls: str = "") -> str:
    h = "".join(f"<th>{esc(str(c))}</th>" for c in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table class='{cls}'><tr>{h}</tr>{body}</table>"


def _kv(d: dict) -> str:
    return _html_table(["", ""], [[esc(str(k)), esc(_fmt(v))] for k, v in d.items()], "kv")


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_fmt(x)}" for k, x in v.items()) or "—"
    if isinstance(v, list):
        return ", ".join(_fmt(x) for x in v) or "—"
    return "—" if v is None else str(v)


def _results_table(results: dict) -> str:
    ks, d = _ks(results), _digits(results)
    head = ["strategy"]
    for k in ks:
        head += [f"K={k} test", f"K={k} validation", f"K={k} train loss"]
    head += [f"OT (K={ks[-1]})"]
    conf = any("label_confidence" in e[ks[-1]] for _, e in _rows(results))
    if conf:
        head.append(f"θf conf (K={ks[-1]})")
    rows = []
    for name, per_k in _rows(results):
        r = [esc(name)]
        for k in ks:
            e = per_k[k]
            r += [_ms(e, d), _ms(e["val"], d) if "val" in e else "—",
                  f"{e['train_loss']['mean']:.3f} ± {e['train_loss']['sd']:.3f}"]
        r.append(f"{per_k[ks[-1]]['ot']:.3f}")
        if conf:
            c = per_k[ks[-1]].get("label_confidence")
            r.append("—" if c is None else f"{c:.2f}")
        rows.append(r)
    for name in ("expert", "base"):
        v = results[name]
        r = [f"{name} ({'θf' if name == 'expert' else 'θ0'})"]
        r += [f"{v['test']:.{d}f}", f"{v['val']:.{d}f}" if "val" in v else "—", ""] + [""] * (
            3 * (len(ks) - 1)) + [""] + ([""] if conf else [])
        rows.append(r)
    return _html_table(head, rows, "results")


def _recipe_tables(results: dict) -> str:
    steps = _html_table(["K"] + _ks(results),
                        [["steps"] + [str(results["recipes"][k]["steps"]) for k in _ks(results)]])
    sizes = {k: v for k, v in results["sizes"].items() if k != "variants"}
    parts = ["<h3>Retraining recipe (the same for every row)</h3>", _kv(results["schedule"]), steps,
             "<h3>Documents</h3>", _kv(results["documents"]),
             "<h3>Sizes</h3>", _kv(sizes)]
    if results["sizes"].get("variants"):
        parts += ["<h3>SELECT variants</h3>", _kv(results["sizes"]["variants"])]
    if results.get("base_model"):
        parts += ["<h3>Base model θ0</h3>", _kv(results["base_model"])]
    runs = [[esc(n), str(r["layer_count"]), esc(r["layers"]), esc(_fmt(r["extract_s"])),
             esc(_fmt(r["total_s"]))] for n, r in _select_runs(results)]
    parts += ["<h3>SELECT runs: layers and extraction time (s)</h3>",
              _html_table(["run", "layers", "which", "extraction", "whole run"], runs)]
    parts += ["<h3>Timings (s)</h3>", _kv(results["timings_s"]),
              "<h3>Machine</h3>", _kv(results["machine"])]
    return "\n".join(parts)


def _first_picks(results: dict) -> str:
    parts = []
    for name, picks in results.get("first_picks", {}).items():
        rows = [[str(p["rank"]), esc(p["source"]), esc(p.get("label") or ""),
                 esc(p["text"]) + ("…" if len(p["text"]) >= 160 else "")] for p in picks]
        parts.append(f"<h3>{esc(name)}</h3>" + _html_table(["#", "source", "label", "text"], rows,
                                                           "picks"))
    return "\n".join(parts)


def _recipe_check(check: dict) -> str:
    budgets = list(check["budgets"])
    names = list(check["budgets"]["1"]["mean"])
    head = ["strategy"] + [f"×{f} ({check['budgets'][f]['steps']} steps)" for f in budgets]
    rows = [[esc(n)] + [f"{check['budgets'][f]['mean'][n]:.2f} ± {check['budgets'][f]['sd'][n]:.2f}"
                        f" (loss {check['budgets'][f]['train_loss'][n]:.3f})" for f in budgets]
            for n in names]
    taus = ", ".join(f"×{f}: {tau_text(t)}" for f, t in check["kendall_tau"].items())
    verdict = ("Every conclusion holds." if check["holds"] else
               "These conclusions flip with the recipe: " + "; ".join(map(esc, check["flips"])))
    return (f"<p>K = {check['k']}, n = {check['budgets']['1']['n']} seeds. Kendall τ against the "
            f"recipe's ranking: {taus}. {verdict}</p>" + _html_table(head, rows, "results"))


def write_html(results: dict, path) -> None:
    """A single HTML file: tables, figures, recipe, first picks."""
    ks = _ks(results)
    name = results.get("name") or results["task"]
    body = [f"<h1>weights2data demo: {esc(name + _lora_note(results))}</h1>",
            "<p>θ0 is retrained on each selection with one fixed recipe (the same for every row); "
            "the expert θf is the model whose training data is being recovered; the oracle "
            "trains on K true training documents with their true labels. Random and the oracle "
            "draw new documents for every seed. Choices are made on the validation column; the "
            "test column is reported.</p>",
            f"<h2>Results: {esc(_unit(results))}, mean ± sd over n = {_n(results)} seeds</h2>",
            _results_table(results)]
    if heal := _healing(results):
        body.append(f"<p>{esc(heal)}</p>")
    if results.get("recipe_check"):
        body += ["<h2>Recipe check: half and double the step budget</h2>",
                 _recipe_check(results["recipe_check"])]
    figures = [(f"{results['metric'].capitalize()} at K = {k}", _bars(results, k)) for k in ks]
    if len(ks) > 1:
        figures.append((f"{results['metric'].capitalize()} against K", _by_k(results)))
    curves = _curves(results)
    if curves:
        figures.append(("The greedy's cos(S, q) after each pick (dotted: the K of the grid)", curves))
    for field, title in (("sources", "Where each selection came from"),
                         ("labels", "Label distribution (autolabels; true labels for the oracle)")):
        png = _stacked(results, field, ks[-1])
        if png:
            figures.append((f"{title}, K = {ks[-1]}", png))
    for title, png in figures:
        body.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>")
    body += ["<h2>First picks of each strategy</h2>", _first_picks(results),
             "<h2>Recipe, sizes, timings</h2>", _recipe_tables(results)]
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>weights2data demo</title><style>"
        "body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
        "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:3px 7px}"
        "table.results td{text-align:right;white-space:nowrap}table.results td:first-child"
        "{text-align:left}table.picks td:last-child{font-size:90%}img{max-width:100%}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>\n")
