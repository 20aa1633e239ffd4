"""Loading a base and a fine-tuned checkpoint (HF folder, hub id, GGUF, PEFT adapter)
and refusing pairs that cannot be compared."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from .config import ModelConfig, Task, UserError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class CheckpointPair:
    """θ0 and θf, in eval mode on one device, with the tokenizer they share. For a PEFT LoRA
    adapter θf is base + adapter merged, and `adapter` keeps the adapter's own factors:
    {module name in the base: (A (r, in), B (out, r), scaling)}, ΔW = scaling·B A."""

    base: PreTrainedModel
    finetuned: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    task: Task
    device: torch.device
    base_missing: list[str] = field(default_factory=list)  # initialised, not loaded, in θ0
    adapter: dict[str, tuple[torch.Tensor, torch.Tensor, float]] | None = None
    adapter_saved: list[str] = field(default_factory=list)  # modules the adapter trained in full
    dtype: str = "float32"  # the resolved compute dtype

    @property
    def max_positions(self) -> int | None:
        """How many positions the model can embed (None: no fixed limit known)."""
        return max_positions(self.base.config)


def max_positions(config) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_seq_len"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_dtype(name: str, device: torch.device) -> str:
    """`auto`: bfloat16 on a GPU that supports it, float32 elsewhere."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: no CUDA device is available here; use cpu or auto")
    return torch.device(name)


def _adapter_config(path: str) -> dict | None:
    f = Path(path) / "adapter_config.json"
    return json.loads(f.read_text()) if f.is_file() else None


def _gguf_for(path: str, gguf_file: str | None, is_base: bool) -> dict:
    """GGUF applies to a folder holding that file, or to the base when it is a hub id."""
    if gguf_file is None:
        return {}
    if (Path(path) / gguf_file).is_file() or (is_base and not Path(path).exists()):
        return {"gguf_file": gguf_file}
    return {}


def detect_task(cfg: ModelConfig) -> Task:
    """classify-head for sequence classifiers, classify-tokens when label words are given, else lm."""
    if cfg.task is not None:
        return cfg.task
    source = cfg.finetuned if _adapter_config(cfg.finetuned) is None else cfg.base
    hf_cfg = _load_config(source, cfg, is_base=source == cfg.base)
    if any(a.endswith("ForSequenceClassification") for a in hf_cfg.architectures or []):
        return "classify-head"
    return "classify-tokens" if cfg.labels else "lm"


def _load_config(path: str, cfg: ModelConfig, is_base: bool):
    try:
        return AutoConfig.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **_gguf_for(path, cfg.gguf_file, is_base)
        )
    except (OSError, ValueError) as err:
        raise UserError(f"cannot load a model config from {path}: {str(err).splitlines()[0]}") from err


def _load_model(path: str, cfg: ModelConfig, task: Task, is_base: bool, **kwargs):
    cls = AutoModelForSequenceClassification if task == "classify-head" else AutoModelForCausalLM
    try:
        model, info = cls.from_pretrained(
            path,
            dtype=DTYPES[resolve_dtype(cfg.dtype, resolve_device(cfg.device))],
            trust_remote_code=cfg.trust_remote_code,
            output_loading_info=True,
            **_gguf_for(path, cfg.gguf_file, is_base),
            **kwargs,
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"cannot load {path} as a {task} model: {str(err).splitlines()[0]}") from err
    return model, sorted(info.get("missing_keys", []))


def _load_tokenizer(path: str, cfg: ModelConfig, is_base: bool) -> PreTrainedTokenizerBase | None:
    try:
        return AutoTokenizer.from_pretrained(
            path, trust_remote_code=cfg.trust_remote_code, **_gguf_for(path, cfg.gguf_file, is_base)
        )
    except (OSError, ValueError, TypeError):
        return None


def load_pair(cfg: ModelConfig, seed: int = 0) -> CheckpointPair:
    """Load θ0 and θf (a PEFT LoRA adapter is applied to the base, its factors kept), and
    check the pair is comparable."""
    task = detect_task(cfg)
    device = resolve_device(cfg.device)
    # Weights missing from a checkpoint are initialised randomly: seed that, so runs repeat.
    torch.manual_seed(seed)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    adapter_factors, saved = None, []
    try:
        adapter = _adapter_config(cfg.finetuned)
        extra: dict = {}
        if task == "classify-head":
            ft_cfg = _load_config(cfg.base if adapter else cfg.finetuned, cfg, is_base=bool(adapter))
            extra = {"num_labels": ft_cfg.num_labels}
        if adapter is not None:
            check_adapter(adapter, cfg.base, cfg.finetuned)
            finetuned, _ = _load_model(cfg.base, cfg, task, is_base=True, **extra)
            finetuned, adapter_factors, saved = apply_adapter(finetuned, cfg.finetuned)
            ft_missing: list[str] = []
        else:
            finetuned, ft_missing = _load_model(cfg.finetuned, cfg, task, is_base=False)
        if ft_missing:
            raise UserError(
                f"fine-tuned checkpoint {cfg.finetuned} has no parameter {ft_missing[0]}, which a "
                f"{task} model needs; check --task"
            )
        torch.manual_seed(seed)
        base, base_missing = _load_model(cfg.base, cfg, task, is_base=True, **extra)
        tokenizer = _load_tokenizer(cfg.base, cfg, is_base=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if tokenizer is None:
        raise UserError(f"no tokenizer could be loaded from the base checkpoint {cfg.base}")
    ft_tokenizer = None if adapter else _load_tokenizer(cfg.finetuned, cfg, is_base=False)
    check_compatible(base, finetuned, tokenizer, ft_tokenizer)
    _prepare_padding(tokenizer, base, finetuned)
    for m in (base, finetuned):
        m.to(device).eval()
    if adapter_factors:
        adapter_factors = {n: (a.to(device), b.to(device), s) for n, (a, b, s) in adapter_factors.items()}
    return CheckpointPair(base, finetuned, tokenizer, task, device, base_missing, adapter_factors,
                          saved, resolve_dtype(cfg.dtype, device))


SUPPORTED_ADAPTERS = "LoRA adapters on linear modules (q/k/v/o, MLP, lm_head)"


def check_adapter(config: dict, base: str, path: str) -> None:
    """Refuse adapters other than plain LoRA, and one trained on another base model."""
    kind = str(config.get("peft_type", "")).upper()
    if kind != "LORA":
        raise UserError(f"{path} is a {kind or 'unknown'} PEFT adapter; weights2data supports "
                        f"{SUPPORTED_ADAPTERS}")
    for key, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA with a bias on B"),
                      ("target_parameters", "LoRA on raw parameters")):
        if config.get(key):
            raise UserError(f"{path} is a {what} adapter; weights2data supports {SUPPORTED_ADAPTERS}")
    if config.get("bias", "none") != "none":
        raise UserError(f"{path} trains biases (bias={config['bias']!r}); weights2data supports "
                        f"{SUPPORTED_ADAPTERS} with bias='none'")
    named = config.get("base_model_name_or_path")
    if named and Path(str(named).rstrip("/")).name.lower() != Path(str(base).rstrip("/")).name.lower():
        raise UserError(f"the adapter {path} was trained on {named}, but --base is {base}; pass that "
                        "base (or fix base_model_name_or_path in adapter_config.json if this is a "
                        "renamed copy of it)")


def apply_adapter(model: PreTrainedModel, adapter_path: str):
    """(θf = base + adapter merged, {module: (A, B, scaling)}, modules saved in full)."""
    from peft import PeftModel
    from peft.tuners.lora import Linear as LoraLinear
    from peft.tuners.lora import LoraLayer

    try:
        peft_model = PeftModel.from_pretrained(model, adapter_path)
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        lines = str(err).splitlines()
        line = next((x.strip() for x in lines if "mismatch" in x), lines[0] if lines else repr(err))
        raise UserError(f"cannot apply the PEFT adapter {adapter_path} to the base: {line}") from err
    name = peft_model.active_adapter
    factors: dict[str, tuple[torch.Tensor, torch.Tensor, float]] = {}
    prefix = "base_model.model."
    for full, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        where = full.removeprefix(prefix)
        if not isinstance(module, LoraLinear) or name not in module.lora_A:
            raise UserError(f"{adapter_path}: module {where} is not a LoRA linear layer; "
                            f"weights2data supports {SUPPORTED_ADAPTERS}")
        a = module.lora_A[name].weight.detach().float()
        b = module.lora_B[name].weight.detach().float()
        s = float(module.scaling[name])
        delta = module.get_delta_weight(name).float()
        delta = delta.T if module.fan_in_fan_out else delta
        if not torch.allclose(delta, s * (b @ a), rtol=1e-4, atol=1e-6 * (1 + delta.abs().max())):
            raise UserError(f"{adapter_path}: module {where} is a LoRA variant whose update is not "
                            f"scaling·B·A; weights2data supports {SUPPORTED_ADAPTERS}")
        factors[where] = (a.cpu(), b.cpu(), s)
    saved = [full.removeprefix(prefix).removesuffix(".modules_to_save." + name)
             for full, _ in peft_model.named_modules() if full.endswith(".modules_to_save." + name)]
    return peft_model.merge_and_unload(), factors, saved


def check_compatible(
    base: PreTrainedModel,
    finetuned: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    ft_tokenizer: PreTrainedTokenizerBase | None = None,
) -> None:
    """Raise a UserError naming the first difference in architecture, parameters,
    tokenizer vocabulary, or the first non-finite weight."""
    if base.config.model_type != finetuned.config.model_type:
        raise UserError(
            f"architectures differ: base is {base.config.model_type}, "
            f"fine-tuned is {finetuned.config.model_type}"
        )
    b, f = dict(base.named_parameters()), dict(finetuned.named_parameters())
    for name in b:
        if name not in f:
            raise UserError(f"parameter {name} is in the base but not in the fine-tuned checkpoint")
    for name in f:
        if name not in b:
            raise UserError(f"parameter {name} is in the fine-tuned but not in the base checkpoint")
        if b[name].shape != f[name].shape:
            raise UserError(
                f"parameter {name} has shape {tuple(b[name].shape)} in the base but "
                f"{tuple(f[name].shape)} in the fine-tuned checkpoint"
            )
    for which, params in (("base", b), ("fine-tuned", f)):
        for name, p in params.items():
            if not torch.isfinite(p).all():
                raise UserError(f"{which} parameter {name} holds NaN or inf values")
    if ft_tokenizer is not None:
        vb, vf = tokenizer.get_vocab(), ft_tokenizer.get_vocab()
        if vb != vf:
            diff = sorted(set(vb.items()) ^ set(vf.items()), key=lambda kv: kv[1])
            token, _ = diff[0]
            raise UserError(
                f"tokenizer vocabularies differ ({len(vb)} vs {len(vf)} tokens; first difference: "
                f"{token!r}); both checkpoints must share one tokenizer"
            )


def _prepare_padding(tokenizer: PreTrainedTokenizerBase, *models: PreTrainedModel) -> None:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "right"
    for m in models:
        if m.config.pad_token_id is None:
            m.config.pad_token_id = tokenizer.pad_token_id


def load_model(
    path: str,
    gguf_file: str | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    trust_remote_code: bool = False,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """One causal LM and its tokenizer (HF folder, hub id or GGUF), padded on the right, in eval mode."""
    cfg = ModelConfig(base=path, finetuned=path, task="lm", gguf_file=gguf_file, dtype=dtype,
                      device=device, trust_remote_code=trust_remote_code)
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        model, missing = _load_model(path, cfg, "lm", is_base=True)
        tokenizer = _load_tokenizer(path, cfg, is_base=True)
    finally:
        transformers.logging.set_verbosity(verbosity)
    if missing:
        raise UserError(f"checkpoint {path} lacks parameter {missing[0]}")
    if tokenizer is None:
        raise UserError(f"no tokenizer could be loaded from {path}")
    _prepare_padding(tokenizer, model)
    return model.to(resolve_device(device)).eval(), tokenizer
