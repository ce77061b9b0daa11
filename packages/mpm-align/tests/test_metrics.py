"""Every metric against an independent brute-force formula (full N x N matrices, explicit loops)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mpm_align import (
    bitext_retrieval,
    isotropy,
    language_probe_accuracy,
    linear_cka,
    paired_cosine,
    retrieval_accuracy,
    xsim_error,
)


def _pair(n: int = 300, d: int = 24, noise: float = 1.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    # a shared offset (anisotropy) and noise make the methods disagree, so the test can tell them apart
    y = x + noise * torch.randn(n, d, generator=g) + 0.8 * torch.randn(1, d, generator=g)
    return x, y


def _cos_matrix(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    xa, ya = x.double().numpy(), y.double().numpy()
    xa = xa / np.linalg.norm(xa, axis=1, keepdims=True)
    ya = ya / np.linalg.norm(ya, axis=1, keepdims=True)
    return xa @ ya.T


def _brute_retrieval(x: torch.Tensor, y: torch.Tensor, method: str, k: int) -> tuple[float, float]:
    s = _cos_matrix(x, y)
    n = s.shape[0]

    def knn_mean(m: np.ndarray) -> np.ndarray:
        return np.sort(m, axis=1)[:, ::-1][:, :k].mean(1)

    if method == "cosine":
        a, b = s.argmax(1), s.argmax(0)
    elif method == "csls":
        rx, ry = knn_mean(s), knn_mean(s.T)
        full = 2 * s - rx[:, None] - ry[None, :]
        a, b = full.argmax(1), full.argmax(0)
    else:  # LASER: ratio margin among the k nearest candidates by cosine
        ax, ay = knn_mean(s), knn_mean(s.T)
        a = np.empty(n, dtype=int)
        b = np.empty(n, dtype=int)
        for i in range(n):
            cand = np.argsort(-s[i])[:k]
            scores = [s[i, j] / ((ax[i] + ay[j]) / 2) for j in cand]
            a[i] = cand[int(np.argmax(scores))]
        for j in range(n):
            cand = np.argsort(-s[:, j])[:k]
            scores = [s[i, j] / ((ay[j] + ax[i]) / 2) for i in cand]
            b[j] = cand[int(np.argmax(scores))]
    gold = np.arange(n)
    return float((a == gold).mean()), float((b == gold).mean())


@pytest.mark.parametrize("method,k", [("cosine", 1), ("csls", 10), ("margin", 4), ("csls", 3), ("margin", 7)])
@pytest.mark.parametrize("chunk_bytes", [None, 4 * 300 * 7])  # one chunk / many odd-sized chunks
def test_retrieval_matches_brute_force(method: str, k: int, chunk_bytes: int | None) -> None:
    x, y = _pair()
    got = retrieval_accuracy(x, y, method=method, k=k, max_chunk_bytes=chunk_bytes)
    want = _brute_retrieval(x, y, method, k)
    assert got["x2y"] == pytest.approx(want[0], abs=1e-9)
    assert got["y2x"] == pytest.approx(want[1], abs=1e-9)


def test_methods_differ_and_bitext_retrieval_matches_single_calls() -> None:
    x, y = _pair(n=400)
    both = bitext_retrieval(x, y, max_chunk_bytes=4 * 400 * 33)
    for m in ("cosine", "csls", "margin"):
        assert both[m] == retrieval_accuracy(x, y, method=m)
    # hubness correction helps on this anisotropic data: the methods are really different code paths
    assert both["csls"]["x2y"] > both["cosine"]["x2y"]
    assert 0.0 < both["cosine"]["x2y"] < 1.0


def test_perfect_and_shuffled_retrieval() -> None:
    x, _ = _pair(n=50)
    assert retrieval_accuracy(x, x.clone()) == {"x2y": 1.0, "y2x": 1.0}
    perm = torch.roll(torch.arange(50), 1)
    assert retrieval_accuracy(x, x[perm]) == {"x2y": 0.0, "y2x": 0.0}


def test_xsim_error_is_laser_margin_error() -> None:
    x, y = _pair()
    acc, _ = _brute_retrieval(x, y, "margin", 4)
    assert xsim_error(x, y) == pytest.approx(1 - acc, abs=1e-9)


def test_paired_cosine_matches_brute_force() -> None:
    x, y = _pair(n=60)
    s = _cos_matrix(x, y)
    n = s.shape[0]
    off = s[~np.eye(n, dtype=bool)].mean()
    res = paired_cosine(x, y)
    assert res.paired == pytest.approx(np.diag(s).mean(), abs=1e-10)
    assert res.random == pytest.approx(off, abs=1e-10)
    assert res.gap == pytest.approx(np.diag(s).mean() - off, abs=1e-10)


def _hsic(k: np.ndarray, m: np.ndarray, unbiased: bool) -> float:
    n = k.shape[0]
    if not unbiased:
        h = np.eye(n) - np.ones((n, n)) / n
        return float(np.trace(k @ h @ m @ h)) / (n - 1) ** 2
    kt, mt = k.copy(), m.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(mt, 0)
    one = np.ones(n)
    term = (
        np.trace(kt @ mt)
        + (one @ kt @ one) * (one @ mt @ one) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (one @ kt @ mt @ one)
    )
    return float(term) / (n * (n - 3))


@pytest.mark.parametrize("debiased", [False, True])
@pytest.mark.parametrize("n", [40, 9])  # feature space and N < D (Gram space)
def test_linear_cka_matches_gram_formula(debiased: bool, n: int) -> None:
    x, _ = _pair(n=n, d=12)
    y = torch.tanh(x @ torch.randn(12, 20)) + 0.3 * torch.randn(n, 20)
    xa, ya = x.double().numpy(), y.double().numpy()
    k, m = xa @ xa.T, ya @ ya.T  # uncentred features: the estimators centre by themselves
    want = _hsic(k, m, debiased) / math.sqrt(_hsic(k, k, debiased) * _hsic(m, m, debiased))
    assert linear_cka(x, y, debiased=debiased) == pytest.approx(want, rel=1e-8)


def test_linear_cka_invariances() -> None:
    x, _ = _pair(n=50, d=10)
    q, _ = torch.linalg.qr(torch.randn(10, 10))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-9)
    assert linear_cka(x, torch.randn(50, 10)) < 0.6


@pytest.mark.parametrize("n,d", [(30, 6), (8, 12)])  # N > D (feature space) and N < D (Gram space)
def test_isotropy_matches_brute_force(n: int, d: int) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, d, generator=g) + 2.0 * torch.eye(d)[0]
    res = isotropy(x)
    xa = x.double().numpy()
    xa = xa / np.linalg.norm(xa, axis=1, keepdims=True)
    _, vecs = np.linalg.eigh(xa.T @ xa)
    z = [
        sum(math.exp(sign * float(xa[i] @ vecs[:, c])) for i in range(n))
        for c in range(d)
        for sign in (1, -1)
    ]
    assert res.partition_ratio == pytest.approx(min(z) / max(z), rel=1e-9)
    cos = [float(xa[i] @ xa[j]) for i in range(n) for j in range(n) if i != j]
    assert res.mean_cosine == pytest.approx(np.mean(cos), abs=1e-12)
    sv = np.linalg.svd(xa - xa.mean(0), compute_uv=False)
    p = sv / sv.sum()
    p = p[p > 1e-12]
    assert res.effective_rank == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    if n < d:
        return
    # a narrow cone is less isotropic than a centred cloud
    centred = isotropy(torch.randn(200, 6, generator=g))
    assert centred.partition_ratio > res.partition_ratio
    assert abs(centred.mean_cosine) < res.mean_cosine


@pytest.mark.parametrize("method", ["logistic", "ridge"])
def test_language_probe_separable_and_chance(method: str) -> None:
    g = torch.Generator().manual_seed(0)
    d = 16
    sep = {lang: torch.randn(80, d, generator=g) + 8 * torch.eye(d)[i] for i, lang in enumerate("abc")}
    assert language_probe_accuracy(sep, method=method) == 1.0
    same = {lang: torch.randn(150, d, generator=g) for lang in "abcd"}
    assert language_probe_accuracy(same, method=method) < 0.45  # chance is 0.25


def test_language_probe_agrees_with_sklearn() -> None:
    sklearn_lm = pytest.importorskip("sklearn.linear_model")
    from mpm_align.metrics import _probe_split

    g = torch.Generator().manual_seed(1)
    d = 8
    data = {lang: torch.randn(100, d, generator=g) + 0.7 * torch.randn(1, d, generator=g) for lang in "abc"}
    ours = language_probe_accuracy(data, l2=1e-3)
    xtr, ytr, xte, yte = _probe_split(data, 0.3, 0)
    mean, std = xtr.mean(0), xtr.std(0)
    clf = sklearn_lm.LogisticRegression(C=1 / (2 * 1e-3 * len(ytr)), max_iter=2000)
    clf.fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref = float((clf.predict(((xte - mean) / std).numpy()) == yte.numpy()).mean())
    assert abs(ours - ref) <= 0.03
    # the ridge probe is exactly scikit-learn's RidgeClassifier on the same split
    ridge = sklearn_lm.RidgeClassifier(alpha=1e-3 * len(ytr)).fit(((xtr - mean) / std).numpy(), ytr.numpy())
    ref_ridge = float((ridge.predict(((xte - mean) / std).numpy()) == yte.numpy()).mean())
    assert language_probe_accuracy(data, method="ridge", l2=1e-3) == pytest.approx(ref_ridge, abs=1e-12)


@pytest.mark.parametrize(
    "call",
    [
        lambda a, b: retrieval_accuracy(a, b),
        lambda a, b: paired_cosine(a, b),
        lambda a, b: linear_cka(a, b),
        lambda a, b: xsim_error(a, b),
    ],
)
def test_unequal_lengths_are_rejected(call: object) -> None:
    with pytest.raises(ValueError, match=r"10 != 9"):
        call(torch.randn(10, 4), torch.randn(9, 4))  # type: ignore[operator]


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="unknown retrieval method"):
        retrieval_accuracy(torch.randn(5, 3), torch.randn(5, 3), method="dot")
    with pytest.raises(ValueError, match=r"\[N, D\]"):
        paired_cosine(torch.randn(5), torch.randn(5))
    with pytest.raises(ValueError, match="empty"):
        isotropy(torch.randn(0, 3))
    with pytest.raises(ValueError, match="dimension"):
        retrieval_accuracy(torch.randn(5, 3), torch.randn(5, 4))


_METRICS_ON_Y = {
    "retrieval_cosine": lambda a, b: retrieval_accuracy(a, b),
    "retrieval_csls": lambda a, b: retrieval_accuracy(a, b, method="csls"),
    "bitext_retrieval": lambda a, b: bitext_retrieval(a, b),
    "xsim_error": lambda a, b: xsim_error(a, b),
    "paired_cosine": lambda a, b: paired_cosine(a, b),
    "linear_cka": lambda a, b: linear_cka(a, b),
    "linear_cka_debiased": lambda a, b: linear_cka(a, b, debiased=True),
    "isotropy": lambda a, b: isotropy(b),
    "language_probe": lambda a, b: language_probe_accuracy({"en": a, "de": b}),
    "language_probe_ridge": lambda a, b: language_probe_accuracy({"en": a, "de": b}, method="ridge"),
}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("metric", sorted(_METRICS_ON_Y))
def test_non_finite_embeddings_are_rejected_naming_the_rows(metric: str, bad: float) -> None:
    """Before: one NaN turned retrieval 1.0 into 0.02 and CKA into 0.0; isotropy raised LinAlgError."""
    x = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    y = x.clone()
    y[3, 5] = bad
    y[17, 0] = bad
    with pytest.raises(ValueError, match=r"NaN or inf values in 2 of 40 row\(s\): 3, 17;"):
        _METRICS_ON_Y[metric](x, y)
    if metric != "isotropy":  # the other side is named too
        side = "embeddings for 'en'" if metric.startswith("language_probe") else "x"
        with pytest.raises(ValueError, match=rf"^{side}: NaN or inf"):
            _METRICS_ON_Y[metric](y, x)


def test_nonfinite_rows_in_chunks_and_long_lists() -> None:
    from mpm_align.metrics import check_finite, nonfinite_rows

    x = torch.randn(1000, 7)
    rows = [0, 13, 500, 999, *range(100, 112)]
    for r in rows:
        x[r, r % 7] = math.nan
    assert nonfinite_rows(x) == sorted(rows)
    assert nonfinite_rows(x, max_chunk_bytes=7 * 3) == sorted(rows)  # 3 rows per chunk
    assert nonfinite_rows(torch.arange(6).reshape(3, 2)) == []  # integers are always finite
    big = torch.zeros(3, 4)
    big[1, :2] = 3e38  # the row sum overflows to inf, yet every value is finite
    big[2, 3] = -math.inf
    assert nonfinite_rows(big) == [2]
    with pytest.raises(ValueError, match=r"16 of 1000 row\(s\): 0, 13, 100, .* and 6 more"):
        check_finite(x, "x")
    with pytest.raises(ValueError, match=r"1 \('cat'\)"):
        check_finite(torch.tensor([[0.0], [math.inf]]), "layer 3", labels=["dog", "cat"])


# ----------------------------------------------------------------------------------------------------
# the chunked neighbour pass itself: indices, not just accuracies


@pytest.mark.parametrize("k", [1, 4, 10])
@pytest.mark.parametrize("chunk_bytes", [None, 4 * 700 * 37])  # one chunk / many odd-sized chunks
def test_neighbour_pass_matches_full_topk(k: int, chunk_bytes: int | None) -> None:
    from mpm_align.metrics import _neighbours, _unit

    x, y = _pair(n=700, d=16)
    nb = _neighbours(x, _unit(y), k, chunk_bytes)
    full = _unit(x).double() @ _unit(y).double().T
    rv, ri = full.topk(k, dim=1)
    cv, ci = full.topk(k, dim=0)
    torch.testing.assert_close(nb.row_vals.double(), rv, atol=1e-5, rtol=0)
    torch.testing.assert_close(nb.col_vals.double(), cv.T, atol=1e-5, rtol=0)
    # indices agree wherever the float64 ranking is not a near-tie
    assert (nb.row_idx == ri).float().mean() > 0.999
    assert (nb.col_idx == ci.T).float().mean() > 0.999


def test_column_topk_worst_case_order_falls_back_to_dense_merge() -> None:
    """Rows that get better and better beat every threshold: the dense path must keep it exact."""
    from mpm_align.metrics import _ColumnTopK

    g = torch.Generator().manual_seed(1)
    sim = torch.arange(900.0)[:, None] + torch.rand(900, 50, generator=g)  # each row beats all before
    for k in (1, 3):
        top = _ColumnTopK(50, k)
        for s in range(0, 900, 300):
            top.update(sim[s : s + 300], s)
        want_v, want_i = sim.topk(k, dim=0)
        torch.testing.assert_close(top.vals, want_v.T)
        assert torch.equal(top.idx, want_i.T)


def test_column_topk_random_order_uses_sparse_merges() -> None:
    from mpm_align.metrics import _ColumnTopK

    g = torch.Generator().manual_seed(2)
    sim = torch.randn(3000, 40, generator=g)
    top = _ColumnTopK(40, 5)
    top.block_rows = 100  # many blocks: after the first, only entries above the running 5th best merge
    for s in range(0, 3000, 700):
        top.update(sim[s : s + 700], s)
    want_v, want_i = sim.topk(5, dim=0)
    torch.testing.assert_close(top.vals, want_v.T)
    assert torch.equal(top.idx, want_i.T)


def test_ties_go_to_the_first_index_like_argmax() -> None:
    """Exact ties (small integers) across blocks and chunks: the first maximal row wins, as np.argmax."""
    from mpm_align.metrics import _ColumnTopK

    g = torch.Generator().manual_seed(3)
    sim = torch.randint(0, 4, (500, 30), generator=g).float()
    top = _ColumnTopK(30, 1)
    top.block_rows = 16
    for s in range(0, 500, 70):
        top.update(sim[s : s + 70], s)
    assert torch.equal(top.idx[:, 0], torch.from_numpy(sim.numpy().argmax(0)))
    assert torch.equal(top.vals[:, 0], sim.amax(0))


@pytest.mark.gpu
def test_retrieval_on_cuda_matches_cpu() -> None:
    x, y = _pair(n=500)
    want = bitext_retrieval(x, y, max_chunk_bytes=4 * 500 * 37)
    got = bitext_retrieval(x.cuda(), y.cuda(), max_chunk_bytes=4 * 500 * 37)
    for m in want:
        assert got[m]["x2y"] == pytest.approx(want[m]["x2y"], abs=2 / 500)
        assert got[m]["y2x"] == pytest.approx(want[m]["y2x"], abs=2 / 500)


def test_inputs_on_different_devices_are_rejected() -> None:
    with pytest.raises(ValueError, match="same device"):
        retrieval_accuracy(torch.randn(4, 3), torch.randn(4, 3, device="meta"))
