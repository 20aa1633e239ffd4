"""GPU benchmark: random-init models at real shapes (no download), bare forward against
extraction for each framing in float32 and bfloat16, peak GPU memory, the 8B shape's memory
with P = 3, and the greedy's milliseconds per pick.

    python benchmarks/gpu.py            # needs CUDA; about 5 minutes on one H100/H200
    python benchmarks/gpu.py --smoke    # tiny shapes on the CPU: checks the script itself

Targets (issue 13, one H200, bf16, max length 128): extraction ≥ 500k tokens/s per checkpoint
pass for the SmolLM2-135M shape and ≥ 80k for Llama-3.2-1B; extraction ≤ 1.3× the bare bf16
forward at the same batching; greedy ≤ 5 ms per pick at N = 10^6, d = 4096; the 8B shape runs
P = 3 within 80 GB.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from greedy import bench_greedy, best_of, sync  # noqa: E402  (benchmarks/greedy.py)
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    LlamaConfig,
)

from weights2data.config import ModelConfig  # noqa: E402
from weights2data.framings import Tokens, make_framing  # noqa: E402
from weights2data.framings.tokens import collate, plan_batches  # noqa: E402
from weights2data.gradients import Interpolation, Sketch, checkpoint_alphas, extract, resolve  # noqa: E402

SHAPES = {
    "SmolLM2-135M": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         tie_word_embeddings=True),
    "Llama-3.2-1B": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=True),
    "Llama-3.1-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                         num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                         tie_word_embeddings=False),
}
SMOKE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
             num_key_value_heads=1, vocab_size=512, tie_word_embeddings=True)


class _Tok:
    """What the framings need of a tokenizer, for pre-tokenised random documents."""

    pad_token_id = 0

    def __init__(self, vocab: int):
        self.vocab = vocab

    def __call__(self, text, add_special_tokens=True, **_):
        ids = [1 + (hash(w) % (self.vocab - 1)) for w in text.split()] if isinstance(text, str) else []
        return {"input_ids": ids}

    def encode(self, text, add_special_tokens=True):
        return self(text)["input_ids"]


def model(shape: dict, task: str, dtype: torch.dtype, device: str, seed: int = 0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(**shape, max_position_embeddings=4096, pad_token_id=0, num_labels=4)
    cls = AutoModelForSequenceClassification if task == "classify-head" else AutoModelForCausalLM
    with torch.device(device):  # built in `dtype` on the device: no float32 copy of an 8B model
        m = cls.from_config(cfg, dtype=dtype)
    return m.eval()


def finetuned_copy(m, scale: float = 1e-3):
    ft = copy.deepcopy(m)
    with torch.no_grad():
        for p in ft.parameters():
            p.add_(torch.randn_like(p) * scale * p.abs().mean())
    return ft


def random_tokens(n: int, length: int, vocab: int, seed: int = 0) -> Tokens:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=g)
    ids = [torch.randint(1, vocab, (int(k),), generator=g).tolist() for k in lengths]
    return Tokens.from_lists(ids, [len(x) for x in ids])


def framing_for(task: str, vocab: int, max_length: int):
    tok = _Tok(vocab)
    if task == "classify-tokens":
        from weights2data.framings.classify_tokens import ClassifyTokens

        # Documents arrive as token ids, so no tokenizer is needed to find label tokens:
        # label rows 1..4 and no template.
        f = ClassifyTokens.__new__(ClassifyTokens)
        f.tokenizer, f.max_length, f.labels, f.template = tok, max_length, list("abcd"), "{text}"
        f.label_ids, f.lead = torch.tensor([1, 2, 3, 4]), []
        return f
    return make_framing(task, tok, max_length, ModelConfig("b", "f"))


def timed(fn, device: str, rounds: int = 2) -> float:
    """Fastest of `rounds` calls, in seconds (benchmarks/greedy.py's timer)."""
    return best_of(fn, torch.device(device), rounds)


def bench_model(name, shape, task, dtype, device, n_docs, max_length, batch_tokens, rounds):
    base = model(shape, task, dtype, device)
    ft = finetuned_copy(base)
    framing = framing_for(task, shape["vocab_size"], max_length)
    tokens = random_tokens(n_docs, max_length, shape["vocab_size"])
    real = int(tokens.lengths.sum())
    plan = plan_batches(tokens.lengths, batch_tokens)
    labels = torch.randint(0, 4, (n_docs,)) if task != "lm" else None
    layers = resolve(["last"], framing, base, ft)
    sketch = Sketch(layers.shapes(), "kronecker", 4096, 65_536, 0, device)
    path = Interpolation(base, ft, framing.last_layer_name(base), stream=None)

    def forward():
        with torch.no_grad():
            for rows in plan:
                base(**collate(tokens, rows, 0, torch.device(device)))

    def ours():
        extract(framing, path, tokens, labels, layers, sketch, [0.5], batch_tokens, progress=False)

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    fwd = timed(forward, device, rounds)
    got = timed(ours, device, rounds)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    print(f"| {name} | {task} | {str(dtype).removeprefix('torch.')} | {real / fwd:,.0f} | "
          f"{real / got:,.0f} | {got / fwd:.2f} | {peak:.1f} |", flush=True)


def free(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def bench_8b(shape, device, n_docs, max_length, batch_tokens):
    """P = 3 on the 8B shape in bf16: two copies (θ0, θf) plus streamed interpolation."""
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    base = model(shape, "lm", torch.bfloat16, device)
    ft = finetuned_copy(base)
    framing = framing_for("lm", shape["vocab_size"], max_length)
    tokens = random_tokens(n_docs, max_length, shape["vocab_size"])
    layers = resolve(["last"], framing, base, ft)
    sketch = Sketch(layers.shapes(), "kronecker", 4096, 65_536, 0, device)
    path = Interpolation(base, ft, framing.last_layer_name(base))
    t = time.perf_counter()
    extract(framing, path, tokens, None, layers, sketch, checkpoint_alphas(3, "interpolated"),
            batch_tokens, progress=False)
    sync(torch.device(device))
    secs = time.perf_counter() - t
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else float("nan")
    print(f"8B shape, bf16, P = 3, {int(tokens.lengths.sum())} tokens: {secs:.1f} s, peak "
          f"{peak:.1f} GiB (streamed interpolation: {path.stream})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--batch-tokens", type=int, default=32768)
    args = ap.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("benchmarks/gpu.py needs CUDA (or --smoke for a CPU check of the script)")
    device = "cpu" if args.smoke else "cuda"
    name = "CPU (smoke)" if args.smoke else torch.cuda.get_device_name()
    print(f"# {name}, torch {torch.__version__}\n")
    print("| model shape | framing | dtype | bare forward tok/s | extraction tok/s | ratio | peak GiB |")
    print("|---|---|---|---|---|---|---|")
    plan = [("SmolLM2-135M", 4096), ("Llama-3.2-1B", 1024)]
    for shape_name, n_docs in plan[:1] if args.smoke else plan:
        shape = SMOKE if args.smoke else SHAPES[shape_name]
        n = 8 if args.smoke else n_docs
        for task in ("lm", "classify-tokens", "classify-head"):
            for dtype in (torch.float32, torch.bfloat16):
                bench_model(shape_name, shape, task, dtype, device, n, args.max_length,
                            args.batch_tokens if not args.smoke else 256, rounds=1 if args.smoke else 2)
                free(device)
    bench_8b(SMOKE if args.smoke else SHAPES["Llama-3.1-8B"], device, 8 if args.smoke else 256,
             args.max_length, args.batch_tokens if not args.smoke else 256)
    n, d, k = (2000, 64, 20) if args.smoke else (1_000_000, 4096, 200)
    print(bench_greedy(n, d, k, device=device, dtype=torch.float32))


if __name__ == "__main__":
    main()
