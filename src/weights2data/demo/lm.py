"""The language-modelling demo: SmolLM2-135M, cut to its first layers to keep CPU time sane and
healed on seed-source text (never BBC) until it is a working LM again, fine-tuned on BBC News
passages and judged by perplexity on passages of held-out articles."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from ..evaluation.metrics import perplexity
from ..evaluation.train import Recipe, TrainLog, train
from ..framings import LanguageModel
from ..output import write_json
from . import data
from .prepare import Hidden
from .sizes import Sizes

HELD_OUT_SEED_DOCS = 200  # seed-source documents kept out of healing to measure it


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
    """Articles are split train/validation/test first, so no passage shares an article with
    another split."""
    rows, _ = data.bbc_news()
    parts = data.split3(rows, sizes.test_fraction, sizes.val_fraction, seed=sizes.seed)
    rng = torch.Generator().manual_seed(sizes.seed)
    out = []
    for part, cap in zip(parts, (sizes.train_docs, sizes.val_docs, sizes.test_docs)):
        p = passages(part)
        p = [p[i] for i in torch.randperm(len(p), generator=rng).tolist()]
        out.append(p[:cap] if cap else p)
    return Hidden("lm", *out, data.seed_corpus(sizes.seed_docs, seed=sizes.seed), name="lm")


def healing_texts(sizes: Sizes, exclude: list[dict]) -> tuple[list[str], list[str]]:
    """Seed-source documents (no BBC) that are not in the seed corpus: `heal_docs` to heal the
    truncated base on, and HELD_OUT_SEED_DOCS more to measure it on."""
    taken = {r["text"] for r in exclude}
    per_source = -(-(sizes.heal_docs + HELD_OUT_SEED_DOCS) // len(sizes.seed_docs))
    rows = [r for r in data.seed_corpus({s: per_source + n for s, n in sizes.seed_docs.items()},
                                        seed=sizes.seed + 7) if r["text"] not in taken]
    random.Random(sizes.seed).shuffle(rows)
    texts = [r["text"] for r in rows]
    return texts[HELD_OUT_SEED_DOCS : HELD_OUT_SEED_DOCS + sizes.heal_docs], texts[:HELD_OUT_SEED_DOCS]


def heal(model, tok, texts: list[str], recipe: Recipe, max_length: int,
         progress: bool = True) -> TrainLog:
    """Continue training a truncated SmolLM2 on `texts`, embeddings (tied to the LM head) frozen:
    the cut leaves the remaining layers feeding the head states it was never trained on."""
    for m in (model.get_input_embeddings(), model.get_output_embeddings()):
        m.weight.requires_grad_(False)
    log = train(model, LanguageModel(tok, max_length), texts, None, recipe, progress=progress)
    for p in model.parameters():
        p.requires_grad_(True)
    return log


def write_healed_base(folder: Path, layers: int | None, heal_texts: list[str], recipe: Recipe,
                      max_length: int, held_texts: list[str], progress: bool = True) -> dict:
    """SmolLM2-135M keeping its first `layers` decoder layers (tied embeddings kept), healed
    on `heal_texts` when recipe.steps > 0, saved as an HF folder with base.json recording the
    cut, the healing and the perplexity on `held_texts` before and after."""
    torch.manual_seed(recipe.seed)
    model, tok = data.load_smollm2(layers)
    tok.padding_side = "right"  # what the lm framing expects
    framing = LanguageModel(tok, max_length)
    before = perplexity(framing, model, held_texts) if held_texts else None
    log = heal(model, tok, heal_texts, recipe, max_length, progress) if recipe.steps else None
    src, gguf = data.smollm2()
    info = {"source": f"{src.name}/{gguf}", "layers_kept": layers or data.SMOLLM2_LAYERS,
            "layers_total": data.SMOLLM2_LAYERS, "heal_recipe": recipe.to_dict(),
            "heal_documents": len(heal_texts), "heal_final_loss": log.final_loss if log else None,
            "heldout_seed_documents": len(held_texts),
            "heldout_seed_perplexity": None if not held_texts else {
                "before_healing": before, "after_healing": perplexity(framing, model, held_texts)}}
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    write_json(folder / "base.json", info)
    return info


def smollm_base(sizes: Sizes, hidden: Hidden, progress: bool = True):
    """A writer for θ0: the truncated SmolLM2-135M healed on seed-source text."""
    heal_texts, held = healing_texts(sizes, hidden.seed)
    recipe = Recipe(steps=sizes.heal_steps, lr=sizes.heal_lr, batch_size=8, seed=sizes.seed)

    def write(folder: Path) -> None:
        write_healed_base(folder, sizes.layers, heal_texts, recipe, sizes.max_length, held, progress)

    return write
