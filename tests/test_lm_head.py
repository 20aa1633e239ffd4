"""The LM-head path: residuals and loss from one in-place softmax, alignment via r·Q."""

import tiny
import torch

from weights2data.framings import make_framing
from weights2data.gradients.closed_form import alignment, materialise, residuals_and_loss


def test_in_place_residuals_loss_and_alignment_match_the_definitions():
    model, tok = tiny.llama_lm(tie=True)
    model = tiny.perturbed(model, 0.2)
    framing = make_framing("lm", tok, 32, None)
    texts = [r["text"] for r in tiny.corpus(6)]
    _, batch = next(framing.batches(texts, 6, torch.device("cpu")))
    with torch.no_grad():
        pos = framing.forward(model, batch)
        logits = pos.logits.clone()
        r, loss = residuals_and_loss(pos, pos.target)
    assert torch.equal(pos.logits, logits)  # the model's logits are left alone
    torch.testing.assert_close(loss, pos.loss(), rtol=1e-5, atol=1e-6)
    onehot = torch.nn.functional.one_hot(pos.target, logits.shape[-1]).float()
    expected = (torch.softmax(logits, -1) - onehot) * pos.weight.unsqueeze(-1)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-7)
    q = torch.randn(logits.shape[-1], pos.hidden.shape[-1])
    torch.testing.assert_close(alignment(r, pos.hidden, q), (materialise(r, pos.hidden) * q).sum((1, 2)),
                               rtol=1e-4, atol=1e-6)
