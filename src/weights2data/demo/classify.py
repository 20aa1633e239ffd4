"""The classification demos: all-MiniLM-L6-v2 + a seeded head fine-tuned on a hidden task and
recovered from a public corpus that holds none of its text.

- bbc: BBC News, 5 balanced topics; corpus of Wikipedia summaries, news passages, tweets.
- wiki: Wikipedia summaries, 11 imbalanced topics (People 20 % … Mathematics 3 %); corpus
  of BBC articles, news passages, tweets (no Wikipedia text)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from . import data
from .prepare import Hidden
from .sizes import Sizes


def hidden_task(sizes: Sizes, task: str = "bbc") -> Hidden:
    """The hidden data split train/validation/test with a fixed seed; the seed corpus has none
    of the hidden source's text."""
    rows, topics = data.bbc_news() if task == "bbc" else data.wikipedia_topics()
    train, val, test = data.split3(rows, sizes.test_fraction, sizes.val_fraction, seed=sizes.seed)
    train, val, test = (part[:cap] if cap else part for part, cap in
                        ((train, sizes.train_docs), (val, sizes.val_docs), (test, sizes.test_docs)))
    hidden_source = "bbc" if task == "bbc" else "wikipedia"
    if hidden_source in sizes.seed_docs:
        raise ValueError(f"the {task} seed corpus must not contain {hidden_source} text")
    seed = data.seed_corpus(sizes.seed_docs, seed=sizes.seed)
    keep = ("text", "label")
    return Hidden("classify-head", *([{k: r[k] for k in keep} for r in part]
                                     for part in (train, val, test)), seed, topics, task)


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
