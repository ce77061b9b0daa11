"""Cross-lingual alignment metrics on two ``[N, D]`` matrices whose rows are translations.

Every similarity-matrix computation runs in row chunks whose size is bounded by ``max_chunk_bytes``
(256 MiB by default), so bitext retrieval over 200,000 x 200,000 pairs needs the two inputs, a unit-norm
copy of ``y`` and one or two chunks, never the ``N x N`` matrix: the whole 200k run at D=640 (all three
methods, both directions) peaked at 2.7 GiB resident and took 16 min on 2 cores (measured by
``benchmarks/align/bench_speed.py``). A single pass over the chunks keeps each row's and each column's
top-k neighbours; cosine and LASER-margin retrieval need only that pass, CSLS needs one more. Results are
exact: time is the fp32 product plus about 30% for the reductions.

References: CSLS, Conneau et al. 2018 (*Word translation without parallel data*); ratio margin and xsim,
Artetxe & Schwenk 2019 and LASER's ``xsim.py``; linear CKA, Kornblith et al. 2019; isotropy, Mu &
Viswanath 2018 and Ethayarajh 2019.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mpm_align.interfaces import IsotropyResult, PairedCosine

__all__ = [
    "RETRIEVAL_METHODS",
    "bitext_retrieval",
    "check_finite",
    "isotropy",
    "language_probe_accuracy",
    "linear_cka",
    "nonfinite_rows",
    "paired_cosine",
    "retrieval_accuracy",
    "xsim_error",
]

RETRIEVAL_METHODS = ("cosine", "csls", "margin")
DEFAULT_K = {"cosine": 1, "csls": 10, "margin": 4}
DEFAULT_MAX_CHUNK_BYTES = 256 * 2**20


def _as_matrix(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a [N, D] matrix, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 rows)")
    check_finite(x, name)
    return x


def nonfinite_rows(x: torch.Tensor, *, max_chunk_bytes: int | None = None) -> list[int]:
    """Indices of the rows of ``x`` that hold a NaN or an infinity (checked in bounded row chunks)."""
    if not (x.is_floating_point() or x.is_complex()) or x.numel() == 0 or x.is_meta:
        return []  # integers are always finite; meta tensors hold no values
    width = max(1, x[0].numel())
    rows = max(1, (DEFAULT_MAX_CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes) // width)
    bad: list[int] = []
    for start in range(0, x.shape[0], rows):
        chunk = x[start : start + rows].reshape(min(rows, x.shape[0] - start), -1)
        # A finite row sum means every value is finite (NaN and inf propagate); only rows whose sum is
        # not finite (or overflowed) get the exact element-wise test. 50k x 640, one thread: 0.02 s vs
        # 0.55 s for isfinite().all(1).
        suspects = (~torch.isfinite(chunk.sum(1))).nonzero().flatten()
        if suspects.numel():
            ok = torch.isfinite(chunk[suspects]).all(1)
            bad.extend(int(i) + start for i in suspects[~ok])
    return bad


def check_finite(x: torch.Tensor, name: str, *, labels: Sequence[object] | None = None) -> None:
    """Raise ``ValueError`` naming the rows of ``x`` that hold NaN or inf (``labels[i]`` names row ``i``).

    One NaN makes cosine, CKA and the probes meaningless rather than failing (a single NaN value in
    one row turned retrieval accuracy 1.0 into 0.02 and linear CKA into 0.0), so non-finite input is
    refused instead of measured.
    """
    bad = nonfinite_rows(x)
    if not bad:
        return
    shown = ", ".join(str(i) if labels is None else f"{i} ({labels[i]!r})" for i in bad[:10])
    more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
    raise ValueError(
        f"{name}: NaN or inf values in {len(bad)} of {x.shape[0]} row(s): {shown}{more}; "
        "metrics need finite embeddings (an encoder run in float16/bfloat16 can overflow: use float32)"
    )


def _check_pair(
    x: torch.Tensor, y: torch.Tensor, *, same_d: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    x = _as_matrix(x, "x")
    y = _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of rows (pairs): {x.shape[0]} != {y.shape[0]}")
    if same_d and x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must have the same dimension: {x.shape[1]} != {y.shape[1]}")
    return x, y


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=1, eps=1e-12)


def _chunk_rows(n_cols: int, max_chunk_bytes: int | None) -> int:
    budget = DEFAULT_MAX_CHUNK_BYTES if max_chunk_bytes is None else max_chunk_bytes
    return max(1, budget // (4 * n_cols))


# ----------------------------------------------------------------------------------------------------
# paired cosine


def paired_cosine(x: torch.Tensor, y: torch.Tensor) -> PairedCosine:
    """Mean cosine of the aligned pairs ``(x_i, y_i)``, of a random pair ``(x_i, y_j), i != j``, and the gap.

    The random baseline is exact (the mean over all ``N (N - 1)`` non-aligned pairs), computed in
    ``O(N D)`` from row sums, so it has no sampling noise.
    """
    x, y = _check_pair(x, y)
    n = x.shape[0]
    if n < 2:
        raise ValueError("paired_cosine needs at least 2 pairs for a random-pair baseline")
    xu = torch.nn.functional.normalize(x.double(), dim=1, eps=1e-12)
    yu = torch.nn.functional.normalize(y.double(), dim=1, eps=1e-12)
    diag = (xu * yu).sum(1)
    paired = diag.mean().item()
    total = (xu.sum(0) @ yu.sum(0)).item()
    random = (total - diag.sum().item()) / (n * (n - 1))
    return PairedCosine(paired=paired, random=random, gap=paired - random)


# ----------------------------------------------------------------------------------------------------
# retrieval


@dataclass
class _Neighbours:
    """Top-k cosine neighbours of every row of x among y (``row_*``) and of every y among x (``col_*``)."""

    row_vals: torch.Tensor  # [Nx, k], descending
    row_idx: torch.Tensor
    col_vals: torch.Tensor  # [Ny, k], descending
    col_idx: torch.Tensor


class _ColumnTopK:
    """Running top-k of every column over row chunks ``sim [c, Ny]`` that arrive one after another.

    ``sim.topk(k, dim=0)`` is a strided reduction, 5-10x slower than the row-wise one on a large chunk
    (measured: 1.5-5 s vs 0.6 s per 20k x 20k on one core), and it would dominate the pass. After the
    first chunk, a column's k-th best so far is a threshold that few new entries beat (about
    ``k ln(N / k)`` per column over the whole pass), so each later chunk costs one comparison pass plus a
    small merge of the entries above threshold. Ties keep the earlier row (strict ``>``).
    """

    def __init__(self, n_cols: int, k: int, device: torch.device | str | None = None) -> None:
        self.k = k
        self.vals = torch.full((n_cols, k), -math.inf, device=device)
        self.idx = torch.zeros(n_cols, k, dtype=torch.long, device=device)
        self.seen = 0
        self.block_rows = 256

    def update(self, sim: torch.Tensor, offset: int) -> None:
        """Merge the rows ``offset .. offset + len(sim)`` of the similarity matrix into the running top-k."""
        # Blocks of 256 rows: reductions over dim 0 are fast on short blocks and slow on tall ones
        # (max(0) per 20k x 20k on one core: 0.6 s in 256-row blocks, 4 s on 3,355 rows at once), and
        # the thresholds tighten from one block to the next.
        for r0 in range(0, sim.shape[0], self.block_rows):
            block = sim[r0 : r0 + self.block_rows]
            start = offset + r0
            if self.k == 1:
                v, i = block.max(0)
                better = v > self.vals[:, 0]  # strict: on a tie the earlier row stays, as in argmax
                self.vals[:, 0] = torch.where(better, v, self.vals[:, 0])
                self.idx[:, 0] = torch.where(better, i + start, self.idx[:, 0])
            elif self.seen < self.k:  # some thresholds are still -inf
                self._merge_dense(block, start)
            else:
                mask = block > self.vals[:, -1][None, :]
                count = int(torch.count_nonzero(mask))  # (mask.sum() is 25x slower)
                if count > block.numel() // 4:  # e.g. rows sorted worst-first: stay memory-bounded
                    self._merge_dense(block, start)
                elif count:
                    r, j = mask.nonzero(as_tuple=True)
                    self._merge_sparse(r, j, block[r, j], start)
            self.seen += block.shape[0]

    def _merge_dense(self, sim: torch.Tensor, offset: int) -> None:
        kk = min(self.k, sim.shape[0])
        cv, ci = sim.topk(kk, dim=0)  # [kk, Ny]
        vals = torch.cat([self.vals, cv.T], 1)
        idx = torch.cat([self.idx, ci.T + offset], 1)
        self.vals, pos = vals.topk(self.k, dim=1)
        self.idx = idx.gather(1, pos)

    def _merge_sparse(self, r: torch.Tensor, j: torch.Tensor, v: torch.Tensor, offset: int) -> None:
        order = torch.argsort(j, stable=True)  # group by column, earlier rows first
        r, j, v = r[order], j[order], v[order]
        cols, counts = torch.unique_consecutive(j, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        group = torch.repeat_interleave(torch.arange(cols.numel(), device=j.device), counts)
        pos = torch.arange(j.numel(), device=j.device) - starts[group]
        width = int(counts.max())
        pad_v = torch.full((cols.numel(), width), -math.inf, device=v.device)
        pad_i = torch.zeros(cols.numel(), width, dtype=torch.long, device=v.device)
        pad_v[group, pos] = v
        pad_i[group, pos] = r + offset
        vals = torch.cat([self.vals[cols], pad_v], 1)
        idx = torch.cat([self.idx[cols], pad_i], 1)
        top_v, top_p = vals.topk(self.k, dim=1)
        self.vals[cols] = top_v
        self.idx[cols] = idx.gather(1, top_p)


def _sim_chunks(
    x: torch.Tensor, yu: torch.Tensor, max_chunk_bytes: int | None
) -> Iterator[tuple[int, torch.Tensor]]:
    """``(start, cos(x[start:start + c], yu))`` chunk by chunk, written into one reused buffer.

    ``x`` is normalised chunk by chunk (no unit copy of it is made) and ``yu`` is read transposed in
    place. Reusing the output buffer avoids a fresh large allocation, and its page faults, per chunk.
    """
    nx, ny = x.shape[0], yu.shape[0]
    rows = min(_chunk_rows(ny, max_chunk_bytes), nx)
    buf = torch.empty(rows, ny, device=yu.device)
    yt = yu.T
    for start in range(0, nx, rows):
        end = min(start + rows, nx)
        sim = buf[: end - start]
        torch.mm(_unit(x[start:end]), yt, out=sim)
        yield start, sim


def _neighbours(x: torch.Tensor, yu: torch.Tensor, k: int, max_chunk_bytes: int | None) -> _Neighbours:
    """One pass over similarity chunks; memory is x + y + yu + one chunk + O((Nx + Ny) k)."""
    nx, ny = x.shape[0], yu.shape[0]
    kr, kc = min(k, ny), min(k, nx)
    row_vals = torch.empty(nx, kr, device=yu.device)
    row_idx = torch.empty(nx, kr, dtype=torch.long, device=yu.device)
    cols = _ColumnTopK(ny, kc, yu.device)
    for start, sim in _sim_chunks(x, yu, max_chunk_bytes):
        end = start + sim.shape[0]
        if kr == 1:  # plain nearest neighbour: max is cheaper than topk
            v, i = sim.max(1)
            row_vals[start:end, 0], row_idx[start:end, 0] = v, i
        else:
            row_vals[start:end], row_idx[start:end] = sim.topk(kr, dim=1)
        cols.update(sim, start)
    return _Neighbours(row_vals, row_idx, cols.vals, cols.idx)


def _margin_predictions(nb: _Neighbours, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """LASER ratio margin: rescore each point's k nearest candidates by ``cos / mean(knn_x, knn_y)``."""
    ax = nb.row_vals[:, :k].mean(1)  # x_i's mean cosine to its k nearest y
    ay = nb.col_vals[:, :k].mean(1)
    cand = nb.row_idx[:, :k]
    score = nb.row_vals[:, :k] / ((ax[:, None] + ay[cand]) / 2)
    x2y = cand.gather(1, score.argmax(1, keepdim=True)).squeeze(1)
    cand_y = nb.col_idx[:, :k]
    score_y = nb.col_vals[:, :k] / ((ay[:, None] + ax[cand_y]) / 2)
    y2x = cand_y.gather(1, score_y.argmax(1, keepdim=True)).squeeze(1)
    return x2y, y2x


def _csls_predictions(
    x: torch.Tensor, yu: torch.Tensor, nb: _Neighbours, k: int, max_chunk_bytes: int | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """CSLS(x_i, y_j) = 2 cos - r_x(i) - r_y(j), maximised over all candidates (second pass)."""
    rx = nb.row_vals[:, :k].mean(1)
    ry = nb.col_vals[:, :k].mean(1)
    x2y = torch.empty(x.shape[0], dtype=torch.long, device=yu.device)
    cols = _ColumnTopK(yu.shape[0], 1, yu.device)
    tmp: torch.Tensor | None = None
    for start, sim in _sim_chunks(x, yu, max_chunk_bytes):
        end = start + sim.shape[0]
        if tmp is None:
            tmp = torch.empty_like(sim)
        t = tmp[: sim.shape[0]]
        sim.mul_(2)
        # rows: r_x(i) is constant along a row and does not change the argmax
        x2y[start:end] = torch.sub(sim, ry[None, :], out=t).argmax(1)
        # columns: r_y(j) is constant along a column
        cols.update(torch.sub(sim, rx[start:end, None], out=t), start)
    return x2y, cols.idx[:, 0].clone()


def _accuracy(pred: torch.Tensor) -> float:
    hits = int((pred == torch.arange(pred.shape[0], device=pred.device)).sum())
    return hits / pred.shape[0]


def _retrieve(
    x: torch.Tensor,
    y: torch.Tensor,
    methods: Sequence[str],
    ks: Mapping[str, int],
    max_chunk_bytes: int | None,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    for m in methods:
        if m not in RETRIEVAL_METHODS:
            raise ValueError(f"unknown retrieval method {m!r}; choose from {RETRIEVAL_METHODS}")
    x, y = _check_pair(x, y)
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; put both on the same device")
    with torch.inference_mode():
        yu = _unit(y)
        kmax = max(ks.get(m, DEFAULT_K[m]) for m in methods)
        if kmax < 1:
            raise ValueError(f"k must be >= 1, got {kmax}")
        nb = _neighbours(x, yu, kmax, max_chunk_bytes)
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for m in methods:
            k = ks.get(m, DEFAULT_K[m])
            if m == "cosine":
                out[m] = (nb.row_idx[:, 0].clone(), nb.col_idx[:, 0].clone())
            elif m == "margin":
                out[m] = _margin_predictions(nb, k)
            else:
                out[m] = _csls_predictions(x, yu, nb, k, max_chunk_bytes)
    return out


def bitext_retrieval(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    methods: Sequence[str] = RETRIEVAL_METHODS,
    csls_k: int = 10,
    margin_k: int = 4,
    max_chunk_bytes: int | None = None,
) -> dict[str, dict[str, float]]:
    """Top-1 bitext retrieval accuracy for several methods at once: ``{method: {"x2y", "y2x"}}``.

    ``x2y`` retrieves, for each ``x_i``, its nearest ``y`` and counts a hit when it is ``y_i``. Shares the
    neighbour pass between methods (one pass over the similarity chunks, two with CSLS).
    """
    preds = _retrieve(x, y, methods, {"csls": csls_k, "margin": margin_k, "cosine": 1}, max_chunk_bytes)
    return {m: {"x2y": _accuracy(a), "y2x": _accuracy(b)} for m, (a, b) in preds.items()}


def retrieval_accuracy(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: str = "cosine",
    k: int | None = None,
    max_chunk_bytes: int | None = None,
) -> dict[str, float]:
    """Top-1 bitext retrieval accuracy in both directions: ``{"x2y": float, "y2x": float}``.

    ``method``: ``"cosine"`` (nearest neighbour), ``"csls"`` (cross-domain similarity local scaling,
    ``k=10`` neighbours by default) or ``"margin"`` (LASER's ratio margin over the ``k=4`` nearest
    candidates). Memory is bounded by ``max_chunk_bytes`` per similarity chunk.
    """
    ks = {method: k if k is not None else DEFAULT_K.get(method, 1)}
    a, b = _retrieve(x, y, [method], ks, max_chunk_bytes)[method]
    return {"x2y": _accuracy(a), "y2x": _accuracy(b)}


def xsim_error(x: torch.Tensor, y: torch.Tensor, *, k: int = 4, max_chunk_bytes: int | None = None) -> float:
    """LASER's xsim error rate: the share of ``x_i`` whose ratio-margin nearest ``y`` is not ``y_i``."""
    a, _ = _retrieve(x, y, ["margin"], {"margin": k}, max_chunk_bytes)["margin"]
    return 1.0 - _accuracy(a)


# ----------------------------------------------------------------------------------------------------
# CKA


def _debiased_dot(xty: float, sx: torch.Tensor, sy: torch.Tensor, nx: float, ny: float, n: int) -> float:
    return xty - n / (n - 2.0) * float(sx @ sy) + nx * ny / ((n - 1) * (n - 2))


def _cka_terms(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float, float]:
    """``||X^T Y||_F^2, ||X^T X||_F, ||Y^T Y||_F`` of centred float64 x, y (in the cheaper space)."""
    n = x.shape[0]
    if n < max(x.shape[1], y.shape[1]):  # N x N Gram matrices: <XX^T, YY^T>_F = ||X^T Y||_F^2
        k, m = x @ x.T, y @ y.T
        return float((k * m).sum()), float(torch.linalg.matrix_norm(k)), float(torch.linalg.matrix_norm(m))
    return (
        float(torch.linalg.matrix_norm(x.T @ y) ** 2),
        float(torch.linalg.matrix_norm(x.T @ x)),
        float(torch.linalg.matrix_norm(y.T @ y)),
    )


def linear_cka(x: torch.Tensor, y: torch.Tensor, *, debiased: bool = False) -> float:
    """Linear centred kernel alignment of two representations of the same ``N`` items (in ``[0, 1]``).

    Computed in float64, in feature space (``O(N D^2)``) or with ``N x N`` Gram matrices when ``N < D``.
    ``debiased=True`` uses the unbiased HSIC estimator (Song et al. 2012), as in Kornblith et al.'s
    reference code; it needs ``N >= 4``.
    """
    x, y = _check_pair(x, y, same_d=False)
    x = x.double() - x.double().mean(0, keepdim=True)
    y = y.double() - y.double().mean(0, keepdim=True)
    n = x.shape[0]
    xty, xx, yy = _cka_terms(x, y)
    if debiased:
        if n < 4:
            raise ValueError(f"debiased CKA needs at least 4 items, got {n}")
        sx = (x * x).sum(1)
        sy = (y * y).sum(1)
        nx, ny = float(sx.sum()), float(sy.sum())
        xty = _debiased_dot(xty, sx, sy, nx, ny, n)
        xx = math.sqrt(max(_debiased_dot(xx**2, sx, sx, nx, nx, n), 0.0))
        yy = math.sqrt(max(_debiased_dot(yy**2, sy, sy, ny, ny, n), 0.0))
    denom = xx * yy
    return xty / denom if denom > 0 else 0.0


# ----------------------------------------------------------------------------------------------------
# language identification probe


def _probe_split(
    embeddings_by_lang: Mapping[str, torch.Tensor], test_fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xs_tr, ys_tr, xs_te, ys_te = [], [], [], []
    dim = None
    for label, (lang, emb) in enumerate(sorted(embeddings_by_lang.items())):
        emb = _as_matrix(emb, f"embeddings for {lang!r}").float()
        if dim is not None and emb.shape[1] != dim:
            raise ValueError(f"embeddings for {lang!r} have dimension {emb.shape[1]}, others {dim}")
        dim = emb.shape[1]
        n = emb.shape[0]
        n_test = max(1, round(n * test_fraction))
        if n - n_test < 1:
            raise ValueError(f"language {lang!r} has {n} embeddings, too few for a train/test split")
        perm = torch.randperm(n, generator=g)
        xs_te.append(emb[perm[:n_test]])
        xs_tr.append(emb[perm[n_test:]])
        ys_te.append(torch.full((n_test,), label))
        ys_tr.append(torch.full((n - n_test,), label))
    return torch.cat(xs_tr), torch.cat(ys_tr), torch.cat(xs_te), torch.cat(ys_te)


def language_probe_accuracy(
    embeddings_by_lang: Mapping[str, torch.Tensor],
    *,
    method: str = "logistic",
    test_fraction: float = 0.3,
    l2: float = 1e-3,
    max_iter: int = 100,
    seed: int = 0,
) -> float:
    """Held-out accuracy of a linear language-ID probe.

    Each language's embeddings are split (stratified, ``test_fraction`` held out, fixed ``seed``) and
    features are standardised with the training statistics. ``method="logistic"`` fits a multinomial
    logistic regression with L-BFGS (``l2`` penalty on the weights); ``method="ridge"`` solves a ridge
    classifier in closed form (targets +-1, ``alpha = l2 * n_train``; ~100x faster, as scikit-learn's
    ``RidgeClassifier``). High accuracy means the layer encodes which language a phrase is in; a
    language-neutral layer scores near ``1 / num_languages``.
    """
    if len(embeddings_by_lang) < 2:
        raise ValueError(f"a language probe needs at least 2 languages, got {sorted(embeddings_by_lang)}")
    if method not in ("logistic", "ridge"):
        raise ValueError(f"unknown probe method {method!r}; choose 'logistic' or 'ridge'")
    xtr, ytr, xte, yte = _probe_split(embeddings_by_lang, test_fraction, seed)
    mean = xtr.mean(0, keepdim=True)
    std = xtr.std(0, keepdim=True).clamp_min(1e-8)
    xtr = (xtr - mean) / std
    xte = (xte - mean) / std
    n_cls = len(embeddings_by_lang)
    if method == "ridge":
        xd = xtr.double()
        targets = -torch.ones(xtr.shape[0], n_cls, dtype=torch.float64)
        targets[torch.arange(xtr.shape[0]), ytr] = 1.0
        t_mean = targets.mean(0, keepdim=True)  # features are centred already: the intercept is t_mean
        gram = xd.T @ xd + l2 * xtr.shape[0] * torch.eye(xd.shape[1], dtype=torch.float64)
        coef = torch.linalg.solve(gram, xd.T @ (targets - t_mean))
        pred = (xte.double() @ coef + t_mean).argmax(1)
        return int((pred == yte).sum()) / yte.shape[0]
    w = torch.zeros(xtr.shape[1], n_cls, requires_grad=True)
    b = torch.zeros(n_cls, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe", tolerance_grad=1e-6)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xtr @ w + b, ytr) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        pred = (xte @ w + b).argmax(1)
    return int((pred == yte).sum()) / yte.shape[0]


# ----------------------------------------------------------------------------------------------------
# isotropy


def isotropy(x: torch.Tensor, *, normalize: bool = True) -> IsotropyResult:
    """Isotropy of a set of vectors (see :class:`~mpm_align.interfaces.IsotropyResult`).

    With ``normalize`` (default) rows are scaled to unit length first, so the score describes directions
    only (raw LLM hidden states have norms in the hundreds, which would send ``exp(u . x)`` to 0 or inf).
    The partition ratio uses both signs of every eigenvector of ``X^T X``; the effective rank uses the
    singular values of the mean-centred matrix.
    """
    x = _as_matrix(x, "x").double()
    n = x.shape[0]
    if n < 2:
        raise ValueError("isotropy needs at least 2 vectors")
    if normalize:
        x = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
    n, d = x.shape
    # Principal directions of X^T X. With N < D they are X^T v / |X^T v| for the eigenvectors v of the
    # N x N Gram matrix, and the remaining D - rank directions have u . x_i = 0, i.e. log Z = log N.
    # (numpy's LAPACK eigh: torch's float64 eigh is ~10x slower on these CPUs.)
    if n < d:
        evals, v = np.linalg.eigh((x @ x.T).numpy())
        keep = evals > evals.max() * 1e-10
        vecs = x.T @ torch.from_numpy(v[:, keep])
        vecs = vecs / vecs.norm(dim=0, keepdim=True)
    else:
        vecs = torch.from_numpy(np.linalg.eigh((x.T @ x).numpy())[1])
    proj = x @ vecs  # [N, K]
    log_z = torch.cat([torch.logsumexp(proj, 0), torch.logsumexp(-proj, 0)])
    if vecs.shape[1] < d:
        log_z = torch.cat([log_z, torch.tensor([math.log(n)], dtype=log_z.dtype)])
    partition_ratio = math.exp(float(log_z.min() - log_z.max()))
    xu = torch.nn.functional.normalize(x, dim=1, eps=1e-12)
    s = xu.sum(0)
    mean_cos = (float(s @ s) - float((xu * xu).sum())) / (n * (n - 1))
    xc = x - x.mean(0, keepdim=True)
    gram = xc @ xc.T if n < d else xc.T @ xc  # same non-zero eigenvalues
    sv = torch.from_numpy(np.linalg.eigvalsh(gram.numpy())).clamp_min(0).sqrt()  # singular values of xc
    p = sv / sv.sum().clamp_min(1e-300)
    p = p[p > 0]
    eff_rank = math.exp(float(-(p * p.log()).sum()))
    return IsotropyResult(partition_ratio=partition_ratio, mean_cosine=mean_cos, effective_rank=eff_rank)
