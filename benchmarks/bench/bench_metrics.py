"""mpm-bench metrics vs their reference implementations, side by side, on real EmojiCap names.

* corpus BLEU / chrF (``mpm_bench.corpus_bleu/corpus_chrf``) vs the ``sacrebleu`` command line on the
  same files, in all 14 languages (tokenizers zh / ja-mecab / ko-mecab / 13a);
* ``frechet_distance`` (symmetric eigen form) vs the direct ``scipy.linalg.sqrtm`` formula;
* ``topk_accuracy`` vs ``sklearn.metrics.top_k_accuracy_score``.

System outputs are deterministic stand-ins: for language L, "English answers" (the quasi-zero-shot
failure: the English name given for every language) and "neighbour" answers (the name of the next
emoji in the split). Run: ``python benchmarks/bench/bench_metrics.py [--data DIR]``; writes
``benchmarks/results/bench_metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from mpm_bench import (
    EMOJICAP_LANGS,
    PixelFeatures,
    build_emojicap,
    corpus_bleu,
    corpus_chrf,
    frechet_distance,
    load_emojicap,
    topk_accuracy,
)
from mpm_bench.langs import bleu_tokenizer

ROOT = Path(__file__).resolve().parents[2]


def sacrebleu_cli(refs: list[str], hyps: list[str], metric: str, tok: str | None) -> tuple[float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        ref, hyp = Path(tmp) / "ref.txt", Path(tmp) / "hyp.txt"
        ref.write_text("\n".join(refs) + "\n", encoding="utf-8")
        hyp.write_text("\n".join(hyps) + "\n", encoding="utf-8")
        cmd = [sys.executable, "-m", "sacrebleu", str(ref), "-i", str(hyp), "-m", metric, "-b", "-w", "6"]
        if tok:
            cmd += ["-tok", tok]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        return float(out.stdout.strip()), time.perf_counter() - start


def direct_fd(a: np.ndarray, b: np.ndarray) -> float:
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():  # pytorch-fid's fallback
        off = np.eye(s1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data", default=None, help="EmojiCap folder (built at 32 px in a temp dir if absent)"
    )
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/bench_metrics.json"))
    args = parser.parse_args()
    tmp = None
    data = args.data
    if data is None or not (Path(data) / "manifest.json").is_file():
        tmp = tempfile.TemporaryDirectory()
        data = data or tmp.name
        build_emojicap(data, size=32, progress=False)
    test = load_emojicap(data, "test")
    train = load_emojicap(data, "train")

    rows = []
    for lang in EMOJICAP_LANGS:
        refs = [ex.names[lang] for ex in test]
        systems = {
            "english_answers": [ex.names["en"] for ex in test],
            "neighbour": [test[(i + 1) % len(test)].names[lang] for i in range(len(test))],
        }
        for system, hyps in systems.items():
            t0 = time.perf_counter()
            bleu = corpus_bleu(hyps, refs, lang=lang).score
            chrf = corpus_chrf(hyps, refs, lang=lang).score
            ours_s = time.perf_counter() - t0
            cli_bleu, t_b = sacrebleu_cli(refs, hyps, "bleu", bleu_tokenizer(lang))
            cli_chrf, t_c = sacrebleu_cli(refs, hyps, "chrf", None)
            rows.append({
                "lang": lang, "system": system, "tokenizer": bleu_tokenizer(lang), "n": len(refs),
                "bleu_ours": bleu, "bleu_cli": cli_bleu, "bleu_abs_diff": abs(bleu - cli_bleu),
                "chrf_ours": chrf, "chrf_cli": cli_chrf, "chrf_abs_diff": abs(chrf - cli_chrf),
                "seconds_ours": ours_s, "seconds_cli": t_b + t_c,
            })  # fmt: skip
    max_bleu = max(r["bleu_abs_diff"] for r in rows)
    max_chrf = max(r["chrf_abs_diff"] for r in rows)
    print(
        f"{'lang':4} {'system':16} {'tok':9} {'BLEU ours':>10} {'BLEU cli':>10} {'chrF ours':>10} {'chrF cli':>10}"
    )
    for r in rows:
        print(f"{r['lang']:4} {r['system']:16} {r['tokenizer']:9} {r['bleu_ours']:10.4f} {r['bleu_cli']:10.4f} "
              f"{r['chrf_ours']:10.4f} {r['chrf_cli']:10.4f}")  # fmt: skip
    print(f"max |ours - sacrebleu CLI|: BLEU {max_bleu:.2e}, chrF {max_chrf:.2e}")

    fd_rows = []
    feats = PixelFeatures(side=8)
    fa, fb = feats([ex.image for ex in test]), feats([ex.image for ex in train])
    rng = np.random.default_rng(0)
    for name, a, b in [
        ("emojicap pixels8 test vs train (d=192)", fa, fb),
        ("gaussian d=64 n=2000", rng.normal(size=(2000, 64)), rng.normal(0.1, 1.1, size=(2000, 64))),
    ]:
        t0 = time.perf_counter()
        ours = frechet_distance(a, b)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        ref = direct_fd(a, b)
        t_ref = time.perf_counter() - t0
        fd_rows.append({"case": name, "ours": ours, "scipy_sqrtm": ref, "abs_diff": abs(ours - ref),
                        "rel_diff": abs(ours - ref) / max(abs(ref), 1e-12), "seconds_ours": t_ours,
                        "seconds_scipy": t_ref, "speed_ratio_scipy_over_ours": t_ref / t_ours})  # fmt: skip
        print(f"FD {name}: ours {ours:.6f} scipy {ref:.6f} |diff| {abs(ours - ref):.2e} "
              f"time ours {t_ours * 1e3:.1f} ms scipy {t_ref * 1e3:.1f} ms")  # fmt: skip

    from sklearn.metrics import top_k_accuracy_score

    scores, targets = rng.normal(size=(5000, 50)), rng.integers(0, 50, 5000)
    topk = []
    for k in (1, 5):
        ours, ref = (
            topk_accuracy(scores, targets, k),
            top_k_accuracy_score(targets, scores, k=k, labels=np.arange(50)),
        )
        topk.append({"k": k, "ours": ours, "sklearn": float(ref), "abs_diff": abs(ours - float(ref))})
        print(f"top-{k} accuracy: ours {ours:.6f} sklearn {ref:.6f}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "command": "python benchmarks/bench/bench_metrics.py",
        "bleu_chrf": rows, "max_abs_diff": {"bleu": max_bleu, "chrf": max_chrf},
        "frechet": fd_rows, "topk": topk,
    }, indent=1, ensure_ascii=False))  # fmt: skip
    print(f"-> {out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
