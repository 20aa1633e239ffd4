"""The language-modelling demo: SmolLM2-135M, cut to its first layers to keep CPU time sane,
fine-tuned on BBC News passages and judged by perplexity on passages of held-out articles."""

from __future__ import annotations

from pathlib import Path

import torch

from . import data
from .run import Hidden
from .sizes import Sizes


def passages(rows: list[dict], words: int = 60) -> list[dict]:
    """Articles cut into passages of about `words` words (short tails dropped)."""
    out = []
    for r in rows:
        tokens = r["text"].split()
        for start in range(0, len(tokens), words):
            chunk = tokens[start : start + words]
            if len(chunk) >= words // 2:
                out.append({"text": " ".join(chunk)})
    return out


def hidden_task(sizes: Sizes) -> Hidden:
    """Articles are split train/test first, so no test passage shares an article with training."""
    rows, _ = data.bbc_news()
    train, test = data.split(rows, sizes.test_fraction, seed=sizes.seed)
    train_p, test_p = passages(train), passages(test)
    rng = torch.Generator().manual_seed(sizes.seed)
    train_p = [train_p[i] for i in torch.randperm(len(train_p), generator=rng).tolist()]
    test_p = [test_p[i] for i in torch.randperm(len(test_p), generator=rng).tolist()]
    train_p = train_p[: sizes.train_docs] if sizes.train_docs else train_p
    test_p = test_p[: sizes.test_docs] if sizes.test_docs else test_p
    return Hidden("lm", train_p, test_p, data.seed_corpus(sizes.seed_docs, seed=sizes.seed))


def smollm_base(layers: int | None, seed: int):
    """A writer for θ0: SmolLM2-135M dequantised from its GGUF file, keeping only the first
    `layers` decoder layers (None: all 30)."""

    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        model, tok = data.load_smollm2(layers)
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    return write
