"""mpm-paint speed, side by side with the bare diffusers components it wraps.

Same UNet, scheduler, conditioning and noise in both columns:

1. sampling: ``MPMPaintPipeline(prompt_embeds=..., negative_prompt_embeds=...)`` (classifier-free
   guidance, progress bar on) vs a plain ``scheduler.scale_model_input -> unet -> CFG -> scheduler.step``
   loop; per-step time, and the pipeline's overhead (target: <= 3 %);
2. sampling from text prompts (the conditioner's LM + projection included), for scale;
3. one training step (forward, backward, AdamW): ``PaintTrainable.training_step`` vs a hand-written
   diffusers step (LM hidden states -> projection, ``DDPMScheduler.add_noise``, UNet, MSE), for the
   "paint" stage (cross-attention + projection) and "paint-full" (whole UNet + projection).

Timings interleave the two columns and report medians, because the machine is shared.

Run:  python benchmarks/paint/bench_paint.py [--quick] [--device cpu|cuda] [--threads N]
Writes benchmarks/results/paint_bench.json (and prints a table).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from diffusers.utils.torch_utils import randn_tensor
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

from mpm_paint import Conditioning, LLMConditioner, MPMPaintPipeline, PaintTrainable, PaintTrainingConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "paint_bench.json"
PROMPTS = ["a red apple", "smiling face with sunglasses", "红苹果", "un gato rojo"]


def make_tokenizer() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(PROMPTS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


def make_models(device: str, quick: bool) -> tuple[LLMConditioner, UNet2DConditionModel]:
    torch.manual_seed(0)
    tok = make_tokenizer()
    lm = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=128,
            intermediate_size=256,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=128,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    width = 16 if quick else 32
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(width, 2 * width),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64,
        attention_head_dim=8,
        norm_num_groups=8,
    ).to(device)
    cond = LLMConditioner(lm, tok, out_dim=64).to(device)
    return cond, unet


def bare_sampling(
    unet: UNet2DConditionModel,
    scheduler: Any,
    cond: Conditioning,
    uncond: Conditioning,
    steps: int,
    guidance: float,
    seed: int,
    device: str,
) -> torch.Tensor:
    """Classifier-free guidance sampling straight on diffusers components (the reference column)."""
    gen = torch.Generator(device).manual_seed(seed)
    n = len(cond)
    x = randn_tensor((n, 3, 32, 32), generator=gen, device=torch.device(device), dtype=torch.float32)
    scheduler.set_timesteps(steps, device=device)
    x = x * scheduler.init_noise_sigma
    both = Conditioning.cat([uncond, cond])
    for t in scheduler.timesteps:
        inp = scheduler.scale_model_input(torch.cat([x, x]), t)
        eps = unet(
            inp,
            t,
            encoder_hidden_states=both.hidden_states,
            encoder_attention_mask=both.attention_mask,
            return_dict=False,
        )[0]
        e_u, e_c = eps.chunk(2)
        x = scheduler.step(e_u + guidance * (e_c - e_u), t, x, eta=0.0, return_dict=False)[0]
    return x


def timed(fn: Callable[[], Any], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def interleaved(fns: dict[str, Callable[[], Any]], reps: int, device: str) -> dict[str, list[float]]:
    """Seconds of each callable per repetition, run alternately (one warm-up each)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for k, fn in fns.items():
            times[k].append(timed(fn, device))
    return times


def summary(times: dict[str, list[float]], per: float = 1.0) -> dict[str, Any]:
    """Median and min (the least-disturbed run on a shared machine) per column, and their ratios."""
    med = {k: statistics.median(v) / per for k, v in times.items()}
    low = {k: min(v) / per for k, v in times.items()}
    out: dict[str, Any] = {}
    for k in times:
        out[f"{k}_median_s"] = med[k]
        out[f"{k}_min_s"] = low[k]
    out["ours_over_bare_median"] = med["ours"] / med["bare"]
    # Adjacent runs share the machine's load, so the median of per-repetition ratios is the steadiest.
    out["ours_over_bare_paired"] = statistics.median(o / b for o, b in zip(times["ours"], times["bare"]))
    out["ours_over_bare_min"] = low["ours"] / low["bare"]
    out["raw_seconds"] = times
    return out


class InsideTimer:
    """Seconds spent inside ``unet.forward`` and ``scheduler.step`` (the work both columns share)."""

    def __init__(self, unet: UNet2DConditionModel, schedulers: list[Any]) -> None:
        self.inside = 0.0
        self._t = 0.0
        unet.register_forward_pre_hook(self._start)
        unet.register_forward_hook(self._stop)
        for sched in schedulers:
            original = sched.step

            @functools.wraps(original)  # keeps the signature the pipeline inspects (eta, generator)
            def step(*a: Any, _orig: Any = original, **k: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return _orig(*a, **k)
                finally:
                    self.inside += time.perf_counter() - t0

            sched.step = step

    def _start(self, *args: Any) -> None:
        self._t = time.perf_counter()

    def _stop(self, *args: Any) -> None:
        self.inside += time.perf_counter() - self._t


def outside_time(fn: Callable[[], Any], timer: InsideTimer, reps: int, steps: int) -> tuple[float, float]:
    """Median (total, outside-unet-and-scheduler) seconds per step of ``fn``."""
    totals, outsides = [], []
    for _ in range(reps):
        timer.inside = 0.0
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
        totals.append(total / steps)
        outsides.append((total - timer.inside) / steps)
    return statistics.median(totals), statistics.median(outsides)


def bench_sampling(
    cond_mod: LLMConditioner, unet: UNet2DConditionModel, args: argparse.Namespace
) -> dict[str, Any]:
    device, steps, guidance = args.device, args.steps, 7.5
    prompts = PROMPTS[: args.batch]
    with torch.no_grad():
        cond, uncond = cond_mod(prompts), cond_mod([""] * len(prompts))
    pipe = MPMPaintPipeline(unet=unet, scheduler=DDIMScheduler(), conditioner=cond_mod)
    pipe.set_progress_bar_config(disable=False, leave=False)
    ref_sched = DDIMScheduler()

    def ours() -> torch.Tensor:
        return pipe(
            prompt_embeds=cond,
            negative_prompt_embeds=uncond,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device).manual_seed(0),
            output_type="latent",
        ).images

    def bare() -> torch.Tensor:
        with torch.no_grad():
            return bare_sampling(unet, ref_sched, cond, uncond, steps, guidance, 0, device)

    def ours_text() -> torch.Tensor:
        return pipe(
            prompts,
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=torch.Generator(device).manual_seed(0),
            output_type="pt",
        ).images

    max_diff = float((ours() - bare()).abs().max())
    # Within-run split (immune to the shared machine's load swings): the time each column spends
    # outside the UNet and scheduler calls is what the pipeline adds.
    timer = InsideTimer(unet, [pipe.scheduler, ref_sched])
    ours_total, ours_out = outside_time(ours, timer, args.reps, steps)
    bare_total, bare_out = outside_time(bare, timer, args.reps, steps)
    outside = {
        "ours_ms_per_step": 1e3 * ours_out,
        "bare_ms_per_step": 1e3 * bare_out,
        "ours_total_ms_per_step": 1e3 * ours_total,
        "bare_total_ms_per_step": 1e3 * bare_total,
        "added_overhead_percent": 100.0 * (ours_out - bare_out) / bare_total,
    }
    res = summary(
        interleaved({"ours": ours, "bare": bare, "ours_text": ours_text}, args.reps, device), per=steps
    )
    res.update(
        {
            "unit": "seconds per sampling step",
            "batch": len(prompts),
            "steps": steps,
            "guidance_scale": guidance,
            "scheduler": "DDIMScheduler",
            "max_abs_diff_ours_vs_bare": max_diff,
            "outside_unet_and_scheduler": outside,
            "overhead_percent_median": 100.0 * (res["ours_over_bare_median"] - 1.0),
            "overhead_percent_min": 100.0 * (res["ours_over_bare_min"] - 1.0),
            "overhead_percent_paired": 100.0 * (res["ours_over_bare_paired"] - 1.0),
        }
    )
    return res


def bench_training(
    cond_mod: LLMConditioner, unet: UNet2DConditionModel, args: argparse.Namespace, stage: str
) -> dict[str, Any]:
    device, b = args.device, args.train_batch
    prompts = (PROMPTS * b)[:b]
    pixels = torch.rand(b, 3, 32, 32, device=device) * 2 - 1
    model = PaintTrainable(
        unet=unet,
        conditioner=cond_mod,
        scheduler=DDPMScheduler(),
        config=PaintTrainingConfig(cond_dropout=0.0),
    ).to(device)
    params = model.stage_parameters(stage)  # a query; freeze the rest explicitly, as mpm-train does
    model.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    model.train()
    opt = torch.optim.AdamW(params, lr=1e-5)
    ids, mask = cond_mod.tokenize(prompts)
    batch = {"pixel_values": pixels, "input_ids": ids, "attention_mask": mask}
    sched = DDPMScheduler()

    def ours() -> None:
        loss = model.training_step(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def bare() -> None:
        # The same step written directly against transformers + diffusers.
        with torch.no_grad():
            hidden = cond_mod.language_model.base_model(
                input_ids=ids.to(device), attention_mask=mask.to(device), output_hidden_states=True
            ).hidden_states[-1]
        enc = cond_mod.projection(hidden)
        noise = torch.randn_like(pixels)
        t = torch.randint(0, sched.config.num_train_timesteps, (b,), device=device)
        pred = unet(
            sched.add_noise(pixels, noise, t),
            t,
            encoder_hidden_states=enc,
            encoder_attention_mask=mask.to(device),
        ).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    res = summary(interleaved({"ours": ours, "bare": bare}, args.reps, device))
    res.update(
        {
            "unit": "seconds per training step (fwd+bwd+AdamW)",
            "stage": stage,
            "batch": b,
            "trainable_params": sum(p.numel() for p in params),
        }
    )
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller UNet, fewer repetitions")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (1 is steadiest on a shared box)"
    )
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    args.reps = args.reps or (2 if args.quick else 9)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    cond_mod, unet = make_models(args.device, args.quick)
    sampling = bench_sampling(cond_mod, unet, args)
    training = [bench_training(cond_mod, unet, args, stage) for stage in ("paint", "paint-full")]
    result = {
        "benchmark": "mpm-paint vs bare diffusers components",
        "command": "python benchmarks/paint/bench_paint.py" + (" --quick" if args.quick else ""),
        "machine": {
            "platform": platform.platform(),
            "device": args.device,
            "torch": torch.__version__,
            "threads": args.threads,
            "loadavg_at_end": os.getloadavg(),
        },
        "unet_params": sum(p.numel() for p in unet.parameters()),
        "resolution": 32,
        "reps": args.reps,
        "sampling": sampling,
        "training": training,
        "wall_seconds": round(time.time() - t0, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    s = sampling
    print(
        f"UNet {result['unet_params'] / 1e6:.2f}M params, 32x32 px, batch {s['batch']} x CFG, {s['steps']} DDIM steps"
    )
    print(
        f"{'':28}{'ours med':>10}{'bare med':>10}{'ratio':>7}{'ours min':>10}{'bare min':>10}{'ratio':>7}{'paired':>8}"
    )
    rows = [("sampling s/step", s)] + [(f"train step {t['stage']}", t) for t in training]
    for name, r in rows:
        print(
            f"{name:28}{r['ours_median_s']:10.4f}{r['bare_median_s']:10.4f}{r['ours_over_bare_median']:7.3f}"
            f"{r['ours_min_s']:10.4f}{r['bare_min_s']:10.4f}{r['ours_over_bare_min']:7.3f}"
            f"{r['ours_over_bare_paired']:8.3f}"
        )
    print(f"sampling from text (LM + projection included): {s['ours_text_median_s']:.4f} s/step median")
    print(
        f"sampling overhead: {s['overhead_percent_paired']:+.2f} % (paired), {s['overhead_percent_median']:+.2f} % "
        f"(median), {s['overhead_percent_min']:+.2f} % (min); max |ours - bare| = {s['max_abs_diff_ours_vs_bare']:.1e}"
    )
    o = s["outside_unet_and_scheduler"]
    print(
        f"time outside unet+scheduler.step per step: ours {o['ours_ms_per_step']:.3f} ms, bare "
        f"{o['bare_ms_per_step']:.3f} ms -> added overhead {o['added_overhead_percent']:+.3f} % of a step"
    )
    print(f"wrote {args.out} in {result['wall_seconds']} s")


if __name__ == "__main__":
    main()
