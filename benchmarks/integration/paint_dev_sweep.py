"""Development sweep of the paint stage on val concepts (a hand-written loop, not the recipe).

Trains a state-conditioned UNet (``mpm_paint.StateConditioner`` on Gemma-3-270M's cached layer-16
states of the English names) on EmojiCap train (OpenMoji, data.limit=600) for ``--steps`` steps, then
paints the val concepts from the states of their names in ``--langs`` and judges them among 8 by the
nearest clean render in EfficientNet-Lite0 features (``mpm.painting``). Prints judged accuracy per
language; writes ``<root>/res_<tag>.json`` and ``<root>/grid_<tag>.png``. Needs EmojiCap built at
``<root>/emojicap<res>`` first (``mpm_bench.build_emojicap(root, size=res, limit=600)``).

    python benchmarks/integration/paint_dev_sweep.py --ch 16,32,64 --attn 001 --steps 1500 \
        --bs 16 --lr 2e-3 --pred v_prediction --ema 0.995 --gs 1,3 --ddim 10 --tag B --train_eval 1
"""

# ruff: noqa
# mypy: ignore-errors
import sys, time, json, copy, os, argparse
import torch

torch.set_num_threads(int(os.environ.get("NT", "2")))
from mpm_bench import load_emojicap
from mpm.painting import (
    pivot_states,
    efficientnet_embedder,
    judge_paintings,
    candidate_sets,
    paint_grid,
    paint_from_states,
)
from mpm_paint import StateConditioner, PaintTrainable, PaintTrainingConfig
from diffusers import UNet2DConditionModel, DDPMScheduler, DDIMScheduler
import numpy as np

ap = argparse.ArgumentParser()
ap.add_argument("--res", type=int, default=32)
ap.add_argument("--root", default="/tmp/paint16")
ap.add_argument("--ch", default="32,64")
ap.add_argument("--attn", default="01")  # which levels have cross-attn
ap.add_argument("--lpb", type=int, default=1)
ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--budget", type=float, default=180)
ap.add_argument("--tokens", type=int, default=4)
ap.add_argument("--width", type=int, default=64)
ap.add_argument("--ema", type=float, default=0.0)
ap.add_argument("--drop", type=float, default=0.1)
ap.add_argument("--gs", default="1,2,3")
ap.add_argument("--ddim", type=int, default=20)
ap.add_argument("--pred", default="epsilon")
ap.add_argument("--langs", default="en,zh,de,ja,ar")
ap.add_argument("--tag", default="x")
ap.add_argument("--train_eval", type=int, default=0)
ap.add_argument("--time_only", type=int, default=0)
ap.add_argument("--steps", type=int, default=0)
ap.add_argument("--eval_raw", type=int, default=0)
a = ap.parse_args()

root = f"{a.root}/emojicap{a.res}"
LM = None


def lm():
    global LM
    if LM is None:
        from mpm.zoo import load_causal_lm

        LM = load_causal_lm("gemma3-270m")
    return LM


langs = a.langs.split(",")
train = load_emojicap(root, "train", langs=["en"], styles="openmoji")
val = load_emojicap(root, "val", langs=langs, styles="openmoji")
cache = f"{a.root}/states"


def states(texts):
    try:
        return pivot_states(None, None, texts, model_name="gemma3-270m", cache_dir=cache)
    except Exception:
        m, t = lm()
        return pivot_states(m, t, texts, model_name="gemma3-270m", cache_dir=cache)


t0 = time.time()
S_train = states([ex.names["en"] for ex in train])
S_val = {l: states([ex.names[l] for ex in val]) for l in langs}
print("states", time.time() - t0, S_train.shape, flush=True)


def pix(im):
    from PIL import Image

    im = im.convert("RGBA")
    c = Image.new("RGBA", im.size, (255, 255, 255, 255))
    im = Image.alpha_composite(c, im).convert("RGB")
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1


X = torch.stack([pix(ex.image) for ex in train])
ch = tuple(int(c) for c in a.ch.split(","))
down = tuple("CrossAttnDownBlock2D" if a.attn[i] == "1" else "DownBlock2D" for i in range(len(ch)))
up = tuple("CrossAttnUpBlock2D" if a.attn[len(ch) - 1 - i] == "1" else "UpBlock2D" for i in range(len(ch)))
torch.manual_seed(0)
unet = UNet2DConditionModel(
    sample_size=a.res,
    in_channels=3,
    out_channels=3,
    layers_per_block=a.lpb,
    block_out_channels=ch,
    down_block_types=down,
    up_block_types=up,
    cross_attention_dim=a.width,
    attention_head_dim=8,
    norm_num_groups=8,
)
cond = StateConditioner(in_dim=S_train.shape[1], out_dim=a.width, num_tokens=a.tokens)
sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=a.pred)
model = PaintTrainable(
    unet=unet, conditioner=cond, scheduler=sched, config=PaintTrainingConfig(cond_dropout=a.drop)
)
print("params", sum(p.numel() for p in unet.parameters()) / 1e6, "M", flush=True)
opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
ema = copy.deepcopy(model) if a.ema else None
g = torch.Generator().manual_seed(0)
model.train()
step = 0
t0 = time.time()
losses = []
while time.time() - t0 < a.budget:
    idx = torch.randint(0, len(X), (a.bs,), generator=g)
    lr = a.lr * min(1.0, (step + 1) / 50)
    for pg in opt.param_groups:
        pg["lr"] = lr
    loss = model.training_step({"pixel_values": X[idx], "prompt_embeds": S_train[idx]})
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if ema is not None:
        d = min(a.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), model.parameters()):
                pe.lerp_(p, 1 - d)
    losses.append(loss.item())
    step += 1
    if step % 100 == 0:
        print(step, f"{np.mean(losses[-100:]):.4f}", f"{time.time() - t0:.0f}s", flush=True)
    if a.time_only and step >= a.time_only:
        break
    if a.steps and step >= a.steps:
        break
train_s = time.time() - t0
print("trained", step, "steps", f"{train_s:.0f}s", flush=True)
if a.time_only:
    sys.exit()
m = ema if (ema is not None and not a.eval_raw) else model
m.eval()
pipe = m.to_pipeline(DDIMScheduler(num_train_timesteps=1000, prediction_type=a.pred))
pipe.set_progress_bar_config(disable=True)
embed = efficientnet_embedder()
cand_emb = embed([ex.image for ex in val])
cands = candidate_sets(len(val), 8, seed=0)
targets = list(range(len(val)))
res = {"args": vars(a), "steps": step, "train_s": train_s, "final_loss": float(np.mean(losses[-100:]))}
best = None
for gs in [float(x) for x in a.gs.split(",")]:
    r = {}
    t1 = time.time()
    for l in langs:
        P = paint_from_states(
            m, pipe, S_val[l], num_inference_steps=a.ddim, guidance_scale=gs, resolution=a.res, seed=0
        )
        ok = judge_paintings(P, embed, cand_emb, cands, targets)
        r[l] = sum(ok) / len(ok)
        if l == "en":
            grid_en = P
        if gs == float(a.gs.split(",")[-1]) or True:
            res.setdefault("paint", {}).setdefault(str(gs), {})[l] = P
    print(
        f"gs={gs} " + " ".join(f"{l} {v:.3f}" for l, v in r.items()),
        f"mean {np.mean(list(r.values())):.3f}",
        f"({time.time() - t1:.0f}s)",
        flush=True,
    )
    res[f"acc_gs{gs}"] = r
if a.train_eval:
    Tn = 59
    P = paint_from_states(
        m,
        pipe,
        S_train[:Tn],
        num_inference_steps=a.ddim,
        guidance_scale=float(a.gs.split(",")[-1]),
        resolution=a.res,
        seed=0,
    )
    ce = embed([ex.image for ex in train[:Tn]])
    ok = judge_paintings(P, embed, ce, candidate_sets(Tn, 8, seed=0), list(range(Tn)))
    print("train-concepts en", sum(ok) / len(ok))
gsl = a.gs.split(",")[-1]
paint_grid(
    [ex.image for ex in val[:12]],
    {l: res["paint"][str(float(gsl))][l][:12] for l in langs},
    f"{a.root}/grid_{a.tag}.png",
    cell=48,
)
res.pop("paint")
json.dump(res, open(f"{a.root}/res_{a.tag}.json", "w"), indent=1)
