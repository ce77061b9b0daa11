"""mpm-vision speed, side by side with transformers' LlavaForConditionalGeneration.

Both models hold the *same weights* (``mpm_vision.export_llava``): a CLIP-style timm ViT (64 px,
patch 8 -> 64 visual tokens), LLaVA's 2-layer MLP bridge, a Llama LM. Measured, per LM size:

1. forward+backward of a training batch (loss on the answer tokens), ours vs HF Llava;
2. greedy generation tokens/s (KV cache), ours vs HF Llava ``generate``;
3. the cost of each bridge kind (64 output tokens) relative to the LM alone on the same sequence.

Run:  python benchmarks/vision/bench_vision.py [--quick] [--device cpu|cuda] [--threads N]
Writes benchmarks/results/vision_bench.json (and prints a table).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from mpm_vision import VisionLanguageModel, create_bridge, create_encoder, export_llava

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "vision_bench.json"
PROMPT = "what is this emoji? answer with its name."
ANSWERS = [
    "a red apple",
    "grinning face with big eyes",
    "cat",
    "flag of japan",
    "smiling face with sunglasses",
    "a green tree in the park",
    "the cat sits on the mat",
    "rocket",
]


def make_tokenizer() -> Any:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([PROMPT, *ANSWERS, "USER: ASSISTANT:"], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


def build(lm_cfg: dict[str, Any], device: str) -> tuple[VisionLanguageModel, Any]:
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(
        LlamaConfig(pad_token_id=0, bos_token_id=1, eos_token_id=2, max_position_embeddings=512, **lm_cfg)
    )
    enc = create_encoder(
        "vit_base_patch16_clip_quickgelu_224",
        image_size=64,
        patch_size=8,
        embed_dim=192,
        depth=4,
        num_heads=3,
        feature_layer=-2,
    )
    bridge = create_bridge("mlp", in_dim=enc.feature_dim, out_dim=lm_cfg["hidden_size"])
    vlm = VisionLanguageModel(enc, bridge, lm, make_tokenizer()).to(device)
    llava = export_llava(vlm).to(device)
    return vlm, llava


class Timing:
    """Fastest wall time and fastest process CPU time of repeated calls, in seconds.

    On a shared machine other processes stretch wall time; process CPU time counts only the work
    of this process (all its threads), so ratios are computed from it on the CPU."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []

    @property
    def best(self) -> float:
        return min(self.cpu) if DEVICE == "cpu" else min(self.wall)

    def as_dict(self) -> dict[str, float]:
        return {"wall_ms": 1e3 * min(self.wall), "cpu_ms": 1e3 * min(self.cpu)}


DEVICE = "cpu"


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def timeit(*fns: Callable[[], Any], reps: int, warmup: int = 1) -> list[Timing]:
    """Time the functions *interleaved* (a, b, a, b, ...) so that outside load hits all alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    out = [Timing() for _ in fns]
    for _ in range(reps):
        for fn, acc in zip(fns, out):
            _sync()
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            _sync()
            acc.wall.append(time.perf_counter() - w0)
            acc.cpu.append(time.process_time() - c0)
    return out


def images(n: int) -> list[Any]:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    return [
        Image.fromarray(torch.randint(0, 255, (72, 72, 3), generator=g, dtype=torch.uint8).numpy())
        for _ in range(n)
    ]


def bench_config(
    name: str, lm_cfg: dict[str, Any], batch_size: int, reps: int, new_tokens: int, device: str
) -> dict[str, Any]:
    vlm, llava = build(lm_cfg, device)
    vlm.train()
    llava.train()
    imgs = images(batch_size)
    samples = [
        {"image": im, "prompt": PROMPT, "answer": ANSWERS[i % len(ANSWERS)]} for i, im in enumerate(imgs)
    ]
    batch = vlm.collate(samples).to(device)
    assert batch.labels is not None and batch.pixel_values is not None

    def ours_step() -> float:
        vlm.zero_grad(set_to_none=True)
        loss = vlm.training_step(batch)
        loss.backward()
        return float(loss.detach())

    def hf_step() -> float:
        llava.zero_grad(set_to_none=True)
        loss = llava(
            input_ids=batch.input_ids,
            pixel_values=batch.pixel_values,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
        ).loss
        loss.backward()
        return float(loss.detach())

    loss_diff = abs(ours_step() - hf_step())
    t_ours, t_hf = timeit(ours_step, hf_step, reps=reps, warmup=0)

    # --- generation (greedy, fixed length so both produce the same number of tokens)
    vlm.eval()
    llava.eval()
    gen_kw = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
    prompts = vlm.collate(
        [{"image": im, "prompt": PROMPT} for im in imgs], padding_side="left", for_generation=True
    ).to(device)

    @torch.no_grad()
    def ours_gen() -> torch.Tensor:
        return vlm.generate_from_inputs(
            prompts.input_ids, prompts.attention_mask, prompts.pixel_values, **gen_kw
        )

    @torch.no_grad()
    def ours_gen_end_to_end() -> torch.Tensor:  # + image preprocessing and tokenisation
        return vlm.generate(imgs, [PROMPT] * batch_size, **gen_kw).sequences

    @torch.no_grad()
    def hf_gen() -> torch.Tensor:
        out = llava.generate(
            input_ids=prompts.input_ids,
            pixel_values=prompts.pixel_values,
            attention_mask=prompts.attention_mask,
            pad_token_id=vlm.pad_token_id,
            eos_token_id=vlm.tokenizer.eos_token_id,  # the same stopping rule as ours
            **gen_kw,
        )
        return out[:, prompts.input_ids.shape[1] :]

    same_tokens = ours_gen().tolist() == hf_gen().tolist() == ours_gen_end_to_end().tolist()
    g_ours, g_hf, g_e2e = timeit(ours_gen, hf_gen, ours_gen_end_to_end, reps=reps + 2, warmup=0)
    n_tok = batch_size * new_tokens

    # --- bridge cost vs the LM alone at 64 visual tokens
    feats = vlm.encoder(batch.pixel_values).detach()
    seq_embeds = vlm.embed_inputs(batch.input_ids, vlm.encode_images(batch.pixel_values)).detach()
    lm = vlm.language_model

    def lm_fwd_bwd() -> None:
        lm.zero_grad(set_to_none=True)
        out = lm(inputs_embeds=seq_embeds, attention_mask=batch.attention_mask, logits_to_keep=1)
        out.logits.float().mean().backward()

    @torch.no_grad()
    def lm_fwd() -> None:
        lm(inputs_embeds=seq_embeds, attention_mask=batch.attention_mask, logits_to_keep=1)

    t_lm_fwd, t_lm_fb = timeit(lm_fwd, lm_fwd_bwd, reps=reps)
    bridges: dict[str, Any] = {}
    for kind in ("mlp", "query", "perceiver", "qformer"):
        torch.manual_seed(0)
        b = create_bridge(
            kind, in_dim=vlm.encoder.feature_dim, out_dim=lm_cfg["hidden_size"], num_queries=64
        ).to(device)

        @torch.no_grad()
        def b_fwd(b: Any = b) -> None:
            b(feats)

        def b_fb(b: Any = b) -> None:
            b.zero_grad(set_to_none=True)
            b(feats).mean().backward()

        t_fwd, t_fb = timeit(b_fwd, b_fb, reps=reps)
        bridges[kind] = {
            "params": sum(p.numel() for p in b.parameters()),
            "output_tokens": int(b(feats).shape[1]),
            "forward": t_fwd.as_dict(),
            "fwd_bwd": t_fb.as_dict(),
            "forward_vs_lm": t_fwd.best / t_lm_fwd.best,
            "fwd_bwd_vs_lm": t_fb.best / t_lm_fb.best,
        }
    return {
        "name": name,
        "lm": lm_cfg,
        "lm_params": sum(p.numel() for p in lm.parameters()),
        "batch_size": batch_size,
        "seq_len": int(batch.input_ids.shape[1]),
        "visual_tokens": vlm.num_image_tokens,
        "answer_tokens": int((batch.labels[:, 1:] != -100).sum()),
        "train_step": {
            "ours": t_ours.as_dict(),
            "hf_llava": t_hf.as_dict(),
            "ratio_ours_over_hf": t_ours.best / t_hf.best,
            "loss_abs_diff": loss_diff,
        },
        "generate": {
            "new_tokens": n_tok,
            "ours": g_ours.as_dict(),
            "hf_llava": g_hf.as_dict(),
            "ours_tok_s": n_tok / g_ours.best,
            "hf_llava_tok_s": n_tok / g_hf.best,
            "ratio_ours_over_hf": g_hf.best / g_ours.best,
            "ours_end_to_end": g_e2e.as_dict(),
            "ours_end_to_end_tok_s": n_tok / g_e2e.best,
            "identical_tokens": same_tokens,
        },
        "lm_alone": {"forward": t_lm_fwd.as_dict(), "fwd_bwd": t_lm_fb.as_dict()},
        "bridges": bridges,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time = compute)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    reps = 2 if args.quick else 5
    configs = [
        (
            "llama-h256-v32k",
            {
                "hidden_size": 256,
                "intermediate_size": 688,
                "num_hidden_layers": 4,
                "num_attention_heads": 4,
                "num_key_value_heads": 2,
                "vocab_size": 32000,
            },
            8,
            16,
        ),
        (
            "llama-h640-v262k (Gemma-3-270M width and vocabulary)",
            {
                "hidden_size": 640,
                "intermediate_size": 2048,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "num_key_value_heads": 1,
                "vocab_size": 262144,
                "tie_word_embeddings": True,
            },
            4,
            16,
        ),
    ]
    t0 = time.perf_counter()
    results = []
    for name, cfg, bs, new_tokens in configs:
        r = bench_config(name, cfg, bs, reps, new_tokens, args.device)
        results.append(r)
        ts, g = r["train_step"], r["generate"]
        print(
            f"\n== {name}: LM {r['lm_params'] / 1e6:.1f}M params, batch {bs}, seq {r['seq_len']} "
            f"({r['visual_tokens']} visual, {r['answer_tokens']} answer tokens)"
        )
        unit = "cpu_ms" if args.device == "cpu" else "wall_ms"
        print(
            f"  fwd+bwd   ours {ts['ours'][unit]:8.1f} ms | HF Llava {ts['hf_llava'][unit]:8.1f} ms | "
            f"ratio {ts['ratio_ours_over_hf']:.3f} (target <= 1.05) | loss diff {ts['loss_abs_diff']:.1e}"
        )
        print(
            f"  generate  ours {g['ours_tok_s']:8.1f} tok/s | HF Llava {g['hf_llava_tok_s']:8.1f} tok/s | "
            f"ratio {g['ratio_ours_over_hf']:.3f} (target >= 1.0) | identical tokens {g['identical_tokens']} | "
            f"ours incl. preprocessing {g['ours_end_to_end_tok_s']:.1f} tok/s"
        )
        lm_alone = r["lm_alone"]
        print(
            f"  LM alone  fwd {lm_alone['forward'][unit]:.1f} ms, fwd+bwd {lm_alone['fwd_bwd'][unit]:.1f} ms"
        )
        for kind, b in r["bridges"].items():
            print(
                f"  bridge {kind:9s} {b['params'] / 1e6:6.2f}M params, {b['output_tokens']} tokens: "
                f"fwd {b['forward'][unit]:7.2f} ms ({100 * b['forward_vs_lm']:5.1f}% of LM), "
                f"fwd+bwd {b['fwd_bwd'][unit]:7.2f} ms ({100 * b['fwd_bwd_vs_lm']:5.1f}% of LM)"
            )
    payload = {
        "benchmark": "mpm-vision vs transformers LlavaForConditionalGeneration (same weights)",
        "timing": "fastest of N interleaved repetitions (ours, HF, ours, HF, ...); ratios from process CPU "
        "time on the CPU (robust to other load on a shared machine), wall time on CUDA",
        "repetitions": reps,
        "command": "python benchmarks/vision/bench_vision.py"
        + (" --quick" if args.quick else "")
        + (f" --threads {args.threads}" if args.threads != 1 else "")
        + (f" --device {args.device}" if args.device != "cpu" else ""),
        "device": args.device,
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": __import__("transformers").__version__,
        "machine": platform.machine(),
        "wall_seconds": time.perf_counter() - t0,
        "configs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {args.out} in {payload['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
