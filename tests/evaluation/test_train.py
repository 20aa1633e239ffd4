"""The training recipe with a LoRA adapter: only the fresh adapter trains; the head and every
other weight of θ0 stay as they were."""

import tiny
import torch

from weights2data.config import ModelConfig
from weights2data.evaluation.train import Lora, Recipe, Schedule, train
from weights2data.framings import make_framing


def test_lora_recipe_trains_the_adapter_and_nothing_else():
    model, tok = tiny.bert_classifier()
    framing = make_framing("classify-head", tok, 32, ModelConfig("b", "f"))
    rows = tiny.corpus(24)
    batch = framing.encode([r["text"] for r in rows[:6]])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        logits = model(**batch).logits
    lora = Lora(r=4, alpha=8, targets=("query", "value"))
    log = train(model, framing, [r["text"] for r in rows], [r["label"] for r in rows],
                Recipe(steps=12, lr=1e-2, batch_size=8, lora=lora), progress=False)
    assert len(log.losses) == 12
    after = model.state_dict()
    adapter = {k: v for k, v in after.items() if "lora_" in k}
    # q and v of both blocks, an A and a B each; B starts at zero and must have moved.
    assert len(adapter) == 2 * 2 * 2
    assert all(v.abs().sum() > 0 for k, v in adapter.items() if "lora_B" in k)
    assert {k for k, v in model.named_parameters() if v.requires_grad} == set(adapter)
    rest = {k.replace(".base_layer", ""): v for k, v in after.items() if "lora_" not in k}
    assert rest.keys() == before.keys()
    for name, value in before.items():  # the head, the encoder, the embeddings: untouched
        assert torch.equal(rest[name], value), name
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, logits)  # through the adapter


def test_recipe_dict_names_lora_only_when_used():
    # Full fine-tuning results are cached under a fingerprint of this dict: it must not change.
    assert "lora" not in Recipe().to_dict() and "lora" not in Schedule().to_dict()
    lora = Lora()
    recipe = Schedule(lora=lora).recipe(100, seed=1)
    assert recipe.lora == lora
    assert recipe.to_dict()["lora"] == {"r": 8, "alpha": 16, "targets": ["query", "value"]}
    assert Schedule(lora=lora).scaled(2.0).lora == lora
