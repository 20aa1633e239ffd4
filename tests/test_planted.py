"""Planted recovery pins the sign of q: SELECT's first picks come from the documents the
classifier was fine-tuned on, and with q negated they do not."""

import tiny
import torch

from weights2data import select
from weights2data.config import ModelConfig
from weights2data.evaluation import Recipe, train
from weights2data.framings import make_framing
from weights2data.selection import greedy


def _planted_run(tmp_path, seed: int) -> tuple[list[bool], list[bool]]:
    """Whether each of the first 10 picks is planted, for q and for -q."""
    model, tok = tiny.bert_classifier(seed=seed)
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
    gr = result.gradients
    flipped = greedy(gr.grads, -gr.align, gr.sqnorm, gr.target_norm, 10)
    return ([is_planted[i] for i in result.selections["select"].indices[:10]],
            [is_planted[i] for i in flipped.indices])


def test_first_picks_are_the_planted_documents_and_not_with_q_negated(tmp_path):
    # Four fine-tunes, judged together: one tiny model's first 10 picks hold 6 to 10 planted
    # documents depending on its seed (seeds 0-7), too close to chance for a margin alone;
    # over four: 35 of 40, and 1 of 40 with -q.
    runs = [_planted_run(tmp_path / str(s), s) for s in range(4)]
    assert all(picks[0] for picks, _ in runs)
    assert sum(sum(picks) for picks, _ in runs) >= 28  # 24 of 64 are planted: chance is 15
    assert sum(sum(flipped) for _, flipped in runs) <= 6


def test_tiny_tokenizers_are_the_same_on_every_call():
    # A fixture that changed between calls made this module's results change between runs.
    for build in (tiny.wordpiece_tokenizer, tiny.bpe_tokenizer):
        a, b = build(), build()
        assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
