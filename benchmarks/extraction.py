"""Extraction speed on a real model (CPU or GPU): the bare forward pass against ours, for each
framing and layer set, and the published per-example approach (modelled).

    python benchmarks/extraction.py            # SmolLM2-135M (its real GGUF weights), 2-core sizes
    python benchmarks/extraction.py --quick    # fewer documents

Everything runs in this process, one case after another, alternating rounds and keeping each
case's best round (the development machine is shared). Figures are tokens per second of
real (unpadded) tokens, and the ratio of each extraction to the bare forward pass of the same
batches.

- forward: `model(**batch)` under no_grad (the full model, head included), token-budget batches.
- ours: one checkpoint pass of `extract` (closed-form last layer; with inner layers, one partial
  backward), everything a pass computes: loss, projection to 4096, exact alignment and norm.
- published (lm, last layer only; MODELLED): per-example `torch.func.vmap(grad)` of the LM-head
  loss, timed in full, plus a dense Rademacher projection of each 28M-entry gradient to 4096,
  timed on `--chunks` of its 432 row chunks with the chunks generated beforehand (a cached map,
  as a fair implementation would keep it) and extrapolated linearly: its cost is exactly linear
  in the number of chunks, but the whole map (460 GB) cannot be held to time it in full.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from weights2data.config import ModelConfig  # noqa: E402
from weights2data.framings import make_framing  # noqa: E402
from weights2data.framings.tokens import plan_batches  # noqa: E402
from weights2data.gradients import Interpolation, Sketch, extract, resolve  # noqa: E402


def smollm2(layers: int | None = None):
    from weights2data.demo.data import load_smollm2

    model, tok = load_smollm2(layers)
    tok.padding_side = "right"
    return model.eval(), tok


def texts(n: int) -> list[str]:
    from weights2data.demo.data import news_passages

    return [r["text"] for r in news_passages(words=100)[:n]]


def with_adapter(model, rank: int = 16):
    """A LoRA adapter on every q/v projection with random (trained-looking) B, merged into a
    copy: (θf, {module: (A, B, s)})."""
    import copy

    from peft import LoraConfig, get_peft_model

    from weights2data.checkpoints import apply_adapter

    peft = get_peft_model(copy.deepcopy(model), LoraConfig(r=rank, lora_alpha=2 * rank,
                                                           target_modules=["q_proj", "v_proj"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 1e-3)
    folder = Path("/tmp/w2d-bench-adapter")
    peft.save_pretrained(folder)
    return apply_adapter(copy.deepcopy(model), str(folder))[:2]


def forward_pass(model, framing, tokens, budget):
    from weights2data.framings.tokens import collate

    pad = framing.tokenizer.pad_token_id
    device = next(model.parameters()).device
    with torch.no_grad():
        for rows in plan_batches(tokens.lengths, budget):
            model(**collate(tokens, rows, pad, device))


def ours_pass(model, finetuned, framing, tokens, budget, spec, adapter=None, labels=None):
    layers = resolve(spec, framing, model, finetuned, adapter)
    sketch = Sketch(layers.shapes(), "kronecker", 4096, 65_536, 0, next(model.parameters()).device)
    path = Interpolation(model, finetuned, framing.last_layer_name(model), adapter)
    return lambda: extract(framing, path, tokens, labels, layers, sketch, [0.5], budget,
                           progress=False)


def published_modelled(model, framing, tokens, budget, chunks: int) -> float:
    """Seconds for the published per-example approach on these tokens (see the docstring)."""
    from torch.func import grad, vmap

    from weights2data.framings.tokens import collate
    from weights2data.gradients.projection import _CHUNK, Dense

    w = framing.last_layer(model).clone()
    v, h = w.shape

    def loss(weight, hid, y, wt):
        logits = hid @ weight.T
        return (torch.nn.functional.cross_entropy(logits, y, reduction="none") * wt).sum()

    per_example = vmap(grad(loss), in_dims=(None, 0, 0, 0))
    proj = Dense(v, h, 4096, seed=0)
    maps = [proj._chunk(k, _CHUNK, torch.device("cpu")) for k in range(chunks)]  # cached
    total_chunks = math.ceil(v * h / _CHUNK)
    grad_s = proj_s = 0.0
    pad = framing.tokenizer.pad_token_id
    for rows in plan_batches(tokens.lengths, budget):
        batch = collate(tokens, rows, pad, torch.device("cpu"))
        t = time.perf_counter()
        with torch.no_grad():
            pos = framing.forward(model, batch)
        g = per_example(w, pos.inputs(), pos.target, pos.weight).flatten(1)
        grad_s += time.perf_counter() - t
        t = time.perf_counter()
        out = torch.zeros(len(g), 4096)
        for k, m in enumerate(maps):
            out += g[:, k * _CHUNK : (k + 1) * _CHUNK] @ m
        proj_s += (time.perf_counter() - t) / chunks * total_chunks
        del g
    return grad_s + proj_s


def best_of(rounds: int, cases: dict) -> dict[str, float]:
    best = {name: math.inf for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--docs", type=int)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=2048)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=3, help="published projection chunks timed")
    ap.add_argument("--layers", type=int, help="keep only the first N of SmolLM2's 30 layers")
    args = ap.parse_args()
    n = args.docs or (16 if args.quick else 48)
    model, tok = smollm2(args.layers)
    ft = _updated(model)
    cfg = ModelConfig("b", "f")
    lm = make_framing("lm", tok, args.max_length, cfg)
    tokens = lm.tokenize(texts(n))
    real = int(tokens.lengths.sum())
    print(f"SmolLM2-135M ({model.config.num_hidden_layers} layers), {n} documents, {real} tokens, "
          f"batch {args.batch_tokens} tokens, {torch.get_num_threads()} threads", flush=True)
    budget = args.batch_tokens
    adapted, adapter = with_adapter(model)
    cases = {
        "forward": lambda: forward_pass(model, lm, tokens, budget),
        "lm, last layer": ours_pass(model, ft, lm, tokens, budget, ["last"]),
        "lm, last block (7 linear modules)": ours_pass(
            model, ft, lm, tokens, budget, [f"model.layers.{model.config.num_hidden_layers - 1}.*"]),
        "lm, LoRA q/v adapter (every block)": ours_pass(model, adapted, lm, tokens, budget,
                                                        ["adapter"], adapter),
    }
    best = best_of(args.rounds, cases)
    rows = [("forward (bare, full model)", best["forward"], 1.0)]
    rows += [(k, v, v / best["forward"]) for k, v in best.items() if k != "forward"]
    ct = make_framing("classify-tokens", tok, args.max_length,
                      ModelConfig("b", "f", labels=["business", "sport", "tech"],
                                  prompt_template="{text}\nTopic:"))
    ct_tokens = ct.tokenize(texts(n))
    labels = torch.zeros(n, dtype=torch.long)
    ct_best = best_of(args.rounds, {
        "forward": lambda: forward_pass(model, ct, ct_tokens, budget),
        "ours": ours_pass(model, ft, ct, ct_tokens, budget, ["last"], labels=labels)})
    rows.append(("classify-tokens, last layer (label rows only)", ct_best["ours"],
                 ct_best["ours"] / ct_best["forward"]))
    pub = published_modelled(model, lm, tokens, budget, args.chunks)
    print("\n| case | seconds | tokens/s | × bare forward |\n|---|---|---|---|")
    for name, secs, ratio in rows:
        print(f"| {name} | {secs:.2f} | {real / secs:,.0f} | {ratio:.2f} |")
    print(f"| published: vmap grad + dense projection (modelled, {args.chunks}/432 chunks timed) "
          f"| {pub:.0f} | {real / pub:,.1f} | {pub / best['forward']:.0f} |")
    print(f"\nours (lm, last layer) vs published: {pub / best['lm, last layer']:.0f}× (modelled)")


def _updated(model):
    """θf: every linear weight and the head moved a little, so every layer set has a target."""
    import copy

    ft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3 * p.abs().mean())
    return ft


if __name__ == "__main__":
    main()
