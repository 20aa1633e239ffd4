"""Planted recovery pins the sign of q: SELECT's first picks come from the documents the
classifier was fine-tuned on, and with q negated they do not."""

import tiny
import torch

from weights2data import select
from weights2data.config import ModelConfig
from weights2data.evaluation import Recipe, train
from weights2data.framings import make_framing
from weights2data.selection import greedy


def test_first_picks_are_the_planted_documents_and_not_with_q_negated(tmp_path):
    model, tok = tiny.bert_classifier()
    base = tiny.save(model, tok, tmp_path / "base")
    planted = tiny.corpus(24, seed=1)
    framing = make_framing("classify-head", tok, 32, ModelConfig(base, base))
    train(model, framing, [r["text"] for r in planted], [r["label"] for r in planted],
          Recipe(steps=40, lr=1e-2, batch_size=8), progress=False)
    ft = tiny.save(model, tok, tmp_path / "ft")
    g = torch.Generator().manual_seed(0)
    filler = tiny.FILLER.split()
    noise = [{"text": " ".join(filler[j] for j in torch.randint(len(filler), (8,), generator=g))}
             for _ in range(40)]
    rows = planted + noise
    order = torch.randperm(len(rows), generator=g).tolist()
    corpus = tiny.write_jsonl([rows[i] for i in order], tmp_path / "c.jsonl")
    is_planted = [i < len(planted) for i in order]

    result = select(base=base, finetuned=ft, corpus=str(corpus), k=10, progress=False)
    first = result.selections["select"].indices[:10]
    assert all(is_planted[i] for i in first[:3])
    assert sum(is_planted[i] for i in first) >= 7  # 24 of 64 are planted: chance is 3.75

    gr = result.gradients
    flipped = greedy(gr.grads, -gr.align, gr.sqnorm, gr.target_norm, 10)
    print([is_planted[i] for i in flipped.indices])
    assert sum(is_planted[i] for i in flipped.indices) <= 3
