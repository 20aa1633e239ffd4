"""bfloat16 and float16 on the CPU: every framing runs (the logits check follows the model's
dtype), its alignments and norms agree with float32, and SELECT picks mostly the same
documents."""

import pytest
import tiny

from weights2data import select

CASES = {
    "classify-head": (tiny.bert_classifier, {}),
    "classify-tokens": (tiny.gpt2_lm, {"labels": tiny.LABELS}),
    "lm": (tiny.llama_lm, {}),
}


@pytest.fixture(scope="module", params=list(CASES))
def runs(request, tmp_path_factory):
    build, extra = CASES[request.param]
    d = tmp_path_factory.mktemp(request.param)
    model, tok = build()
    model = tiny.perturbed(model, 0.3)
    base = tiny.save(model, tok, d / "base")
    ft = tiny.save(tiny.perturbed(model, 0.1, seed=5), tok, d / "ft")
    corpus = str(tiny.write_jsonl(tiny.corpus(40, seed=2), d / "c.jsonl"))
    out = {}
    for dtype in ("float32", "bfloat16", "float16"):
        out[dtype] = select(base=base, finetuned=ft, corpus=corpus, k=10, dtype=dtype,
                            device="cpu", exact_max=10**7, progress=False, **extra)
    return request.param, out


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_agrees_with_float32(runs, dtype):
    task, out = runs
    ref, half = out["float32"], out[dtype]
    assert half.info["dtype"] == dtype
    g32, g16 = ref.gradients, half.gradients
    scale = (g32.sqnorm.sqrt() * g32.target_norm).clamp_min(1e-12)
    # Alignments relative to ‖g‖‖q‖ (a cosine's worth): within a few bf16 roundings.
    tol = {"bfloat16": 0.05, "float16": 0.01}[dtype]
    assert ((g16.align - g32.align).abs() / scale).max() < tol
    assert ((g16.sqnorm - g32.sqnorm).abs() / g32.sqnorm.clamp_min(1e-12)).max() < 4 * tol
    assert abs(g16.target_norm - g32.target_norm) / g32.target_norm < tol
    shared = set(ref.selections["select"].indices) & set(half.selections["select"].indices)
    assert len(shared) >= 7, (task, ref.selections["select"].indices, half.selections["select"].indices)
