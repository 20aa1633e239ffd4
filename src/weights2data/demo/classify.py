"""The classification demo: all-MiniLM-L6-v2 + a seeded 5-class head, fine-tuned on BBC News,
recovered from Wikipedia summaries, news passages and health tweets."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import data
from .run import Hidden
from .sizes import Sizes


def hidden_task(sizes: Sizes) -> Hidden:
    """BBC News split train/test with a fixed seed; the seed corpus has no BBC text."""
    rows, topics = data.bbc_news()
    train, test = data.split(rows, sizes.test_fraction, seed=sizes.seed)
    train = train[: sizes.train_docs] if sizes.train_docs else train
    test = test[: sizes.test_docs] if sizes.test_docs else test
    seed = data.seed_corpus(sizes.seed_docs, seed=sizes.seed)
    keep = ("text", "label")
    return Hidden("classify-head", [{k: r[k] for k in keep} for r in train],
                  [{k: r[k] for k in keep} for r in test], seed, topics)


def minilm_base(label_names: list[str], seed: int):
    """A writer for θ0: all-MiniLM-L6-v2 with a freshly initialised, seeded head."""

    def write(folder: Path) -> None:
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(
            data.minilm_dir(), num_labels=len(label_names), id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)})
        model.save_pretrained(folder)
        AutoTokenizer.from_pretrained(data.minilm_dir()).save_pretrained(folder)

    return write
