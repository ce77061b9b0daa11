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
