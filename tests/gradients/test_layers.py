"""Per-example gradients of any chosen linear layers (attention, MLP, head) equal
torch.func's per-example gradients, for BERT, GPT-2 (Conv1D) and Llama, in every framing."""

import pytest
import tiny
import torch
from torch.func import functional_call, grad
from transformers.pytorch_utils import Conv1D

from weights2data.config import ModelConfig
from weights2data.framings import make_framing
from weights2data.gradients import Sketch, batch_gradients, resolve
from weights2data.gradients.capture import Capture

TEXTS = [r["text"] for r in tiny.corpus(5)] + ["the team"]
LABELS = torch.tensor([0, 1, 2, 1, 0, 2])

CASES = {
    "bert-classify-head": (tiny.bert_classifier, "classify-head",
                           ["bert.encoder.layer.0.attention.self.query",
                            "bert.encoder.layer.1.intermediate.dense", "bert.pooler.dense", "classifier"]),
    "gpt2-classify-head": (tiny.gpt2_classifier, "classify-head",
                           ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj", "score"]),
    "gpt2-classify-tokens": (tiny.gpt2_lm, "classify-tokens",
                             ["transformer.h.0.mlp.c_fc", "transformer.h.1.attn.c_proj"]),
    "gpt2-lm": (tiny.gpt2_lm, "lm", ["transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_fc"]),
    "llama-lm": (tiny.llama_lm, "lm", ["model.layers.0.self_attn.q_proj",
                                       "model.layers.0.self_attn.v_proj",
                                       "model.layers.1.mlp.down_proj", "lm_head"]),
}


def _setup(case):
    build, task, names = CASES[case]
    model, tok = build()
    model = tiny.perturbed(model, 0.2)  # away from init, so residuals are not all alike
    finetuned = tiny.perturbed(model, 0.05, seed=3)
    tok.padding_side = "right"
    framing = make_framing(task, tok, 32, ModelConfig("b", "f", task=task, labels=tiny.LABELS))
    return model, finetuned, framing, names


class _Loss(torch.nn.Module):
    """The framing's per-document losses as one module, so torch.func.functional_call swaps
    parameters for everything, the head the framing reads included."""

    def __init__(self, model, framing, batch, labels):
        super().__init__()
        self.model, self.framing, self.batch, self.labels = model, framing, batch, labels

    def forward(self):
        pos = self.framing.forward(self.model, self.batch)
        return pos.loss(pos.target if self.labels is None else self.labels.unsqueeze(1))


def _per_example(model, framing, batch, labels, names):
    """Per-example gradients of the chosen modules' [W | b], (B, Σ O·I'), by torch.func."""
    modules = dict(model.named_modules())
    whole = _Loss(model, framing, batch, labels)
    params = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    wanted = [f"model.{m}.{p}" for m in names for p in ("weight", "bias")
              if getattr(modules[m], p, None) is not None]

    def loss(chosen, i):
        return functional_call(whole, {**params, **chosen}, ())[i]

    rows = []
    for i in range(len(batch["input_ids"])):
        g = grad(loss)({n: params[n] for n in wanted}, i)
        parts = []
        for m in names:
            w = g[f"model.{m}.weight"]
            w = w.T if isinstance(modules[m], Conv1D) else w
            if f"model.{m}.bias" in g:
                w = torch.cat([w, g[f"model.{m}.bias"].unsqueeze(1)], dim=1)
            if m == framing.last_layer_name(model):  # the rows the framing reads (label tokens)
                w = w[framing.rows()]
            parts.append(w.flatten())
        rows.append(torch.cat(parts))
    return torch.stack(rows)


@pytest.mark.parametrize("case", CASES)
def test_any_layer_gradients_equal_torch_func(case):
    model, finetuned, framing, names = _setup(case)
    batch = framing.encode(TEXTS)  # padded: checks that padding changes nothing
    labels = None if framing.name == "lm" else LABELS
    layers = resolve(names, framing, model, finetuned)
    assert [la.name for la in layers.layers] == names
    sketch = Sketch(layers.shapes(), "kronecker", 64, exact_max=10**9, seed=0)  # exact
    capture = Capture(model, [la.name for la in layers.inner],
                      {la.name: la.transposed for la in layers.inner},
                      {la.name: la.bias for la in layers.inner})
    with capture.active():
        proj, align, sq, loss = batch_gradients(framing, model, batch, labels, layers, sketch, capture)
    auto = _per_example(model, framing, batch, labels, names)
    torch.testing.assert_close(proj, auto, rtol=1e-4, atol=1e-6)
    q = torch.cat([la.target.matrix().flatten() for la in layers.layers])
    torch.testing.assert_close(align, auto @ q, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(sq, auto.square().sum(1), rtol=1e-4, atol=1e-8)
    assert all(p.requires_grad for p in model.parameters())  # frozen only during the pass


def test_lm_head_chunks_do_not_change_the_backward(monkeypatch):
    """∂L/∂h is assembled chunk by chunk: one document per chunk gives the same gradients."""
    model, finetuned, framing, names = _setup("llama-lm")
    batch = framing.encode(TEXTS)
    layers = resolve(names, framing, model, finetuned)
    sketch = Sketch(layers.shapes(), "kronecker", 64, exact_max=10**9, seed=0)
    capture = Capture(model, [la.name for la in layers.inner],
                      {la.name: la.transposed for la in layers.inner},
                      {la.name: la.bias for la in layers.inner})
    with capture.active():
        whole = batch_gradients(framing, model, batch, None, layers, sketch, capture)
        monkeypatch.setattr("weights2data.framings.base.LOGIT_BYTES", 1)
        chunked = batch_gradients(framing, model, batch, None, layers, sketch, capture)
    for a, b in zip(whole, chunked):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
