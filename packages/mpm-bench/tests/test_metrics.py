from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg

import mpm_bench.metrics as M
from mpm_bench import corpus_bleu, corpus_chrf, frechet_distance, recall_at_k, topk_accuracy
from mpm_bench.langs import bleu_tokenizer, check_langs, normalize_lang

CASES = {
    "en": (["a red apple on the table", "the cat sits on a mat", "smiling face"],
           ["a red apple on a table", "the cat sat on the mat", "grinning face"]),
    "zh": (["桌子上的红苹果", "猫坐在垫子上", "笑脸"], ["桌上的红苹果", "猫坐在垫子上了", "咧嘴笑的脸"]),
    "ja": (["テーブルの上の赤いりんご", "猫がマットの上に座っている", "笑顔"],
           ["テーブルの上にある赤いりんご", "猫はマットの上に座った", "にっこり笑う顔"]),
    "ko": (["탁자 위의 빨간 사과", "고양이가 매트 위에 앉아 있다", "웃는 얼굴"],
           ["탁자 위에 있는 빨간 사과", "고양이가 매트에 앉았다", "활짝 웃는 얼굴"]),
}  # fmt: skip


def _cli(tmp_path: Path, hyps: list[str], refs: list[str], *args: str) -> float:
    (tmp_path / "hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    (tmp_path / "ref.txt").write_text("\n".join(refs) + "\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "sacrebleu", str(tmp_path / "ref.txt"), "-i", str(tmp_path / "hyp.txt"),
           "-b", "-w", "6", *args]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


@pytest.mark.parametrize("lang", sorted(CASES))
def test_bleu_and_chrf_equal_the_sacrebleu_command_line(tmp_path: Path, lang: str) -> None:
    hyps, refs = CASES[lang]
    bleu = corpus_bleu(hyps, refs, lang=lang)
    assert bleu.score == pytest.approx(
        _cli(tmp_path, hyps, refs, "-m", "bleu", "-tok", bleu_tokenizer(lang)), abs=1e-5
    )
    assert f"tok:{bleu_tokenizer(lang)}" in str(M._bleu_metric(bleu_tokenizer(lang)).get_signature())
    chrf = corpus_chrf(hyps, refs, lang=lang)
    assert chrf.score == pytest.approx(_cli(tmp_path, hyps, refs, "-m", "chrf"), abs=1e-5)
    assert 0 < bleu.score < 100 and 0 < chrf.score < 100


def test_tokenizer_choice_matters_for_cjk() -> None:
    hyps, refs = CASES["zh"]
    assert (
        corpus_bleu(hyps, refs, lang="zh").score != corpus_bleu(hyps, refs, lang="zh", tokenize="13a").score
    )
    assert bleu_tokenizer("ja") == "ja-mecab" and bleu_tokenizer("ko") == "ko-mecab"
    assert bleu_tokenizer("zh-Hant") == "zh" and bleu_tokenizer("de") == "13a"


def test_multiple_references_per_hypothesis() -> None:
    hyps = ["the cat sits on the mat today", "a red apple is on the table"]
    single = ["a cat was sitting on a mat", "the apple on the table is red"]
    multi = [[single[0], "the cat sits on the mat today"], [single[1]]]
    assert corpus_bleu(hyps, multi, lang="en").score > corpus_bleu(hyps, single, lang="en").score
    assert corpus_chrf(hyps, multi, lang="en").score > corpus_chrf(hyps, single, lang="en").score
    assert corpus_bleu(hyps, [[h] for h in hyps], lang="en").score == pytest.approx(100.0)


def test_metric_errors_are_clear() -> None:
    with pytest.raises(ValueError, match="empty hypotheses"):
        corpus_bleu([], [], lang="en")
    with pytest.raises(ValueError, match="unequal lengths: 2 hypotheses but 1 references"):
        corpus_chrf(["a", "b"], ["a"], lang="en")
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        corpus_bleu(["a"], ["a"], lang="xx")
    with pytest.raises(ValueError, match="unknown language code"):
        normalize_lang("english")
    with pytest.raises(TypeError, match="not a single string"):
        corpus_bleu("a cat", ["a cat"], lang="en")
    with pytest.raises(ValueError, match="no language given"):
        check_langs([])
    with pytest.raises(ValueError, match=r"not available in this dataset"):
        check_langs(["en", "sw"], available=["en", "zh"])
    assert check_langs("en,zh_CN,EN") == ["en", "zh"]


def test_mecab_fallback_warns_and_uses_char(monkeypatch: pytest.MonkeyPatch) -> None:
    import sacrebleu.metrics

    real = sacrebleu.metrics.BLEU

    def fake_bleu(*, tokenize: str) -> object:
        if tokenize.endswith("mecab"):
            raise ImportError("No module named 'MeCab'")
        return real(tokenize=tokenize)

    monkeypatch.setattr(sacrebleu.metrics, "BLEU", fake_bleu)
    M._bleu_metric.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="'ja-mecab' is unavailable.*falling back to 'char'"):
            score = corpus_bleu(*CASES["ja"], lang="ja")
        assert score.score == pytest.approx(
            real(tokenize="char").corpus_score(CASES["ja"][0], [CASES["ja"][1]]).score
        )
    finally:
        M._bleu_metric.cache_clear()


def _direct_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@pytest.mark.parametrize("n,d", [(200, 8), (500, 16), (60, 5)])
def test_frechet_distance_matches_direct_scipy_formula(n: int, d: int) -> None:
    rng = np.random.default_rng(d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(loc=0.5, size=(n + 7, d)) @ rng.normal(size=(d, d))
    assert frechet_distance(a, b) == pytest.approx(_direct_fd(a, b), rel=1e-6, abs=1e-6)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_of_shifted_gaussians_is_the_mean_shift() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 3))
    assert frechet_distance(a, a + np.array([3.0, 0.0, 4.0])) == pytest.approx(25.0, abs=1e-9)


def test_frechet_distance_errors() -> None:
    with pytest.raises(ValueError, match="feature dimensions differ: features_a has 3, features_b has 4"):
        frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="at least 2 samples"):
        frechet_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"2-D array"):
        frechet_distance(np.zeros(5), np.zeros((5, 1)))


def test_topk_accuracy_hand_made_and_ties() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.5, 0.9], [0.3, 0.3, 0.3]])
    targets = np.array([0, 1, 2])
    # row 0 hit@1; row 1 rank 2; row 2 three-way tie -> 1/3 at k=1, 2/3 at k=2
    assert topk_accuracy(scores, targets, 1) == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert topk_accuracy(scores, targets, 2) == pytest.approx((1 + 1 + 2 / 3) / 3)
    assert topk_accuracy(scores, targets, 3) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="targets must lie in"):
        topk_accuracy(scores, np.array([0, 1, 3]), 1)


def test_topk_accuracy_matches_sklearn_without_ties() -> None:
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    scores, targets = rng.normal(size=(300, 12)), rng.integers(0, 12, 300)
    for k in (1, 3, 5):
        ref = sklearn_metrics.top_k_accuracy_score(targets, scores, k=k, labels=np.arange(12))
        assert topk_accuracy(scores, targets, k) == pytest.approx(ref)


def test_recall_at_k_hand_made() -> None:
    sim = np.array([
        [0.9, 0.8, 0.1, 0.0],
        [0.7, 0.6, 0.5, 0.1],  # relevant (col 1) ranks 2nd
        [0.1, 0.2, 0.3, 0.9],  # relevant (col 2) ranks 2nd
        [0.4, 0.3, 0.2, 0.1],  # relevant (col 3) ranks 4th
    ])  # fmt: skip
    rel = np.eye(4, dtype=bool)
    assert recall_at_k(sim, rel, ks=(1, 2, 3, 4)) == {1: 0.25, 2: 0.75, 3: 0.75, 4: 1.0}
    # several relevant items: the best one counts
    rel2 = rel.copy()
    rel2[3, 0] = True
    assert recall_at_k(sim, rel2, ks=(1,))[1] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(sim, np.zeros((4, 4), dtype=bool))
