"""Paint stage trained on a subset of the training concepts: does the UNet then learn (and transfer) them?

A hand-written loop (adapted from ``paint_dev_sweep.py``, not the recipe): the default preset's pixel
UNet (32 px, ``block_out_channels`` [16, 32, 64], cross-attention at 8x8 only, ``StateConditioner`` 4 x
64, v_prediction, cond_dropout 0.1, AdamW lr 2e-3 with 10 % linear warmup then cosine, clip 1.0) is
trained on the **first N** EmojiCap OpenMoji train concepts (``load_emojicap(root, "train")`` order),
conditioned on the frozen Gemma-3-270M's cached state of each **English** name in the run's chosen pivot
space (``'"{text}" in English is "'``, last token, hidden_states index 17), for ``--steps`` steps x
``--bs``. It then paints the first ``--items`` (32) train concepts from their names in all 14 EmojiCap
languages (DPMSolverMultistepScheduler, ``--infer`` steps, guidance ``--gs``) and judges each painting
with the run's stage-1a contrastive head among 8 English candidate names (``mpm_bench.run_text_to_image``,
judge_lang en, seed 0; chance 0.125, 95 % cluster-bootstrap intervals), as the recipe's evaluation does.
Writes ``<out>/res_<tag>.json`` and the language-labelled grids ``<out>/grid_<tag>_gs<g>.png``.

``--ceiling 32,48``: instead, judge the clean OpenMoji renders of the same concepts downsampled to each
size (the judge's ceiling at that resolution) and exit.

Run from the repo root (the demo run's config has a relative ``out_dir``):

    MPM_CACHE=/tmp/helper-cache python benchmarks/integration/paint_subset_sweep.py --ceiling 32,48
    MPM_CACHE=/tmp/helper-cache python benchmarks/integration/paint_subset_sweep.py --n 32 --steps 600 --gs 3,1
    MPM_CACHE=/tmp/helper-cache python benchmarks/integration/paint_subset_sweep.py --n 64 --steps 600 --gs 3
    MPM_CACHE=/tmp/helper-cache python benchmarks/integration/paint_subset_sweep.py --n 96 --steps 600 --gs 3
    MPM_CACHE=/tmp/helper-cache python benchmarks/integration/paint_subset_sweep.py --n 32 --steps 1500 --gs 3 --probe 1
"""

# ruff: noqa
# mypy: ignore-errors
import argparse, json, math, os, time
from pathlib import Path

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("--run", default="outputs/demo", help="a finished run with stage-1a heads")
ap.add_argument("--data", default=None, help="EmojiCap root (default: <run>/emojicap)")
ap.add_argument("--out", default="/tmp/paint-subset")
ap.add_argument("--n", type=int, default=32, help="train on the first N train concepts")
ap.add_argument("--steps", type=int, default=600)
ap.add_argument("--bs", type=int, default=16)
ap.add_argument("--lr", type=float, default=2e-3)
ap.add_argument("--layer", type=int, default=17)
ap.add_argument("--res", type=int, default=32)
ap.add_argument("--items", type=int, default=32, help="paint the first ITEMS train concepts")
ap.add_argument("--infer", type=int, default=10, help="DPM-Solver sampling steps")
ap.add_argument("--gs", default="3", help="guidance scales, comma-separated")
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--ceiling", default="", help="judge clean renders at these sizes instead, e.g. 32,48")
ap.add_argument("--tag", default="")
ap.add_argument("--load", default="", help="skip training: load this state dict (written by every run)")
ap.add_argument(
    "--probe", type=int, default=0, help="also paint en only with DPM 25 and DDIM 50 steps (gs 3)"
)
a = ap.parse_args()
torch.set_num_threads(a.threads)

from mpm.contrastive import ContrastiveScorer, PivotSpace, PivotStates, _feature_cache
from mpm.recipe import load_run_config, save_paint_grid
from mpm.zoo import load_causal_lm
from mpm_bench import EMOJICAP_LANGS, load_emojicap, run_text_to_image
from mpm_vision.contrastive import ContrastiveHead

run = Path(a.run)
data = Path(a.data or run / "emojicap")
out = Path(a.out)
out.mkdir(parents=True, exist_ok=True)
langs = list(EMOJICAP_LANGS)
T0 = time.time()
cfg = load_run_config(run)
lm, tok = load_causal_lm("gemma3-270m")
states = PivotStates(lm, tok, PivotSpace('"{text}" in English is "', "last", a.layer), name="gemma3-270m")
judge = ContrastiveScorer(
    ContrastiveHead.from_pretrained(run / "stages" / "contrastive" / "en"),
    _feature_cache(cfg),
    states,
    name="contrastive",
)
train = load_emojicap(data, "train", langs=langs, styles="openmoji")
items = train[: a.items]
print(f"setup {time.time() - T0:.0f}s: {len(train)} train concepts; painting {len(items)}", flush=True)


def summarise(results):
    rows = {}
    for r in results:
        if r.metric == "judge_acc@1":
            rows[r.language] = {
                "acc": r.value,
                "n": r.n,
                "interval": [r.interval.low, r.interval.high] if r.interval else None,
            }
    above = [l for l, v in rows.items() if l != "en" and v["interval"] and v["interval"][0] > 0.125]
    return rows, above


def show(label, rows, above):
    print(label, " ".join(f"{l} {v['acc']:.3f}" for l, v in rows.items()), flush=True)
    print(
        f"  en {rows['en']['acc']:.3f} {rows['en']['interval']}; non-en above chance (lower bound > 0.125): "
        f"{len(above)}/13 {above}; non-en mean {np.mean([v['acc'] for l, v in rows.items() if l != 'en']):.3f}",
        flush=True,
    )


# ------------------------------------------------------------------------------------------------
# the judge's ceiling: clean renders, downsampled
# ------------------------------------------------------------------------------------------------
if a.ceiling:
    from mpm_paint.training import _resize_center_crop, _to_rgb

    class RenderPainter:
        name = "clean-render"

        def __init__(self, size):
            self.by_name = {}
            for ex in items:
                im = _resize_center_crop(_to_rgb(ex.image, (255, 255, 255)), size)
                for l in langs:
                    self.by_name[ex.names[l]] = im

        def paint(self, prompts, lang, seed):
            return [self.by_name[p] for p in prompts]

    res = {}
    for size in [int(s) for s in a.ceiling.split(",")]:
        rows, above = summarise(
            run_text_to_image(RenderPainter(size), items, ["en"], judge=judge, judge_lang="en",
                              num_candidates=8, seed=0, model_name="clean-render")
        )  # fmt: skip
        show(f"ceiling {size}px:", rows, above)
        res[str(size)] = rows
    json.dump(res, open(out / "ceiling.json", "w"), indent=1)
    raise SystemExit

# ------------------------------------------------------------------------------------------------
# training on the first N concepts
# ------------------------------------------------------------------------------------------------
import copy
from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel
from mpm.painting import StatePainter
from mpm_paint import PaintTrainable, PaintTrainingConfig, StateConditioner, collate

subset = train[: a.n]
S = states([ex.names["en"] for ex in subset])
states.prefetch([ex.names[l] for ex in items for l in langs])
X = collate([{"image": ex.image, "caption": ex.names["en"]} for ex in subset], resolution=a.res)[
    "pixel_values"
]
print(f"states + pixels {time.time() - T0:.0f}s: X {tuple(X.shape)}, S {tuple(S.shape)}", flush=True)
torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=a.res, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8,
)  # fmt: skip
cond = StateConditioner(in_dim=S.shape[1], out_dim=64, num_tokens=4)
model = PaintTrainable(
    unet=unet, conditioner=cond, scheduler=DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction"),
    config=PaintTrainingConfig(cond_dropout=0.1),
)  # fmt: skip
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
warm = max(1, a.steps // 10)
g = torch.Generator().manual_seed(0)
model.train()
losses = []
t0 = time.time()
for step in range(0 if a.load else a.steps):
    f = (
        (step + 1) / warm
        if step < warm
        else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, a.steps - warm)))
    )
    for pg in opt.param_groups:
        pg["lr"] = a.lr * f
    idx = torch.randint(0, len(X), (a.bs,), generator=g)
    loss = model.training_step({"pixel_values": X[idx], "prompt_embeds": S[idx]})
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if (step + 1) % 100 == 0:
        print(step + 1, f"loss {np.mean(losses[-100:]):.4f}", f"{time.time() - t0:.0f}s", flush=True)
train_s = time.time() - t0
tag = a.tag or f"n{a.n}_s{a.steps}"
if a.load:
    model.load_state_dict(torch.load(a.load))
    losses = [float("nan")]
else:
    torch.save(model.state_dict(), out / f"model_{tag}.pt")
print(f"trained N={a.n}: {a.steps} steps x {a.bs} in {train_s:.0f}s", flush=True)
model.eval()
pipe = model.to_pipeline(
    DPMSolverMultistepScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
)
pipe.set_progress_bar_config(disable=True)
res = {"args": vars(a), "train_s": train_s, "final_loss": float(np.mean(losses[-100:])), "gs": {}}
for gs in [float(x) for x in a.gs.split(",")]:
    t1 = time.time()
    painter = StatePainter(
        model, pipe, states, resolution=a.res, num_inference_steps=a.infer, guidance_scale=gs
    )
    painted = {}
    results = run_text_to_image(
        painter, items, langs, judge=judge, judge_lang="en", num_candidates=8, seed=0,
        model_name=f"paint-subset-{tag}", images_out=painted,
    )  # fmt: skip
    rows, above = summarise(results)
    show(f"N={a.n} S={a.steps} gs={gs} ({time.time() - t1:.0f}s):", rows, above)
    grid = save_paint_grid(
        items, painted, out / f"grid_{tag}_gs{gs:g}.png", columns=16,
        title=f"paint on first {a.n} train concepts, {a.steps}x{a.bs}, gs {gs:g}: first 16 of the 32 judged",
    )  # fmt: skip
    res["gs"][str(gs)] = {"acc": rows, "above_chance": above, "n_above": len(above), "eval_s": time.time() - t1,
                          "grid": str(grid)}  # fmt: skip
if a.probe:  # is the grain the sampler's? en only, more sampling steps
    from diffusers import DDIMScheduler

    for label, sched, k in (("dpm25", DPMSolverMultistepScheduler, 25), ("ddim50", DDIMScheduler, 50)):
        t1 = time.time()
        p2 = model.to_pipeline(sched(num_train_timesteps=1000, prediction_type="v_prediction"))
        p2.set_progress_bar_config(disable=True)
        painter = StatePainter(model, p2, states, resolution=a.res, num_inference_steps=k, guidance_scale=3.0)
        painted = {}
        rows, _ = summarise(
            run_text_to_image(
                painter,
                items,
                ["en"],
                judge=judge,
                judge_lang="en",
                num_candidates=8,
                seed=0,
                images_out=painted,
            )
        )
        print(
            f"probe {label} gs=3: en {rows['en']['acc']:.3f} {rows['en']['interval']} ({time.time() - t1:.0f}s)",
            flush=True,
        )
        save_paint_grid(items, painted, out / f"grid_{tag}_{label}.png", columns=16)
        res.setdefault("probe", {})[label] = rows["en"]
json.dump(res, open(out / f"res_{tag}.json", "w"), indent=1)
print(f"total {time.time() - T0:.0f}s", flush=True)
