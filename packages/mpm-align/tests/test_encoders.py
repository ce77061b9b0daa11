"""Encoders on tiny random models: pooling, padding sides, layers, templates, sorting."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from mpm_align import Encoder, LayeredEmbeddings
from mpm_align.encoders import TEMPLATES, TransformersEncoder, apply_template, pool_hidden

TEXTS = ["a red apple", "红苹果", "eine grüne Katze auf dem Tisch", "小猫", "une pomme rouge", "яблоко"]


def _reference(model: Any, tok: Any, text: str, pooling: str, layer: int, skip: bool = False) -> torch.Tensor:
    """One text alone (no padding at all), pooled by hand."""
    enc = tok(text, return_tensors="pt", return_special_tokens_mask=True)
    with torch.no_grad():
        hs = model.base_model(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True
        ).hidden_states[layer][0]
    keep = torch.ones(hs.shape[0], dtype=torch.bool)
    if skip:
        keep = enc["special_tokens_mask"][0] == 0
    rows = hs[keep]
    return {"mean": rows.mean(0), "last": rows[-1], "first": rows[0]}[pooling]


def _hidden_alone(model: Any, tok: Any, text: str) -> tuple[torch.Tensor, ...]:
    enc = tok(text, return_tensors="pt")
    with torch.no_grad():
        out = model.base_model(input_ids=enc["input_ids"], output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma3", "gpt2"])
def test_padding_sides_match_unpadded(tiny_lm: Any, tiny_tokenizer: Any, arch: str) -> None:
    model = tiny_lm(arch)
    alone = [_hidden_alone(model, tiny_tokenizer, t) for t in TEXTS]
    for side in ("left", "right"):
        enc = TransformersEncoder(model, tiny_tokenizer, padding_side=side, progress=False)
        embs = enc.encode_multi(TEXTS, poolings=["mean", "last", "first"], batch_size=4)
        assert enc.num_layers == 3
        for pooling, emb in embs.items():
            assert emb.layers == [0, 1, 2]
            for layer in emb:
                for i in range(len(TEXTS)):
                    h = alone[i][layer]
                    want = {"mean": h.mean(0), "last": h[-1], "first": h[0]}[pooling]
                    torch.testing.assert_close(emb[layer][i], want, atol=1e-5, rtol=1e-4)


def test_skip_special_tokens(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    from tokenizers import processors

    tok = tiny_tokenizer.__class__(
        tokenizer_object=tiny_tokenizer.backend_tokenizer.__class__.from_str(
            tiny_tokenizer.backend_tokenizer.to_str()
        ),
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
    )
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", tok.convert_tokens_to_ids("<s>"))]
    )
    model = tiny_lm("llama")
    plain = TransformersEncoder(model, tok, pooling="mean", progress=False).encode(TEXTS[:3], layers=[1])
    skip = TransformersEncoder(model, tok, pooling="mean", skip_special_tokens=True, progress=False)
    got = skip.encode(TEXTS[:3], layers=[1])
    for i, t in enumerate(TEXTS[:3]):
        torch.testing.assert_close(
            got[1][i], _reference(model, tok, t, "mean", 1, skip=True), atol=1e-5, rtol=1e-4
        )
        assert not torch.allclose(got[1][i], plain[1][i])  # BOS really was left out


def test_bert_encoder_left_padding_matches(tiny_tokenizer: Any) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    model = BertModel(cfg).eval()
    left = TransformersEncoder(model, tiny_tokenizer, padding_side="left", progress=False).encode(TEXTS)
    right = TransformersEncoder(model, tiny_tokenizer, padding_side="right", progress=False).encode(TEXTS)
    for layer in left:
        torch.testing.assert_close(left[layer], right[layer], atol=1e-5, rtol=1e-4)


def test_template_layers_order_and_protocol(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    model = tiny_lm("llama")
    enc = TransformersEncoder(
        model, tiny_tokenizer, pooling="last", template=TEMPLATES["translate-en"], progress=False
    )
    assert isinstance(enc, Encoder)
    emb = enc.encode(TEXTS, layers=[-1], batch_size=2)
    assert isinstance(emb, LayeredEmbeddings) and emb.layers == [2] and emb[2].shape == (len(TEXTS), 32)
    # same result as encoding each templated text one by one (input order restored after sorting)
    for i, t in enumerate(TEXTS):
        want = _reference(model, tiny_tokenizer, apply_template(enc.template, t), "last", 2)
        torch.testing.assert_close(emb[2][i], want, atol=1e-5, rtol=1e-4)
    plain = enc.with_options(template=None).encode(TEXTS, layers=[2])
    assert not torch.allclose(plain[2], emb[2])


def test_variants_and_errors(tiny_lm: Any, tiny_tokenizer: Any) -> None:
    enc = TransformersEncoder(tiny_lm("gpt2"), tiny_tokenizer, progress=False)
    v = enc.variants(templates=["plain", "prompteol"], poolings=["mean", "last"])
    assert sorted(v) == ["plain/last", "plain/mean", "prompteol/last", "prompteol/mean"]
    assert v["plain/mean"].forward_key() == v["plain/last"].forward_key() != v["prompteol/last"].forward_key()
    with pytest.raises(ValueError, match="unknown pooling"):
        TransformersEncoder(tiny_lm("gpt2"), tiny_tokenizer, pooling="max")
    with pytest.raises(ValueError, match="must contain"):
        TransformersEncoder(tiny_lm("gpt2"), tiny_tokenizer, template="no placeholder")
    with pytest.raises(ValueError, match="out of range"):
        enc.encode(TEXTS, layers=[7])
    with pytest.raises(ValueError, match="empty"):
        enc.encode([])
    with pytest.raises(ValueError, match="unknown template"):
        enc.variants(templates=["nope"])


def test_pool_hidden_handles_empty_rows() -> None:
    h = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    mask = torch.tensor([[0, 1, 1], [0, 0, 0]])
    torch.testing.assert_close(pool_hidden(h, mask, "last")[0], h[0, 2])
    torch.testing.assert_close(pool_hidden(h, mask, "first")[0], h[0, 1])
    torch.testing.assert_close(pool_hidden(h, mask, "mean")[0], h[0, 1:].mean(0))
    for p in ("mean", "last", "first"):
        assert pool_hidden(h, mask, p)[1].abs().sum() == 0


def test_from_pretrained_roundtrip_and_missing_path(tmp_path: Any, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    model = tiny_lm("llama")
    model.save_pretrained(tmp_path / "m")
    tiny_tokenizer.save_pretrained(tmp_path / "m")
    enc = TransformersEncoder.from_pretrained(tmp_path / "m", pooling="last", progress=False)
    want = TransformersEncoder(model, tiny_tokenizer, pooling="last", progress=False).encode(TEXTS)
    got = enc.encode(TEXTS)
    torch.testing.assert_close(got[2], want[2], atol=1e-5, rtol=1e-4)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TransformersEncoder.from_pretrained(tmp_path / "nope")


def test_sentence_transformer_encoder(tmp_path: Any, tiny_tokenizer: Any) -> None:
    pytest.importorskip("sentence_transformers")
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    from transformers import BertConfig, BertModel

    from mpm_align.encoders import SentenceTransformerEncoder

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=320,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=128,
        pad_token_id=0,
    )
    BertModel(cfg).save_pretrained(tmp_path / "bert")
    tiny_tokenizer.save_pretrained(tmp_path / "bert")
    tr = Transformer(str(tmp_path / "bert"))
    model = SentenceTransformer(modules=[tr, Pooling(32, pooling_mode="mean")], device="cpu")
    enc = SentenceTransformerEncoder(model, progress=False)
    assert enc.layer == 2 and enc.num_layers == 3
    got = enc.encode(TEXTS)
    ours = TransformersEncoder(tr.auto_model, tr.tokenizer, progress=False).encode(TEXTS, layers=[2])
    torch.testing.assert_close(got[2], ours[2], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="only has its final output"):
        enc.encode(TEXTS, layers=[0])
