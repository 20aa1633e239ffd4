"""Hide a fine-tune's training data in a public corpus, then ask SELECT to find it.

all-MiniLM-L6-v2 + a seeded 5-class head is fine-tuned on ~300 BBC News articles; those
articles are mixed into ~3,000 Wikipedia summaries and health tweets; the script then runs
`weights2data select` and counts how many hidden articles each strategy recovered.

    python examples/hidden_bbc.py --work runs/hidden-bbc
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from weights2data.demo import data
from weights2data.evaluation import Recipe, train
from weights2data.framings import ClassifyHead


def build(work: Path, hidden: int, public: int, seed: int, max_length: int) -> None:
    bbc, topics = data.bbc_news()
    train_rows, _ = data.split(bbc, test_fraction=0.2, seed=seed)
    secret = train_rows[:hidden]
    tok = AutoTokenizer.from_pretrained(data.minilm_dir())
    torch.manual_seed(seed)  # the seeded classification head of the base
    model = AutoModelForSequenceClassification.from_pretrained(
        data.minilm_dir(), num_labels=len(topics), id2label=dict(enumerate(topics)))
    model.save_pretrained(work / "base")
    tok.save_pretrained(work / "base")
    start = time.perf_counter()
    train(model, ClassifyHead(tok, max_length), [r["text"] for r in secret], [r["label"] for r in secret],
          Recipe(steps=80, lr=1e-4, batch_size=16, seed=seed))
    print(f"fine-tuned the expert in {time.perf_counter() - start:.0f} s")
    model.save_pretrained(work / "finetuned")
    tok.save_pretrained(work / "finetuned")
    seed_rows = data.seed_corpus({"wikipedia": public // 2, "tweets": public - public // 2}, seed)
    rows = [{"text": r["text"], "source": r["source"]} for r in seed_rows + secret]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]
    data.write_jsonl(rows, work / "corpus.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/hidden-bbc")
    ap.add_argument("--hidden", type=int, default=300)
    ap.add_argument("--public", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=64)
    args = ap.parse_args()
    work = Path(args.work)
    if not (work / "corpus.jsonl").exists():
        work.mkdir(parents=True, exist_ok=True)
        build(work, args.hidden, args.public, args.seed, args.max_length)
    cmd = [sys.executable, "-m", "weights2data", "select", "--base", str(work / "base"), "--finetuned",
           str(work / "finetuned"), "--corpus", str(work / "corpus.jsonl"), "--k", str(args.hidden),
           "--strategy", "select", "topk", "random", "loss-diff", "--max-length",
           str(args.max_length), "--out", str(work / "select"), "--overwrite"]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    sources = [json.loads(line)["source"] for line in open(work / "corpus.jsonl")]
    print(f"hidden BBC articles recovered (of {args.hidden}, corpus {len(sources)}):")
    for f in sorted((work / "select").glob("selected-*.jsonl")):
        picks = [json.loads(line)["index"] for line in open(f)]
        found = sum(sources[i] == "bbc" for i in picks)
        print(f"  {f.stem.removeprefix('selected-'):<10} {found:>4}  ({100 * found / len(picks):.0f} %)")


if __name__ == "__main__":
    sys.exit(main())
