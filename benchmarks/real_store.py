"""Gradient stores built from real models, to time the greedy on real gradients.

    python benchmarks/real_store.py classify --out /tmp/w2d-real/classify
    python benchmarks/real_store.py lm --out /tmp/w2d-real/lm --docs 4000

`classify`: the demo's all-MiniLM-L6-v2 + seeded 5-class head fine-tuned on BBC News, over the
demo's default seed corpus (4,000 Wikipedia summaries, news passages and tweets), P = 3;
gradients are exact (C·(H+1) = 1,925 entries). `lm`: SmolLM2-135M cut to its first 4 layers,
healed, fine-tuned on BBC passages, its seed corpus, P = 3, Kronecker projection to 4,096.
The store is at OUT/store (reused when complete); base, expert and corpus beside it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def build(task: str, out: Path, docs: int | None = None, max_length: int | None = None,
          expert_epochs: float | None = None) -> Path:
    """Build (or finish) the store of `task` under `out`; returns the store folder."""
    from weights2data.demo import classify, data, lm
    from weights2data.demo.prepare import Stages, build_models
    from weights2data.demo.sizes import sizes_for
    from weights2data.pipeline import select

    sizes = sizes_for("bbc" if task == "classify" else "lm", "default")
    if max_length:
        sizes.max_length = max_length
    if expert_epochs:
        sizes.expert_epochs = expert_epochs
    hidden = classify.hidden_task(sizes) if task == "classify" else lm.hidden_task(sizes)
    write_base = (classify.minilm_base(hidden.label_names, sizes.seed) if task == "classify"
                  else lm.smollm_base(sizes, hidden))
    out.mkdir(parents=True, exist_ok=True)
    base, expert = build_models(hidden, write_base, sizes, out, Stages(print))
    corpus = out / "corpus.jsonl"
    rows = hidden.seed[:docs] if docs else hidden.seed
    if not corpus.exists():
        data.write_jsonl([{"text": r["text"]} for r in rows], corpus)
    store = out / "store"
    select(base=str(base), finetuned=str(expert), corpus=str(corpus), k=10, strategies=["topk"],
           max_length=sizes.max_length, checkpoints=3, store=str(store), seed=0, progress=True)
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("task", choices=["classify", "lm"])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--docs", type=int, help="first DOCS documents of the seed corpus (default all)")
    ap.add_argument("--max-length", type=int)
    ap.add_argument("--expert-epochs", type=float, help="default: the demo's")
    args = ap.parse_args()
    print(build(args.task, args.out, args.docs, args.max_length, args.expert_epochs))


if __name__ == "__main__":
    main()
