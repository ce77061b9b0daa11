from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from mpm_bench import (
    Example,
    OracleBaseline,
    RandomBaseline,
    evaluate,
    load_emojicap,
    run_captioning,
    run_classification,
    run_language_fidelity,
    run_retrieval,
    run_text_to_image,
)
from mpm_bench.features import ColorHistogramFeatures, LangidIdentifier, PixelFeatures
from mpm_bench.interfaces import Captioner, Painter, Scorer
from mpm_bench.tasks import _candidate_sets, candidate_sets, cluster_ids, config_hash


@pytest.fixture(scope="module")
def data(emojicap_small: tuple[Path, dict[str, Any]]) -> list[Example]:
    root, _ = emojicap_small
    return load_emojicap(root, "train")


def _by_metric(results: list[Any]) -> dict[tuple[str, str], float]:
    return {(r.language, r.metric): r.value for r in results}


def test_baselines_implement_the_protocols(data: list[Example]) -> None:
    for model in (OracleBaseline(data), RandomBaseline()):
        assert isinstance(model, Captioner) and isinstance(model, Scorer) and isinstance(model, Painter)


def test_captioning_oracle_is_perfect_and_constant_is_not(data: list[Example]) -> None:
    preds: dict[str, list[str]] = {}
    res = run_captioning(OracleBaseline(data), data, ["en", "zh", "ja", "ko"], predictions=preds)
    m = _by_metric(res)
    for lang in ("en", "zh", "ja", "ko"):
        assert m[(lang, "bleu")] == pytest.approx(100.0) and m[(lang, "chrf")] == pytest.approx(100.0)
    assert preds["zh"] == [ex.names["zh"] for ex in data]
    assert m[("ja", "fidelity")] > 0.8 and m[("ja", "en_share")] == 0.0
    r0 = res[0]
    assert r0.task == "captioning" and r0.model == "oracle" and r0.n == len(data)
    assert r0.dataset == "emojicap/train" and len(r0.config_hash) == 12
    assert r0.versions["mpm-bench"] and r0.time.endswith("+00:00")
    assert r0.config["tokenizers"] == {"en": "13a", "zh": "zh", "ja": "ja-mecab", "ko": "ko-mecab"}
    bad = _by_metric(run_captioning(RandomBaseline(), data, ["en"]))
    assert bad[("en", "bleu")] < 10 and bad[("en", "chrf")] < 40


class EnglishOnly:
    """Answers every question in English (the quasi-zero-shot failure)."""

    def __init__(self, data: Sequence[Example]) -> None:
        self.oracle = OracleBaseline(data)

    def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
        return [
            f"this is the {a} emoji and it looks very nice" for a in self.oracle.caption(images, prompt, "en")
        ]


def test_language_fidelity_catches_english_answers(data: list[Example]) -> None:
    m = _by_metric(run_language_fidelity(EnglishOnly(data), data, ["zh", "de", "en"]))
    assert m[("zh", "fidelity")] == 0.0 and m[("zh", "en_share")] == 1.0
    assert m[("en", "fidelity")] == 1.0
    assert m[("de", "en_share")] > 0.8


def test_langid_identifier() -> None:
    ident = LangidIdentifier(candidates=["en", "zh", "ja", "de"])
    assert ident.identify("这是一个笑脸") == "zh"
    assert ident.identify("これは笑顔の絵文字です") == "ja"
    assert ident.identify("Das ist ein lachendes Gesicht") == "de"
    assert ident.identify("1234 !!") == "und"
    with pytest.raises(ValueError, match="unknown language code"):
        LangidIdentifier(candidates=["en", "qq"])


def test_classification_oracle_random_and_constant(data: list[Example]) -> None:
    langs = ["en", "zh"]
    metrics = ("acc@1", "acc@5", "mrr", "acc_all@1", "acc_all@5", "mrr_all")
    assert _by_metric(run_classification(OracleBaseline(data), data, langs)) == {
        (lang, m): 1.0 for lang in langs for m in metrics
    }

    class Constant:
        def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(images), len(texts)))

    res = run_classification(Constant(), data, langs, num_candidates=10)
    m = _by_metric(res)
    assert m[("en", "acc@1")] == pytest.approx(0.1) and m[("zh", "acc@5")] == pytest.approx(0.5)
    assert m[("en", "mrr")] == pytest.approx(sum(1 / r for r in range(1, 11)) / 10)
    n_zh = len({ex.names["zh"] for ex in data})  # among all: the distinct names of the set
    assert m[("zh", "acc_all@1")] == pytest.approx(1 / n_zh)
    assert m[("zh", "mrr_all")] == pytest.approx(sum(1 / r for r in range(1, n_zh + 1)) / n_zh)
    for r in res:  # a constant scorer sits exactly at the closed-form chance level of each metric
        assert r.chance == pytest.approx(r.value), r.metric
    rand = _by_metric(run_classification(RandomBaseline(seed=3), data, langs))
    assert 0.0 <= rand[("en", "acc@1")] < 0.5


def test_candidate_sets_are_deterministic_and_shared_across_languages(data: list[Example]) -> None:
    langs = sorted(data[0].names)
    sets = {lang: _candidate_sets(data, lang, 5, seed=0) for lang in langs}
    assert sets["en"] == _candidate_sets(data, "en", 5, seed=0)
    concepts = {}
    for lang, per in sets.items():
        index = {ex.names[lang]: i for i, ex in enumerate(data)}
        for (cands, target), ex in zip(per, data):
            assert len(cands) == 5 == len(set(cands)) and cands[target] == ex.names[lang]
        concepts[lang] = [([index[c] for c in cands], t) for cands, t in per]
    # the same distractor concepts at the same positions in every language: the same question
    assert all(concepts[lang] == concepts["en"] for lang in langs)


def test_candidate_sets_avoid_a_name_collision_in_any_language() -> None:
    img = Image.new("RGB", (4, 4))
    names = [{"en": f"e{i}", "zh": f"z{i}"} for i in range(6)]
    names[1]["zh"] = "z0"  # examples 0 and 1 share their Chinese name
    data = [Example(key=str(i), image=img, names=n) for i, n in enumerate(names)]
    for seed in range(5):
        en, zh = candidate_sets(data, "en", 4, seed), candidate_sets(data, "zh", 4, seed)
        assert "e1" not in en[0][0] and "e0" not in en[1][0]  # never offered as the other's distractor
        assert [len(set(c)) for c, _ in zh] == [4] * 6
        assert [t for _, t in en] == [t for _, t in zh]


def test_retrieval_oracle_and_hand_made_scorer(data: list[Example]) -> None:
    m = _by_metric(run_retrieval(OracleBaseline(data), data, ["en", "ja"], batch_size=7))
    assert all(v == 1.0 for v in m.values()) and len(m) == 12

    class Reversed:
        """Scores image i highest for the text of image n-1-i: every top-1 is wrong (when n > 1)."""

        def __init__(self, data: list[Example]) -> None:
            self.index = {ex.image.tobytes(): i for i, ex in enumerate(data)}
            self.texts = [ex.names["en"] for ex in data]

        def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
            n = len(self.texts)
            rows = []
            for im in images:
                i = self.index[im.tobytes()]
                rows.append([-abs(self.texts.index(t) - (n - 1 - i)) for t in texts])
            return np.array(rows, dtype=float)

    small = data[:10]
    m = _by_metric(run_retrieval(Reversed(small), small, ["en"], ks=(1, 10)))
    assert m[("en", "i2t_r@10")] == 1.0
    assert m[("en", "i2t_r@1")] == pytest.approx(0.0)


def test_text_to_image_oracle_and_noise(data: list[Example]) -> None:
    images: dict[str, list[Image.Image]] = {}
    m = _by_metric(
        run_text_to_image(
            OracleBaseline(data), data, ["en", "zh"], judge=OracleBaseline(data), images_out=images
        )
    )
    assert m[("en", "judge_acc@1")] == 1.0 and m[("zh", "fd")] == pytest.approx(0.0, abs=1e-9)
    assert len(images["zh"]) == len(data)
    noise = _by_metric(
        run_text_to_image(
            RandomBaseline(),
            data,
            ["en"],
            judge=OracleBaseline(data),
            judge_lang="en",
            feature_extractor=ColorHistogramFeatures(bins=2),
        )
    )
    assert noise[("en", "fd")] > 0.01 and noise[("en", "judge_acc@1")] < 0.5


def test_evaluate_dispatches_on_protocols(data: list[Example]) -> None:
    results = evaluate(OracleBaseline(data), data[:8], ["en"], tasks=["classification", "t2i"])
    assert {r.task for r in results} == {"classification", "t2i"}

    class OnlyCaptions:
        def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
            return ["x"] * len(images)

    results = evaluate(OnlyCaptions(), data[:8], ["en"])
    assert {r.task for r in results} == {"captioning", "fidelity"}
    with pytest.raises(ValueError, match="unknown task"):
        evaluate(OnlyCaptions(), data, ["en"], tasks=["vqa"])


def test_protocol_violations_and_bad_inputs_are_clear(data: list[Example]) -> None:
    class Short:
        def caption(self, images: Sequence[Image.Image], prompt: str, lang: str) -> list[str]:
            return ["x"]

        def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
            return np.zeros((len(texts), len(images) + 1))

    with pytest.raises(ValueError, match="captioner returned 1 answers for 4 images"):
        run_captioning(Short(), data[:4], ["en"], batch_size=4)
    with pytest.raises(ValueError, match=r"scorer returned shape \(10, 2\), expected \(1, 10\)"):
        run_classification(Short(), data, ["en"])
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        run_retrieval(OracleBaseline(data), data, ["en", "xx"])
    with pytest.raises(ValueError, match=r"language 'fr'.*have no text"):
        run_retrieval(OracleBaseline(data), data, ["fr"])
    with pytest.raises(ValueError, match="empty dataset"):
        run_captioning(OracleBaseline(data), [], ["en"])
    with pytest.raises(ValueError, match=r"no prompt for language\(s\) \['sw'\]"):
        run_language_fidelity(OracleBaseline(data), [Example("k", data[0].image, {"sw": "x"})], ["sw"])


def test_config_hash_is_stable_and_sensitive() -> None:
    a = config_hash({"task": "retrieval", "langs": ["en"], "n": 3})
    assert a == config_hash({"n": 3, "langs": ["en"], "task": "retrieval"})
    assert a != config_hash({"task": "retrieval", "langs": ["en"], "n": 4})


def test_feature_extractors() -> None:
    imgs = [Image.new("RGB", (20, 20), c) for c in ("red", "blue", "white")]
    f = PixelFeatures(side=4)(imgs)
    assert f.shape == (3, 48) and f[0, 0] == 1.0 and f[1, 0] == 0.0
    h = ColorHistogramFeatures(bins=2)(imgs)
    assert h.shape == (3, 8) and np.allclose(h.sum(1), 1.0)
    with pytest.raises(ValueError, match="no images"):
        PixelFeatures()([])


class _HashScorer:
    """Deterministic, image-dependent scores (a hash of the pixels and the text); counts its calls."""

    def __init__(self) -> None:
        self.calls = 0

    @staticmethod
    def _one(image: Image.Image, text: str) -> float:
        px = np.asarray(image.convert("RGB"), dtype=np.int64)
        return float((int(px.sum()) * 31 + sum(map(ord, text)) * 17) % 1009)

    def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
        self.calls += 1
        return np.array([[self._one(im, t) for t in texts] for im in images])


class _BatchedHashScorer(_HashScorer):
    def score_candidates(
        self, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]
    ) -> list[np.ndarray]:
        self.calls += 1
        return [np.array([self._one(im, t) for t in c]) for im, c in zip(images, candidates)]


def test_candidate_scorer_is_used_and_gives_the_same_results(data: list[Example]) -> None:
    from mpm_bench import CandidateScorer

    plain, batched = _HashScorer(), _BatchedHashScorer()
    assert isinstance(batched, CandidateScorer) and not isinstance(plain, CandidateScorer)
    langs = ["en", "zh", "de"]
    a = _by_metric(run_classification(plain, data, langs, num_candidates=6, batch_size=8))
    b = _by_metric(run_classification(batched, data, langs, num_candidates=6, batch_size=8))
    assert a == b
    gallery_calls = len(langs) * -(-len(data) // 8)  # among-all-N: one score matrix per 8 images and language
    assert plain.calls == len(data) * len(langs) + gallery_calls
    assert (
        batched.calls == len(langs) * -(-len(data) // 64) + gallery_calls
    )  # one call per 64 images and language
    assert 0.0 < a[("en", "acc@1")] < 1.0  # the hash is neither oracle nor constant


def test_candidate_scorer_bad_output_is_named(data: list[Example]) -> None:
    class Short(_BatchedHashScorer):
        def score_candidates(
            self, images: Sequence[Image.Image], candidates: Sequence[Sequence[str]]
        ) -> list[np.ndarray]:
            return [np.zeros(len(c) - 1) for c in candidates]

    with pytest.raises(ValueError, match="scores for 5 candidates"):
        run_classification(Short(), data, ["en"], num_candidates=5)


def test_among_all_candidates_can_be_capped_or_skipped(data: list[Example]) -> None:
    class Counting(_HashScorer):
        def score(self, images: Sequence[Image.Image], texts: Sequence[str]) -> np.ndarray:
            self.shapes.append((len(images), len(texts)))
            return super().score(images, texts)

    model = Counting()
    model.shapes = []
    capped = run_classification(model, data, ["en"], num_candidates=4, all_candidates=6, batch_size=4)
    rows = {r.metric: r for r in capped}
    assert rows["acc_all@1"].n == 6 and rows["acc@1"].n == len(data)
    assert rows["acc_all@1"].config["all_candidates"] == 6
    assert [s for s in model.shapes if s[1] != 4] == [
        (4, 6),
        (2, 6),
    ]  # one matrix call per batch, shared gallery
    skipped = run_classification(_HashScorer(), data, ["en"], num_candidates=4, all_candidates=False)
    assert {r.metric for r in skipped} == {"acc@1", "mrr"}
    with pytest.raises(ValueError, match="gallery size >= 2"):
        run_classification(_HashScorer(), data, ["en"], all_candidates=1)


def test_results_carry_items_clusters_and_intervals(data: list[Example]) -> None:
    res = run_classification(_HashScorer(), data, ["en", "zh"], num_candidates=5)
    clusters = cluster_ids(data)
    assert clusters == [str(ex.meta["split_group"]) for ex in data]
    for r in res:
        assert r.items is not None and r.items.keys == tuple(ex.key for ex in data[: r.n])
        assert r.items.clusters == tuple(clusters[: r.n])
        assert r.items.statistic() == pytest.approx(r.value)
        assert r.interval is not None and r.interval.low <= r.value <= r.interval.high
        assert r.interval.n_clusters == len(set(clusters[: r.n]))
    assert cluster_ids(data, "key") == [ex.key for ex in data]
    assert cluster_ids(data, lambda ex: ex.names["en"][0]) == [ex.names["en"][0] for ex in data]
    with pytest.raises(ValueError, match="no meta field 'colour'"):
        cluster_ids(data, "colour")  # EmojiCap records carry style, group, split_group... but no colour
    none = run_classification(_HashScorer(), data, ["en"], num_candidates=5, n_boot=0)
    assert all(r.interval is None and r.items is not None for r in none)


def test_captioning_intervals_resample_sacrebleu_statistics(data: list[Example]) -> None:
    res = run_captioning(EnglishOnly(data), data, ["en", "zh"], fidelity=True)
    for r in res:
        assert r.items is not None and r.interval is not None
        assert r.items.aggregate == {"bleu": "bleu", "chrf": "chrf"}.get(r.metric, "mean")
        assert r.items.statistic() == pytest.approx(r.value, abs=1e-9)  # summed statistics = corpus score


def test_text_to_image_fd_has_an_interval(data: list[Example]) -> None:
    res = run_text_to_image(
        RandomBaseline(),
        data,
        ["en"],
        judge=OracleBaseline(data),
        feature_extractor=ColorHistogramFeatures(bins=2),
    )
    fd = next(r for r in res if r.metric == "fd")
    assert fd.items is None and fd.interval is not None and fd.interval.n_boot == 200
    judge = next(r for r in res if r.metric == "judge_acc@1")
    assert judge.chance == pytest.approx(0.1) and judge.items is not None


def test_ranking_item_values_equal_a_row_by_row_ranking() -> None:
    """Ragged rows, ties, several relevant candidates: the same values as ranking each row alone."""
    from mpm_bench.metrics import ranking_hits, reciprocal_ranks
    from mpm_bench.tasks import ranking_item_values

    rng = np.random.default_rng(0)
    rows, rels = [], []
    for i in range(300):
        n = [8, 8, 120, 5][i % 4]
        row = rng.integers(0, 4, size=n).astype(np.float64)  # coarse scores: many ties
        rel = np.zeros(n, dtype=bool)
        rel[rng.choice(n, size=1 + i % 3, replace=False)] = True
        rows.append(row)
        rels.append(rel)
    got = ranking_item_values(rows, rels, [1, 5], prefix="acc_all", mrr_name="mrr_all")
    assert list(got) == ["acc_all@1", "acc_all@5", "mrr_all"]
    for i, (row, rel) in enumerate(zip(rows, rels, strict=True)):
        r, m = row[None, :], rel[None, :]
        assert got["acc_all@1"][i] == float(ranking_hits(r, m, 1)[0])
        assert got["acc_all@5"][i] == float(ranking_hits(r, m, 5)[0])
        assert got["mrr_all"][i] == float(reciprocal_ranks(r, m)[0])
    assert 0 < np.mean(got["acc_all@1"]) < 1  # ties were spread, not all hits or misses
    # a 2-D array of rows gives the same lists
    same = ranking_item_values(np.stack(rows[1::4]), np.stack(rels[1::4]), [1, 5])
    assert same["acc@1"] == got["acc_all@1"][1::4] and same["mrr"] == got["mrr_all"][1::4]


def test_ranking_item_values_name_the_bad_item() -> None:
    from mpm_bench.tasks import ranking_item_values

    ok = np.array([0.1, 0.9])
    with pytest.raises(ValueError, match="item 1: scores"):
        ranking_item_values([ok, ok], [np.array([False, True]), np.array([True, False, False])], [1])
    with pytest.raises(ValueError, match="at least one relevant"):
        ranking_item_values([ok], [np.array([False, False])], [1])
    with pytest.raises(ValueError, match="2 score rows but 1 relevance"):
        ranking_item_values([ok, ok], [np.array([False, True])], [1])
