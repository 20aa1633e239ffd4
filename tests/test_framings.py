"""Tokenising once, token-budget batches, prompts that keep their suffix, label positions
with EOS-appending tokenizers, and framings that compute only the logits they read."""

import numpy as np
import pytest
import tiny
import torch
from tokenizers import processors

from weights2data.config import ModelConfig, UserError
from weights2data.framings import make_framing
from weights2data.framings.tokens import Tokens, plan_batches

SUFFIX = "\nTopic:"


def _tokens_framing(tok, max_length=24, template="{text}" + SUFFIX):
    cfg = ModelConfig("b", "f", task="classify-tokens", labels=tiny.LABELS, prompt_template=template)
    return make_framing("classify-tokens", tok, max_length, cfg)


def test_plan_batches_respects_the_budget_and_covers_every_row_once():
    lengths = np.array([5, 30, 7, 30, 1, 64, 12, 12, 3])
    plan = plan_batches(lengths, batch_tokens=60, max_docs=3)
    rows = np.concatenate(plan)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    for b in plan:
        assert len(b) <= 3
        assert len(b) * lengths[b].max() <= 60 or len(b) == 1  # a 64-token row goes alone
    assert [lengths[b].max() for b in plan] == sorted((lengths[b].max() for b in plan), reverse=True)
    assert [b.tolist() for b in plan] == [b.tolist() for b in plan_batches(lengths, 60, 3)]


def test_tokens_subset_keeps_ids_and_content():
    t = Tokens.from_lists([[1, 2, 3], [4], [5, 6]], [2, 1, 2])
    s = t.subset([2, 0])
    assert [s.ids(0).tolist(), s.ids(1).tolist()] == [[5, 6], [1, 2, 3]]
    assert s.content.tolist() == [2, 2]


def test_a_long_document_keeps_the_template_suffix():
    _, tok = tiny.gpt2_lm()
    framing = _tokens_framing(tok)
    long = " ".join(r["text"] for r in tiny.corpus(6))
    tokens = framing.tokenize([long, "the team won"])
    suffix = tok(SUFFIX, add_special_tokens=False)["input_ids"]
    for i in range(2):
        ids = tokens.ids(i).tolist()
        assert len(ids) <= 24
        assert ids[-len(suffix):] == suffix, tok.convert_ids_to_tokens(ids)
    assert tokens.lengths[0] >= 22  # the text was cut only as far as needed
    assert 0 < tokens.content[0] < len(tok(long)["input_ids"])


def test_a_template_longer_than_max_length_is_refused():
    _, tok = tiny.gpt2_lm()
    with pytest.raises(UserError, match="leaving none of --max-length 4"):
        _tokens_framing(tok, max_length=4, template="read this text carefully {text} and answer:")


def test_label_logits_are_read_after_the_text_even_when_the_tokenizer_appends_eos():
    model, tok = tiny.gpt2_lm()
    model = tiny.perturbed(model, 0.2)
    plain = _tokens_framing(tok)
    eos = tiny.bpe_tokenizer()
    eos._tokenizer.post_processor = processors.TemplateProcessing(
        single="$A <eos>", special_tokens=[("<eos>", eos.convert_tokens_to_ids("<eos>"))])
    assert tok("a b")["input_ids"] + [eos.eos_token_id] == eos("a b")["input_ids"]
    appended = _tokens_framing(eos)
    texts = [r["text"] for r in tiny.corpus(4)]
    with torch.no_grad():
        a = plain.forward(model, plain.encode(texts)).logits()
        b = appended.forward(model, appended.encode(texts)).logits()
    torch.testing.assert_close(a, b)


def test_classify_tokens_never_runs_the_full_vocabulary_head(tmp_path):
    from weights2data import select

    model, tok = tiny.gpt2_lm()
    base = tiny.save(model, tok, tmp_path / "base")
    ft = tiny.save(tiny.perturbed(model), tok, tmp_path / "ft")
    corpus = tiny.write_jsonl(tiny.corpus(20), tmp_path / "c.jsonl")
    calls = {"head": 0, "tokenize": 0}
    real_call = type(tok).__call__
    import transformers

    def counting_call(self, *a, **k):
        calls["tokenize"] += 1
        return real_call(self, *a, **k)

    def count_head(module, args, out):
        calls["head"] += 1

    original = transformers.GPT2LMHeadModel.forward

    def forward(self, *a, **k):
        if not getattr(self, "_counted", False):
            self.lm_head.register_forward_hook(count_head)
            self._counted = True
        return original(self, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(transformers.GPT2LMHeadModel, "forward", forward)
    mp.setattr(type(tok), "__call__", counting_call)
    try:
        select(base=base, finetuned=ft, corpus=str(corpus), k=4, labels=tiny.LABELS,
               batch_tokens=64, checkpoints=3, progress=False)
    finally:
        mp.undo()
    # The full head runs only where the logits check compares against it: once per pass (θf,
    # θ0, θ0 + Δ/3, θ0 + 2Δ/3), never per batch (20 documents at 64 tokens: several batches).
    assert calls["head"] == 4
    assert calls["tokenize"] <= 10  # once per run, not once per batch and pass
