"""Synthetic checkpoints equal θ0 + α(θf − θ0), whether made in a working copy or streamed
module by module, and θ0 is untouched afterwards."""

import pytest
import tiny
import torch

from weights2data.config import ModelConfig
from weights2data.framings import make_framing
from weights2data.gradients import Interpolation


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("tie", [False, True])
def test_interpolated_model_is_on_the_line(stream, tie):
    base, tok = tiny.llama_lm(tie=tie)
    ft = tiny.perturbed(base, 0.1, seed=2)
    framing = make_framing("lm", tok, 32, ModelConfig("b", "f"))
    batch = framing.encode([r["text"] for r in tiny.corpus(4)])
    b, f = base.state_dict(), ft.state_dict()
    before = {k: v.clone() for k, v in b.items()}
    path = Interpolation(base, ft, "lm_head", stream=stream)
    assert path.stream is stream
    for alpha in (0.0, 0.25, 2 / 3, 1.0):
        reference = tiny.llama_lm(tie=tie)[0]
        reference.load_state_dict({k: b[k] + alpha * (f[k] - b[k]) for k in b})
        with torch.no_grad(), path.at(alpha) as model:
            torch.testing.assert_close(model(**batch).logits, reference(**batch).logits,
                                       rtol=1e-4, atol=1e-5)
            pos = framing.forward(model, batch)  # the head the closed form reads, too
            torch.testing.assert_close(pos.head_weight, reference.lm_head.weight, rtol=1e-5,
                                       atol=1e-6)
    for k, v in base.state_dict().items():
        assert torch.equal(v, before[k]), k
