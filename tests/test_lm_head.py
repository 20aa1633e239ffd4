"""The LM-head path: residuals and loss from one in-place softmax, alignment via r·Q, and
logits formed in bounded chunks of documents."""

import tiny
import torch

from weights2data.framings import make_framing
from weights2data.gradients.closed_form import alignment, materialise, residuals_and_loss


def _lm_batch():
    model, tok = tiny.llama_lm(tie=True)
    model = tiny.perturbed(model, 0.2)
    framing = make_framing("lm", tok, 32, None)
    texts = [r["text"] for r in tiny.corpus(6)]
    _, batch = next(framing.batches(texts, torch.device("cpu")))
    with torch.no_grad():
        return framing.forward(model, batch)


def test_in_place_residuals_loss_and_alignment_match_the_definitions():
    pos = _lm_batch()
    with torch.no_grad():
        logits = pos.logits()
        r, loss = residuals_and_loss(pos.logits(), pos.weight, pos.target)
        reference_loss = pos.loss()
    torch.testing.assert_close(loss, reference_loss, rtol=1e-5, atol=1e-6)
    onehot = torch.nn.functional.one_hot(pos.target, logits.shape[-1]).float()
    expected = (torch.softmax(logits, -1) - onehot) * pos.weight.unsqueeze(-1)
    torch.testing.assert_close(r, expected, rtol=1e-5, atol=1e-7)
    h = pos.inputs()
    q = torch.randn(logits.shape[-1], h.shape[-1])
    torch.testing.assert_close(alignment(r, h, q), (materialise(r, h) * q).sum((1, 2)),
                               rtol=1e-4, atol=1e-6)


def test_logit_chunks_are_bounded_and_cover_every_document():
    pos = _lm_batch()
    b, t = pos.weight.shape
    per_doc = t * pos.head_weight.shape[0] * 4
    chunks = list(pos.chunks(budget=2 * per_doc + 1))
    assert [c.stop - c.start for c in chunks] == [2, 2, 2][: len(chunks)] and chunks[-1].stop == b
    assert all(pos.logits(c).numel() * 4 <= 2 * per_doc + 1 for c in chunks)
    one = list(pos.chunks(budget=1))  # smaller than a document: one document per chunk
    assert len(one) == b
