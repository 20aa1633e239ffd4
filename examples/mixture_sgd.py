"""Diagnostic for `weights2data demo --mixture`: one of its mixtures fine-tuned by plain SGD
instead of AdamW (the regime where θ0 − θf is linear in the per-domain gradients), estimated the
same way from the same corpus.

    python examples/mixture_sgd.py --lr 0.02 --seed 100 --mixture 0   # the README's line

Needs the demo's base model: run `weights2data demo --mixture --quick` first (same --cache).
"""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from weights2data.checkpoints import load_model
from weights2data.framings import LanguageModel
from weights2data.proportions import demo
from weights2data.proportions import estimate as est
from weights2data.proportions.pipeline import mixture


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--mixture", type=int, default=0)
    p.add_argument("--cache", default=str(Path.home() / ".cache" / "weights2data" / "demo"))
    args = p.parse_args()
    sizes = demo.MixtureSizes()
    cache = Path(args.cache) / "mixture"
    base = str(cache / f"base-{sizes.layers}-layers-untied")
    texts, truth, rows = demo.draw_data(demo.source_pools(), sizes, args.seed, args.mixture)
    work = cache / f"sgd-{args.seed}-{args.mixture}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    (work / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    model, tok = load_model(base)
    model.get_input_embeddings().weight.requires_grad_(False)
    framing = LanguageModel(tok, sizes.max_length)
    opt = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed * 1000 + args.mixture)
    order = torch.randperm(len(texts), generator=gen).tolist()  # one epoch, as the demo
    model.train()
    for step in range(sizes.steps):
        batch = [texts[i] for i in order[step * sizes.batch_size:(step + 1) * sizes.batch_size]]
        loss = framing.forward(model, framing.encode(batch)).loss(None).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        print(f"step {step}: loss {loss.item():.3f}")
    model.eval()
    model.save_pretrained(work / "ft")
    tok.save_pretrained(work / "ft")

    res = mixture(base=base, finetuned=str(work / "ft"), corpus=str(work / "corpus.jsonl"),
                  domain_column="source", max_length=sizes.max_length, batch_size=16,
                  bootstrap=0, progress=False)
    shutil.rmtree(work)
    domain = np.asarray([res.domains.index(r["source"]) for r in rows])
    rows_ = est.DomainRows.from_gradients(res.run.gradients, domain, res.domains)
    print("truth   ", {k: round(v, 3) for k, v in truth.items()})
    for name, props in [("gradient", est.gradient_estimate(rows_, 0).proportions),
                        *[(m, res.proportions(m)) for m in ("select", "topk", "loss")]]:
        print(f"{name:<9}", {k: round(v, 3) for k, v in props.items()},
              f"MAE {est.mean_absolute_error(props, truth):.3f}")
    print(f"the domains explain {res.estimates['gradient'].extra['explained']:.1%} of ‖q‖²")


if __name__ == "__main__":
    main()
