"""Tiny random models and corpora built from configs, so tests run in seconds offline."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

LABELS = ["sport", "money", "music"]
TOPICS = {
    "sport": "the team won the match and the striker scored a goal in the final game of the season",
    "money": "the bank raised rates and the market fell as investors sold shares in the company",
    "music": "the band played a new song and the singer sold out the concert on the album tour",
}
FILLER = "a the of and to in is was it for on with as by at from this that people city year day"


def corpus(n: int = 48, seed: int = 0) -> list[dict]:
    """Short documents on three topics plus noise, with a `topic` column."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    filler = FILLER.split()
    for i in range(n):
        topic = LABELS[i % 3]
        words = TOPICS[topic].split()
        picks = torch.randint(len(words), (6 + i % 5,), generator=g).tolist()
        noise = torch.randint(len(filler), (3,), generator=g).tolist()
        text = " ".join([words[j] for j in picks] + [filler[j] for j in noise])
        rows.append({"text": text, "topic": topic, "label": i % 3})
    return rows


def write_jsonl(rows: list[dict], path: Path) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _texts() -> list[str]:
    return [r["text"] for r in corpus(90)] + [" " + w for w in LABELS] * 20


def bpe_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<unk>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_texts(), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", unk_token="<unk>",
                                   pad_token="<eos>")


def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    # A fixed vocabulary, not WordPieceTrainer: the trainer breaks ties in hash order, so its
    # vocabulary (and every model built on it) changed from one call to the next.
    words = sorted({w for t in _texts() for w in t.lower().split()})
    chars = sorted({c for w in words for c in w})
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    tokens = dict.fromkeys(specials + chars + ["##" + c for c in chars] + words)  # "a" is both
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)  # drops control/format chars
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]")


def bert_classifier(num_labels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    tok = wordpiece_tokenizer()
    cfg = BertConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=64, num_labels=num_labels,
                     id2label=dict(enumerate(LABELS[:num_labels])), pad_token_id=tok.pad_token_id)
    return BertForSequenceClassification(cfg).eval(), tok


def gpt2_classifier(num_labels: int = 3, seed: int = 0):
    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64, bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                     num_labels=num_labels, pad_token_id=tok.pad_token_id)
    return GPT2ForSequenceClassification(cfg).eval(), tok


def gpt2_lm(seed: int = 0):
    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    cfg = GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=2, n_head=2, n_positions=64,
                     bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    return GPT2LMHeadModel(cfg).eval(), tok


def llama_lm(seed: int = 0, tie: bool = False):
    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      tie_word_embeddings=tie, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


@torch.no_grad()
def perturbed(model, scale: float = 0.05, seed: int = 1):
    """A stand-in 'fine-tune' for math tests: every weight moved a little."""
    import copy

    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(model)
    for p in out.parameters():
        p.add_(scale * torch.randn(p.shape, generator=g))
    return out


def save(model, tok, path: Path) -> str:
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _permute(w, n_head):
    """llama.cpp's rotary layout of q/k rows (transformers undoes it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

def write_gguf(model, tok, path: Path) -> str:
    """A tiny Llama and its BPE tokenizer as one GGUF file, the way llama.cpp writes one."""
    import gguf

    cfg = model.config
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_theta if hasattr(cfg, "rope_theta") else 10000.0)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_vocab_size(cfg.vocab_size)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: kv[1])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([t for t, _ in vocab])
    special = set(tok.all_special_tokens)
    w.add_token_types([3 if t in special else 1 for t, _ in vocab])
    merges = json.loads(tok._tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([" ".join(m) if isinstance(m, list) else m for m in merges])
    w.add_bos_token_id(tok.eos_token_id)
    w.add_eos_token_id(tok.eos_token_id)
    w.add_pad_token_id(tok.pad_token_id)
    w.add_unk_token_id(tok.unk_token_id)
    w.add_add_bos_token(False)
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    w.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    w.add_tensor("output_norm.weight", sd["model.norm.weight"])
    w.add_tensor("output.weight", sd["lm_head.weight"])
    for i in range(cfg.num_hidden_layers):
        for hf, gg in names.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if gg == "attn_q":
                t = _permute(t, cfg.num_attention_heads)
            if gg == "attn_k":
                t = _permute(t, cfg.num_key_value_heads)
            w.add_tensor(f"blk.{i}.{gg}.weight", t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(path)


def train(model, framing, texts: list[str], optimizer, steps: int, batch: int = 8, seed: int = 0):
    """`steps` optimizer steps on shuffled batches of `texts` (epochs without replacement): the
    fine-tunes of the mixture tests."""
    gen, order = torch.Generator().manual_seed(seed), []
    model.train()
    for _ in range(steps):
        if len(order) < batch:
            order += torch.randperm(len(texts), generator=gen).tolist()
        idx, order = order[:batch], order[batch:]
        framing.forward(model, framing.encode([texts[i] for i in idx])).loss(None).mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model.eval()
