"""Closed-form per-example last-layer gradients equal autograd's, for every framing."""

import pytest
import tiny
import torch

from weights2data.config import ModelConfig
from weights2data.framings import make_framing
from weights2data.gradients import alignment, materialise, residuals, squared_norms

TEXTS = [r["text"] for r in tiny.corpus(5)] + ["the team"]

CASES = {
    "bert-classify-head": (tiny.bert_classifier, "classify-head"),
    "gpt2-classify-head": (tiny.gpt2_classifier, "classify-head"),
    "gpt2-classify-tokens": (tiny.gpt2_lm, "classify-tokens"),
    "gpt2-lm": (tiny.gpt2_lm, "lm"),
    "llama-lm": (tiny.llama_lm, "lm"),
}


def _setup(case):
    build, task = CASES[case]
    model, tok = build()
    model = tiny.perturbed(model, 0.2)  # away from init, so residuals are not all alike
    out = model.get_output_embeddings()
    if out is not None and out.weight is model.get_input_embeddings().weight:
        # Tied: autograd would add the input-embedding gradient; the closed form is the
        # output layer's share, so give the head its own (equal) copy for the reference.
        out.weight = torch.nn.Parameter(out.weight.detach().clone())
    tok.padding_side = "right"
    framing = make_framing(task, tok, 32, ModelConfig("b", "f", task=task, labels=tiny.LABELS))
    return model, framing


def _autograd_per_example(model, framing, batch, target):
    module = framing.last_module(model)
    grads = []
    for i in range(len(batch["input_ids"])):
        model.zero_grad()
        pos = framing.forward(model, batch)
        pos.loss(target)[i].backward()
        g = module.weight.grad[framing.rows()]
        if getattr(module, "bias", None) is not None:
            g = torch.cat([g, module.bias.grad[framing.rows()].unsqueeze(1)], dim=1)
        grads.append(g.clone())
    return torch.stack(grads)


@pytest.mark.parametrize("case", CASES)
def test_closed_form_equals_autograd(case):
    model, framing = _setup(case)
    batch = framing.encode(TEXTS)  # padded: checks that padding changes nothing
    with torch.no_grad():
        pos = framing.forward(model, batch)
    target = pos.target if pos.target is not None else torch.tensor([[0], [1], [2], [1], [0], [2]])
    r = residuals(pos, target)
    closed = materialise(r, pos.inputs())
    auto = _autograd_per_example(model, framing, batch, target)
    torch.testing.assert_close(closed, auto, rtol=1e-4, atol=1e-6)

    q = torch.randn(closed.shape[1:])
    torch.testing.assert_close(alignment(r, pos.inputs(), q), (auto * q).sum((1, 2)), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(squared_norms(r, pos.inputs()), auto.square().sum((1, 2)), rtol=1e-4,
                               atol=1e-8)


@pytest.mark.parametrize("case", ["gpt2-classify-tokens", "gpt2-lm", "bert-classify-head"])
def test_padding_and_batching_do_not_change_gradients(case):
    model, framing = _setup(case)
    with torch.no_grad():
        pos = framing.forward(model, framing.encode(TEXTS))
        y = pos.target if pos.target is not None else pos.logits().argmax(-1)
        batched = materialise(residuals(pos, y), pos.inputs())
        for i, text in enumerate(TEXTS):
            one = framing.forward(model, framing.encode([text]))
            y1 = one.target if one.target is not None else y[i : i + 1, :1]
            torch.testing.assert_close(materialise(residuals(one, y1), one.inputs())[0], batched[i],
                                       rtol=1e-4, atol=1e-6)


def test_classify_tokens_reads_the_position_before_the_label():
    """The published code took the hidden state one position too late; we must not."""
    model, framing = _setup("gpt2-classify-tokens")
    text = TEXTS[0]
    with torch.no_grad():
        pos = framing.forward(model, framing.encode([text]))
        full = model(**framing.tokenizer([text + " sport"], return_tensors="pt"))
    label_logits = full.logits[0, -2, framing.label_ids]  # logits that predict the label word
    torch.testing.assert_close(pos.logits()[0, 0], label_logits, rtol=1e-4, atol=1e-5)


def test_tied_embeddings_use_the_shared_matrix():
    model, tok = tiny.llama_lm(tie=True)
    framing = make_framing("lm", tok, 32, ModelConfig("b", "f"))
    assert framing.last_module(model).weight is model.get_input_embeddings().weight
