"""Data loaders, align_report and the mpm-align CLI on a tiny saved model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from mpm_align import (
    AlignmentReport,
    ParallelCorpus,
    TransformersEncoder,
    align_report,
    load_cldr,
    load_corpora,
    load_emoji,
    load_line_files,
    load_pair_file,
    load_pycountry,
)
from mpm_align.cli import main, parse_layers


def test_cldr_emoji_pycountry_are_real_and_clean() -> None:
    terr = load_cldr("territories", "en", "de")
    assert ("Germany", "Deutschland") in set(zip(terr.src, terr.tgt))
    assert len(terr) > 250 and terr.stats["raw"] >= len(terr)
    emo = load_emoji("en", "zh")
    pairs = dict(zip(emo.src, emo.tgt))
    assert pairs["red apple"] == "红苹果"
    assert len(set(emo.src)) == len(emo.src) and len(set(emo.tgt)) == len(emo.tgt)
    units = load_cldr("units", "en", "ja")
    assert len(units) > 150
    countries = load_pycountry("countries", "en", "fr")
    assert ("Germany", "Allemagne") in set(zip(countries.src, countries.tgt))
    same = load_cldr("territories", "en", "fr", drop_identical=True)
    assert "Canada" not in same.src and same.stats["not_identical"] < same.stats["non_empty"]


def test_clean_normalises_and_dedupes() -> None:
    c = ParallelCorpus(
        "t", "en", "de", ("  cafe\u0301 ", "a", "a", "b", " "), ("Kaffee", "x", "y", "x", "z")
    ).clean()
    assert c.src == ("café", "a") and c.tgt == ("Kaffee", "x")
    assert c.stats == {"raw": 5, "non_empty": 4, "unique": 2, "kept": 2}
    assert ParallelCorpus.from_json(c.to_json()) == c


def test_errors_name_the_problem(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        load_corpora("emoji", ["en", "xx"])
    with pytest.raises(ValueError, match="not available in 'nl'"):
        load_emoji("en", "nl")
    with pytest.raises(ValueError, match="unequal lengths, 3 source vs 2 target"):
        ParallelCorpus("t", "en", "de", ("a", "b", "c"), ("x", "y"))
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\ntwo\nthree\n")
    b.write_text("eins\nzwei\n")
    with pytest.raises(ValueError, match="unequal lengths"):
        load_line_files(a, b, "en", "de")
    empty = tmp_path / "e.tsv"
    empty.write_text("en\tde\n \t \n")
    with pytest.raises(ValueError, match="empty after cleaning"):
        load_corpora(f"tsv:{empty}", ["en", "de"])
    with pytest.raises(ValueError, match="unknown data source"):
        load_corpora("wikipedia", ["en", "de"])


def test_pair_files(tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    tsv.write_text("en\tzh\tde\nred apple\t红苹果\troter Apfel\ncat\t猫\tKatze\n", encoding="utf-8")
    c = load_pair_file(tsv, "en", "de")
    assert c.src == ("red apple", "cat") and c.tgt == ("roter Apfel", "Katze")
    js = tmp_path / "p.jsonl"
    js.write_text(
        '{"en": "red apple", "zh": "红苹果"}\n{"en": "cat"}\n{"en": "dog", "zh": "狗"}\n', encoding="utf-8"
    )
    c = load_pair_file(js, "en", "zh")
    assert c.tgt == ("红苹果", "狗")
    corpora = load_corpora(f"tsv:{tsv},jsonl:{js}", ["en", "zh"], merge=True)
    assert len(corpora) == 1 and corpora[0].name.count("+") == 1 and len(corpora[0]) == 3


def test_parse_layers() -> None:
    assert parse_layers("all") is None
    assert parse_layers("0,6,-1") == [0, 6, -1]
    assert parse_layers("2-4,9") == [2, 3, 4, 9]
    with pytest.raises(ValueError, match="bad --layers"):
        parse_layers("x")


def _save_tiny(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any) -> Path:
    path = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def test_align_report_roundtrip_and_figures(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any) -> None:
    enc = TransformersEncoder(tiny_lm("llama"), tiny_tokenizer, progress=False)
    corpora = load_corpora("cldr:territories", ["en", "de", "fr"], max_pairs=30)
    variants = enc.variants(templates=["plain", "translate-en"], poolings=["mean", "last"])
    report = align_report(variants, corpora, progress=False)
    assert report.layers == [0, 1, 2] and report.pairs == ["en-de", "en-fr"]
    assert len(report.rows) == 4 * 3 * 2 and len(report.layer_rows) == 4 * 3
    best = report.best_layers()
    for pair in ("en-de", "en-fr"):
        b = best[pair]["retrieval_csls"]
        assert b["value"] == max(
            report.value("retrieval_csls", variant=v, pair=pair, layer=la)
            for v in variants
            for la in (0, 1, 2)
        )
        assert best[pair]["xsim_error"]["value"] == min(
            r.metrics["xsim_error"] for r in report.rows if r.pair == pair
        )
    files = report.save(tmp_path / "out")
    for key in ("json", "markdown", "curves", "heatmap_retrieval_csls"):
        assert files[key].is_file() and files[key].stat().st_size > 0
    assert files["curves"].read_bytes()[:4] == b"\x89PNG"
    again = AlignmentReport.from_json(files["json"].read_text(encoding="utf-8"))
    assert again.best_layers() == best and again.table("cka", "plain/mean") == report.table(
        "cka", "plain/mean"
    )
    md = files["markdown"].read_text(encoding="utf-8")
    assert "Best setting per language pair" in md and "heatmap_retrieval_csls.png" in md


def test_cli_report_end_to_end(tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any, capsys: Any) -> None:
    model = _save_tiny(tmp_path, tiny_lm, tiny_tokenizer)
    out = tmp_path / "rep"
    rc = main(
        [
            "report",
            "--model",
            str(model),
            "--data",
            "cldr:territories,emoji",
            "--langs",
            "en,zh,de",
            "--layers",
            "all",
            "--out",
            str(out),
            "--max-pairs",
            "20",
            "--pooling",
            "mean,last",
            "--template",
            "translate-en",
            "--quiet",
        ]
    )
    assert rc == 0
    data = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert sorted(data["variants"]) == ["translate-en/last", "translate-en/mean"]
    assert {s["pair"] for s in data["corpus_stats"]} == {"en-zh", "en-de"}
    assert all(s["used"] == 20 for s in data["corpus_stats"])
    assert "best retrieval_csls" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv_extra,message",
    [
        (["--langs", "en,xx"], "unknown language code 'xx'"),
        (["--model", "/nonexistent/model"], "model path does not exist"),
        (["--data", "tsv:EMPTY"], "empty after cleaning"),
        (["--data", "lines:A+B"], "unequal lengths"),
        (["--pooling", "max"], "unknown pooling"),
    ],
)
def test_cli_errors(
    tmp_path: Path, tiny_lm: Any, tiny_tokenizer: Any, capsys: Any, argv_extra: list[str], message: str
) -> None:
    model = tmp_path / "m"
    model.mkdir()
    (model / "config.json").write_text("{}")  # passes the model-directory check; never loaded
    (tmp_path / "empty.tsv").write_text("en\tde\n")
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("eins\n")
    argv = ["report", "--model", str(model), "--langs", "en,de", "--out", str(tmp_path / "o"), "--quiet"]
    argv += [
        x.replace("EMPTY", str(tmp_path / "empty.tsv")).replace(
            "A+B", f"{tmp_path / 'a.txt'}+{tmp_path / 'b.txt'}"
        )
        for x in argv_extra
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mpm-align: error:") and message in err


# ----------------------------------------------------------------------------------------------------
# bad input: same language twice, 'und', non-UTF-8 files, NaN embeddings, CLI arguments


@pytest.mark.parametrize(
    "langs,message",
    [
        (["en", "EN"], "language 'EN' is given twice"),
        (["en", "de", "DE"], "language 'DE' is given twice"),
        (["en", "zh-hant", "zh-Hant"], "given twice"),
        (["en", "und"], "'und' names no language"),
        (["und", "de"], "'und' names no language"),
        (["en", "UND-Latn"], "names no language"),
        (["en", "root"], "names no language"),
    ],
)
def test_same_language_twice_and_und_are_rejected(langs: list[str], message: str) -> None:
    """Before: ['en', 'EN'] paired English with English and 'und' resolved (in Babel) to en_US."""
    for spec in ("cldr:territories", "emoji"):
        with pytest.raises(ValueError, match=message):
            load_corpora(spec, langs)


def test_loaders_refuse_a_pair_of_one_language(tmp_path: Path) -> None:
    tsv = tmp_path / "p.tsv"
    tsv.write_text("en\tEN\ncat\tcat\n", encoding="utf-8")
    a = tmp_path / "a.txt"
    a.write_text("cat\n")
    for call in (
        lambda: load_cldr("territories", "en", "EN"),
        lambda: load_emoji("de", "DE"),
        lambda: load_pycountry("countries", "fr", "FR"),
        lambda: load_pair_file(tsv, "en", "EN"),
        lambda: load_line_files(a, a, "en", "En"),
    ):
        with pytest.raises(ValueError, match="source and target language are the same"):
            call()
    assert len(load_corpora("cldr:territories", ["en", "en-GB"])) == 1  # two locales of one language: fine


def test_non_utf8_files_are_named_and_a_bom_is_read(tmp_path: Path) -> None:
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"en\tde\ncat\tKatze\n" + "tea\tTee mit Zucker \xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.tsv: not valid UTF-8 \(line 3, byte offset 35"):
        load_pair_file(bad, "en", "de")
    with pytest.raises(ValueError, match=r"latin1\.tsv: not valid UTF-8"):
        load_corpora(f"tsv:{bad}", ["en", "de"])
    other = tmp_path / "b.txt"
    other.write_text("x\ny\nz\n")
    with pytest.raises(ValueError, match=r"latin1\.tsv: not valid UTF-8"):
        load_line_files(other, bad, "en", "de")
    bom = tmp_path / "bom.tsv"
    bom.write_bytes("\ufeffen\tde\ncat\tKatze\n".encode())
    assert load_pair_file(bom, "en", "de").src == ("cat",)  # the header is found despite the BOM
    js = tmp_path / "bom.jsonl"
    js.write_bytes('\ufeff{"en": "cat", "de": "Katze"}\n'.encode())
    assert load_pair_file(js, "en", "de").tgt == ("Katze",)


class _NanEncoder:
    """Layer 1 of the phrase 'Germany' is NaN (as an overflowing half-precision run would give)."""

    name = "nan"

    def encode(self, texts: Any, *, layers: Any = None, batch_size: int = 32) -> Any:
        import torch

        from mpm_align import LayeredEmbeddings

        e = torch.randn(len(texts), 8, generator=torch.Generator().manual_seed(0))
        bad = e.clone()
        bad[list(texts).index("Germany")] = float("nan")
        return LayeredEmbeddings({0: e, 1: bad}, len(texts))


def test_align_report_names_the_phrases_with_non_finite_embeddings() -> None:
    corpora = load_corpora("cldr:territories", ["en", "de"], max_pairs=400)
    with pytest.raises(ValueError, match=r"variant 'default' layer 1: NaN or inf values in 1 of .*'Germany'"):
        align_report(_NanEncoder(), corpora, progress=False)


@pytest.mark.parametrize(
    "argv_extra,message",
    [
        (["--langs", "en,EN"], "language 'EN' is given twice"),
        (["--langs", "en,und"], "'und' names no language"),
        (["--langs", "en"], "needs a pivot and at least one other language"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--batch-size", "ten"], "argument --batch-size: invalid int value: 'ten'"),
        (["--pooling", ","], "--pooling names no pooling"),
        (["--out", "FILE"], "exists and is not a directory"),
        (["--data", "tsv:MISSING"], "data file does not exist"),
        (["--data", "cldr:planets"], "unknown CLDR kind 'planets'"),
        (["--data", "wikipedia"], "unknown data source 'wikipedia'"),
        (["--kind", "transformers", "--model", "EMPTYDIR"], "no config.json"),
        (["--model", "EMPTYDIR"], "neither a transformers (config.json) nor a sentence-transformers"),
        (["--model", "FILE"], "is a file; give a model directory"),
        (["--max-pairs", "1"], "--max-pairs must be at least 2"),
    ],
)
def test_cli_validates_arguments_before_loading_a_model(
    tmp_path: Path,
    tiny_lm: Any,
    tiny_tokenizer: Any,
    capsys: Any,
    monkeypatch: pytest.MonkeyPatch,
    argv_extra: list[str],
    message: str,
) -> None:
    """Before: --langs en,EN / en,und, --batch-size 0 and --pooling , loaded the model first; --out FILE
    failed with a traceback after the whole computation; argparse errors printed the usage block."""
    import mpm_align.cli as cli

    def no_loading(*a: Any, **k: Any) -> Any:
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(cli.TransformersEncoder, "from_pretrained", no_loading)
    monkeypatch.setattr(cli.SentenceTransformerEncoder, "from_pretrained", no_loading)
    monkeypatch.setattr(cli, "load_corpora", no_loading)  # data are read after the checks, too
    model = _save_tiny(tmp_path, tiny_lm, tiny_tokenizer)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    subs = {"FILE": tmp_path / "file", "MISSING": tmp_path / "missing.tsv", "EMPTYDIR": tmp_path / "empty"}
    extra = [str(subs[x]) if x in subs else x.replace("MISSING", str(subs["MISSING"])) for x in argv_extra]
    argv = ["report", "--model", str(model), "--langs", "en,de", "--data", "cldr:territories"]
    argv += ["--out", str(tmp_path / "o"), "--quiet", *extra]
    capsys.readouterr()  # drop save_pretrained's progress output
    try:
        rc = main(argv)
    except SystemExit as e:  # argparse's own errors exit through SystemExit
        rc = int(e.code or 0)
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err  # one line
    assert not (tmp_path / "o").exists()
