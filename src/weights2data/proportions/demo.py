"""`weights2data demo --mixture`: fine-tune θ0 on known mixtures of the demo's sources, estimate
each mixture from a corpus of *other* documents of the same sources, and report the mean absolute
error of the proportions per method over several seeds.

θ0: SmolLM2-135M cut to its first 4 of 30 layers and healed on seed text (as `demo --ablate`),
with its output head untied from the input embeddings (which every fine-tune leaves frozen: a
tied matrix would mix input-embedding updates, which no last-layer gradient models, into q).
Each seed draws its mixtures from a seeded Dirichlet(1, …, 1) over the sources, its training
documents and its estimation corpus (disjoint pools of each source).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..output import write_json
from . import estimate as est

SOURCES = ("wikipedia", "news", "tweets", "bbc")
WARP = {"BERT": 0.046, "GPT-2": 0.104}  # WARP (arXiv 2607.01686): MAE of the proportions
POOL = {"heal": 150, "train": 600, "estimate": 300}  # documents per source in each disjoint pool
METHODS = ("adam", "gradient", "select", "topk", "loss", "uniform")
# The Adam fit's variants: B the fine-tune's batch size (8) or fitted (the sampling variance in
# v, --adam-sampling, was no better on validation and is left out: each fit costs ~30 s here)
ADAM_VARIANTS = {"8": {"batch": 8.0}, "fit": {"batch": None}}


@dataclass
class MixtureSizes:
    """Everything that sets the demo's cost; recorded in results.json."""

    seeds: int = 3
    mixtures: int = 4  # per seed, drawn from Dirichlet(alpha)
    alpha: float = 1.0
    train_docs: int = 64  # documents in each fine-tune's training set
    steps: int = 8  # fine-tune: AdamW, batch 8, lr 5e-4: one epoch of train_docs
    batch_size: int = 8
    lr: float = 5e-4
    estimate_docs: int = 16  # per source, in the estimation corpus
    max_length: int = 32
    checkpoints: int = 3  # select's default P
    layers: int = 4
    heal_steps: int = 30
    moments_budget: int = 4 * 113 * 2**20  # bytes of exact moments: ~4.3k of the 49k head rows
    # Estimator knobs, chosen on seeds 100-102 (never on the reported seeds 0-2); they are
    # applied when summarising, so they are not part of a cached run's fingerprint.
    k_fraction: float = 0.25  # SELECT / top-k picks, as a share of the estimation corpus
    debias: bool = False
    adam: str = "8"  # one of ADAM_VARIANTS

    def run_tag(self) -> str:
        """What a cached mixture run depends on."""
        skip = ("seeds", "mixtures", "k_fraction", "debias", "adam")
        return json.dumps({k: v for k, v in self.to_dict().items() if k not in skip}, sort_keys=True)

    def to_dict(self) -> dict:
        return asdict(self)


def sizes_for(preset: str) -> MixtureSizes:
    if preset == "quick":  # the first 2 mixtures of each seed of the default grid
        return MixtureSizes(seeds=3, mixtures=2)
    if preset == "default":
        return MixtureSizes()
    if preset == "full":
        return MixtureSizes(seeds=5, mixtures=8, train_docs=256, steps=32, estimate_docs=48)
    raise ValueError(f"unknown preset {preset!r}")


def source_pools(seed: int = 0) -> dict[str, dict[str, list[str]]]:
    """Disjoint heal / train / estimate pools of each source (BBC as article passages; the base
    is never healed on BBC)."""
    from ..demo.data import bbc_news, health_tweets, news_passages, wikipedia
    from ..demo.lm import passages

    rows = {"wikipedia": wikipedia(), "news": news_passages(), "tweets": health_tweets(),
            "bbc": passages(bbc_news()[0])}
    rng = random.Random(seed)
    pools = {}
    for name in SOURCES:
        texts = [r["text"] for r in rows[name]]
        rng.shuffle(texts)
        cut = [0, POOL["heal"], POOL["heal"] + POOL["train"], sum(POOL.values())]
        if len(texts) < cut[-1]:
            raise ValueError(f"source {name} has {len(texts)} documents, fewer than {cut[-1]}")
        pools[name] = {part: texts[a:b] for part, a, b in zip(POOL, cut, cut[1:])}
    return pools


def base_model(cache: Path, sizes: MixtureSizes, heal_texts: list[str], progress: bool) -> str:
    """The truncated, healed SmolLM2 with an untied output head, saved once under `cache`."""
    import torch

    from ..ablate.demo import truncated_base
    from ..checkpoints import load_model
    from ..evaluation.train import Recipe

    folder = cache / f"base-{sizes.layers}-layers-untied"
    if (folder / "config.json").is_file():
        return str(folder)
    heal = Recipe(steps=sizes.heal_steps, lr=2e-3, batch_size=8, warmup=0.1, seed=0)
    tied = truncated_base(cache / f"base-{sizes.layers}-layers", sizes.layers, heal_texts, heal,
                          progress)
    model, tok = load_model(tied)
    model.config.tie_word_embeddings = False
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    tmp.rename(folder)
    return str(folder)


def draw_mixture(rng: np.random.Generator, n: int, alpha: float) -> np.ndarray:
    """Document counts per source summing to n, from π ~ Dirichlet(alpha) (largest remainder)."""
    pi = rng.dirichlet(np.full(len(SOURCES), alpha))
    counts = np.floor(pi * n).astype(int)
    for k in np.argsort(-(pi * n - counts))[: n - counts.sum()]:
        counts[k] += 1
    return counts


def finetune(base: str, texts: list[str], sizes: MixtureSizes, seed: int, out: Path,
             progress: bool) -> str:
    """θf: θ0 trained on `texts` with one fixed recipe (input embeddings frozen)."""
    from ..checkpoints import load_model
    from ..evaluation.train import Recipe, train
    from ..framings import LanguageModel

    model, tok = load_model(base)
    model.get_input_embeddings().weight.requires_grad_(False)
    recipe = Recipe(steps=sizes.steps, lr=sizes.lr, batch_size=sizes.batch_size, warmup=0.1,
                    seed=seed)
    train(model, LanguageModel(tok, sizes.max_length), texts, None, recipe, progress=progress)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def draw_data(pools: dict, sizes: MixtureSizes, seed: int,
              index: int) -> tuple[list[str], dict[str, float], list[dict]]:
    """(training texts, true document shares, estimation corpus rows) of one drawn mixture."""
    rng = np.random.default_rng([seed, index])
    counts = draw_mixture(rng, sizes.train_docs, sizes.alpha)
    texts = []
    for name, c in zip(SOURCES, counts):
        texts += [pools[name]["train"][i] for i in rng.choice(POOL["train"], c, replace=False)]
    truth = dict(zip(SOURCES, (counts / counts.sum()).tolist()))
    corpus_rng = np.random.default_rng([seed, 10_000])  # one estimation corpus per seed
    rows = [{"text": pools[name]["estimate"][i], "source": name} for name in SOURCES
            for i in corpus_rng.choice(POOL["estimate"], sizes.estimate_docs, replace=False)]
    return texts, truth, rows


def one_mixture(base: str, pools: dict, sizes: MixtureSizes, seed: int, index: int,
                folder: Path, progress: bool) -> dict:
    """Fine-tune on one drawn mixture and estimate it: the raw material of every method (both
    gradient variants, both Adam variants, the SELECT / top-k pick orders, the loss estimate),
    so the estimator knobs can be chosen later without fine-tuning again."""
    import torch

    from .adam import AdamProblem, adam_estimate
    from .pipeline import mixture

    texts, truth, rows = draw_data(pools, sizes, seed, index)
    corpus = folder / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    t0 = time.perf_counter()
    ft = finetune(base, texts, sizes, seed * 1000 + index, folder / "finetuned", progress)
    t_train = time.perf_counter() - t0
    res = mixture(base=base, finetuned=ft, corpus=str(corpus), domain_column="source",
                  k=len(rows) // 2, max_length=sizes.max_length, checkpoints=sizes.checkpoints,
                  batch_size=16, bootstrap=100, seed=seed, progress=progress,
                  adam_batch=float(sizes.batch_size), moments_budget=sizes.moments_budget)
    # the Adam fit's inputs (a 10⁶-coordinate sample of the moments, ~100 MB), so new variants
    # can be tried on the validation seeds without fine-tuning again
    problem = AdamProblem.from_moments(res.moments, seed=seed)
    torch.save({"first": problem.first, "second": problem.second, "q": problem.q,
                "documents": res.moments.documents}, folder / "adam-inputs.pt")
    t_adam, adam = time.perf_counter(), {}
    for name, knobs in ADAM_VARIANTS.items():
        e = (res.estimates["adam"] if knobs == {"batch": float(sizes.batch_size)}
             else adam_estimate(res.moments, seed=seed, **knobs))
        adam[name] = {"proportions": e.proportions, "cosine": e.extra["cosine"],
                      "batch": e.extra["batch"]}
    t_adam = time.perf_counter() - t_adam
    res.moments = None  # the exact moments: hundreds of MB
    shutil.rmtree(folder / "finetuned", ignore_errors=True)
    domain = np.asarray([res.domains.index(r["source"]) for r in rows])
    grad = est.DomainRows.from_gradients(res.run.gradients, domain, res.domains)
    variants = {}
    for debias in (True, False):
        e = est.gradient_estimate(grad, 100, 0.95, 0.0, seed, debias)
        variants[f"debias={debias}"] = {"proportions": e.proportions, "low": e.low, "high": e.high}
    g = res.estimates["gradient"]
    return {
        "seed": seed, "mixture": index, "truth": truth, "sources": [r["source"] for r in rows],
        "gradient": variants, "explained": g.extra["explained"], "adam": adam,
        "picks": {m: res.run.selections[m].indices for m in ("select", "topk")},
        "loss": res.estimates["loss"].proportions,
        "timings_s": {"finetune": round(t_train, 1),
                      "estimate": round(res.info["timings_s"]["total"] + t_adam, 1)},
    }


def estimates(run: dict, sizes: MixtureSizes) -> dict[str, dict[str, float]]:
    """Each method's proportions for a stored run, under the current estimator knobs."""
    domain = np.asarray([SOURCES.index(s) for s in run["sources"]])
    k = max(1, round(sizes.k_fraction * len(domain)))
    out = {"adam": run["adam"][sizes.adam]["proportions"],
           "gradient": run["gradient"][f"debias={sizes.debias}"]["proportions"]}
    for m in ("select", "topk"):
        out[m] = est.pick_shares(run["picks"][m][:k], domain, list(SOURCES), m).proportions
    out["loss"] = run["loss"]
    out["uniform"] = {s: 1 / len(SOURCES) for s in SOURCES}
    return out


def scored(runs: list[dict], sizes: MixtureSizes) -> list[dict]:
    """The runs with `estimates` and `mae` per method filled in."""
    out = []
    for r in runs:
        e = estimates(r, sizes)
        out.append({**r, "estimates": e,
                    "mae": {m: est.mean_absolute_error(p, r["truth"]) for m, p in e.items()}})
    return out


def summarise(runs: list[dict], methods=METHODS) -> dict:
    """Per method: MAE averaged over each seed's mixtures, then mean ± sd over seeds."""
    seeds = sorted({r["seed"] for r in runs})
    out = {}
    for m in methods:
        per_seed = [float(np.mean([r["mae"][m] for r in runs if r["seed"] == s])) for s in seeds]
        out[m] = {"mean": float(np.mean(per_seed)),
                  "sd": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0,
                  "per_seed": per_seed}
    return out


NAMES = {"adam": "Adam-aware fit (ours)", "gradient": "gradient NNLS (ours)",
         "select": "share of SELECT picks", "topk": "share of top-k picks", "loss": "mean loss drop θ0 → θf",
         "uniform": "uniform guess (1/4 each)"}


def table(summary: dict, n_seeds: int, n_mixtures: int) -> str:
    lines = [f"{'method':<30}{'MAE of the proportions':>26}",
             f"{'':<30}{f'mean ± sd over {n_seeds} seeds ({n_mixtures} mixtures each)':>26}"]
    for m, s in summary.items():
        lines.append(f"{NAMES.get(m, m):<30}{s['mean']:>12.3f} ± {s['sd']:.3f}")
    for model, mae in WARP.items():
        lines.append(f"{'WARP, published (' + model + ')':<30}{mae:>12.3f}")
    return "\n".join(lines)


def report_html(results: dict, sizes: MixtureSizes) -> str:
    import html

    from .report import bar_chart_png

    esc = html.escape
    s = results["summary"]
    rows = "".join(f"<tr><td>{esc(NAMES.get(m, m))}</td><td>{v['mean']:.3f} ± {v['sd']:.3f}</td></tr>"
                   for m, v in s.items())
    rows += "".join(f"<tr><td>WARP, published ({m})</td><td>{v:.3f}</td></tr>" for m, v in WARP.items())
    charts = "".join(
        "<p><img alt='mixture' src='data:image/png;base64,"
        + bar_chart_png(list(SOURCES), {"truth": r["truth"], **{NAMES[m]: r["estimates"][m]
                                                                for m in ("adam", "gradient", "loss")}},
                        {NAMES["gradient"]: (r["gradient"][f"debias={sizes.debias}"]["low"],
                                             r["gradient"][f"debias={sizes.debias}"]["high"])},
                        f"seed {r['seed']}, mixture {r['mixture']} (fit explains "
                        f"{r['explained']:.0%} of ‖q‖²)")
        + "'></p>" for r in results["runs"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>weights2data demo --mixture</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}</style></head><body>
<h1>Recovering known mixtures</h1>
<p>{esc(results['description'])}</p>
<table><tr><th>method</th><th>MAE of the proportions (mean ± sd over seeds)</th></tr>{rows}</table>
{charts}</body></html>
"""


def run_demo(out: str | Path, preset: str = "default", seeds: int | None = None, first_seed: int = 0,
             cache: str | Path | None = None, progress: bool = True) -> dict:
    """Run (or resume: each finished mixture is cached as JSON) the whole grid, print the table,
    write results.json and report.html into `out`."""
    sizes = sizes_for(preset)
    if seeds is not None:
        sizes.seeds = seeds
    out = Path(out)
    cache = Path(cache) if cache else out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pools = source_pools()
    heal = [t for s in ("wikipedia", "news", "tweets") for t in pools[s]["heal"]]
    random.Random(0).shuffle(heal)
    base = base_model(cache, sizes, heal, progress)
    t_base = time.perf_counter() - start
    tag = sizes.run_tag()
    runs = []
    for seed in range(first_seed, first_seed + sizes.seeds):
        for index in range(sizes.mixtures):
            done = cache / "runs" / f"seed-{seed}-mixture-{index}.json"
            if done.is_file() and json.loads(done.read_text()).get("sizes") == tag:
                runs.append(json.loads(done.read_text())["result"])
                continue
            work = cache / "work" / f"seed-{seed}-mixture-{index}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            r = one_mixture(base, pools, sizes, seed, index, work, progress)
            done.parent.mkdir(parents=True, exist_ok=True)
            write_json(done, {"sizes": tag, "result": r})
            runs.append(r)
            (cache / "moments").mkdir(exist_ok=True)
            (work / "adam-inputs.pt").replace(cache / "moments" / f"seed-{seed}-mixture-{index}.pt")
            shutil.rmtree(work, ignore_errors=True)
            s = scored([r], sizes)[0]
            print(f"seed {seed} mixture {index}: truth "
                  + " ".join(f"{n} {r['truth'][n]:.2f}" for n in SOURCES) + " | MAE "
                  + " ".join(f"{m} {s['mae'][m]:.3f}" for m in METHODS)
                  + f" | {r['timings_s']['finetune']:.0f} s fine-tune, "
                  f"{r['timings_s']['estimate']:.0f} s estimate", flush=True)
    runs = scored(runs, sizes)
    summary = summarise(runs)
    results = {
        "preset": preset, "sizes": sizes.to_dict(), "first_seed": first_seed, "runs": runs,
        "summary": summary, "warp": WARP, "base": base,
        "description": (
            f"SmolLM2-135M cut to {sizes.layers} of 30 layers, healed, output head untied; each "
            f"fine-tune: {sizes.train_docs} documents of a mixture of {', '.join(SOURCES)} drawn "
            f"from Dirichlet({sizes.alpha}), {sizes.steps} AdamW steps (batch {sizes.batch_size}, "
            f"lr {sizes.lr}, input embeddings frozen), loss averaged per document; estimated from "
            f"{sizes.estimate_docs} other documents per source, max length {sizes.max_length}, "
            f"P = {sizes.checkpoints}; SELECT/top-k shares at K = {sizes.k_fraction:.0%} of the "
            f"corpus; Adam fit variant {sizes.adam}. Proportions are document shares."),
        "timings_s": {"base (truncate, heal, untie)": round(t_base, 1),
                      "total": round(time.perf_counter() - start, 1)},
        "cpus": os.cpu_count(),
    }
    write_json(out / "results.json", results)
    (out / "report.html").write_text(report_html(results, sizes))
    print(table(summary, sizes.seeds, sizes.mixtures))
    print(f"({preset} preset, {results['timings_s']['total']:.0f} s, {os.cpu_count()} CPUs)  "
          f"wrote {out / 'results.json'} and {out / 'report.html'}")
    return results
