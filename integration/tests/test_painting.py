"""mpm.painting: cached pivot states, the state-conditioned paint batch, the judge and the grid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from mpm.builders import build_lm, build_paint
from mpm.config import ConfigError, load_config
from mpm.data import PaintCollate
from mpm.painting import (
    PivotStates,
    RenderJudge,
    candidate_sets,
    judge_paintings,
    paint_grid,
    pivot_states,
    states_cache_key,
)


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Any]:
    return build_lm(load_config("smoke").model.lm, seed=0)


def test_pivot_states_are_computed_once_then_read_from_the_cache(
    tiny: tuple[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lm, tok = tiny
    texts = ["red apple", "dog face", "red apple"]
    first = pivot_states(lm, tok, texts, model_name="tiny", layer=2, cache_dir=tmp_path)
    assert first.shape == (3, 32) and torch.equal(first[0], first[2])
    assert len(list(tmp_path.glob("*.safetensors"))) == 1
    import mpm_align

    def no_model(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(mpm_align, "TransformersEncoder", no_model)
    again = pivot_states(None, None, texts, model_name="tiny", layer=2, cache_dir=tmp_path)
    assert torch.equal(first, again)
    # the same texts with the mpm-align encoder directly: the cache holds exactly its numbers
    monkeypatch.undo()
    enc = mpm_align.TransformersEncoder(
        lm, tok, pooling="last", template='"{text}" in English is "', progress=False
    )
    direct = enc.encode(["dog face"], layers=[2])[2]
    assert torch.allclose(first[1], direct[0], atol=1e-5)


def test_the_cache_key_changes_with_every_setting() -> None:
    base = states_cache_key("m", "{text}", 16, "last", ["a", "b"])
    assert base == states_cache_key("m", "{text}", 16, "last", ["a", "b"])
    others = [
        states_cache_key("n", "{text}", 16, "last", ["a", "b"]),
        states_cache_key("m", "{text}!", 16, "last", ["a", "b"]),
        states_cache_key("m", "{text}", 15, "last", ["a", "b"]),
        states_cache_key("m", "{text}", 16, "mean", ["a", "b"]),
        states_cache_key("m", "{text}", 16, "last", ["a", "c"]),
    ]
    assert base not in others and len(set(others)) == len(others)


def test_pivot_states_memoise_and_refuse_a_layer_the_pivot_lacks(
    tiny: tuple[Any, Any], tmp_path: Path
) -> None:
    lm, tok = tiny
    states = PivotStates(lm, tok, model_name="tiny", template="{text}", layer=-1, cache_dir=tmp_path)
    assert states.kwargs["layer"] == 2  # -1 = the last of the tiny LM's 2 layers (+ embeddings)
    out = states(["a", "b", "a"])
    assert out.shape == (3, 32) and set(states.memo) == {"a", "b"}
    with pytest.raises(ValueError, match=r"layer=16: the pivot has hidden states 0\.\.2"):
        PivotStates(lm, tok, model_name="tiny", template="{text}", layer=16)


def test_paint_collate_carries_the_caption_state(tiny: tuple[Any, Any], tmp_path: Path) -> None:
    lm, tok = tiny
    states = PivotStates(lm, tok, model_name="tiny", template="{text}", layer=-1, cache_dir=tmp_path)
    collate = PaintCollate(tokenizer=tok, resolution=8, max_length=8, states=states)
    samples = [
        {"image": Image.new("RGB", (16, 16), c), "json": {"names": {"en": n}}, "__source__": "names/en"}
        for c, n in (("red", "apple"), ("blue", "whale"))
    ]
    batch = collate(samples)
    assert batch["pixel_values"].shape == (2, 3, 8, 8) and "input_ids" not in batch
    assert torch.equal(batch["prompt_embeds"], states(["apple", "whale"]))
    cfg = load_config("smoke")
    model = build_paint(cfg.paint, lm, tok, resolution=8)
    assert type(model.conditioner).__name__ == "StateConditioner" and model.conditioner.in_dim == 32
    assert model.training_step(batch).item() > 0
    lm_model = build_paint(
        load_config("smoke", ["paint.conditioning.source=lm"]).paint, lm, tok, resolution=8
    )
    assert type(lm_model.conditioner).__name__ == "LLMConditioner"


def test_bad_conditioning_keys_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"paint\.conditioning\.source: 'clip' is not states or lm"):
        load_config("smoke", ["paint.conditioning.source=clip"])
    with pytest.raises(ConfigError, match=r"paint\.judge: 'eye' is not render, chat or contrastive"):
        load_config("smoke", ["paint.judge=eye"])


def _colour_embedder(images: list[Any]) -> torch.Tensor:
    """Mean colour, centred: a stand-in image space in which red, green and blue are orthogonal-ish."""
    return torch.stack(
        [
            torch.tensor(im.convert("RGB").resize((1, 1)).getpixel((0, 0)), dtype=torch.float) - 85
            for im in images
        ]
    )


def test_judge_recognises_the_nearest_candidate() -> None:
    colours = ["red", "green", "blue"]
    refs = [Image.new("RGB", (4, 4), c) for c in colours]
    cand = _colour_embedder(refs)
    paintings = [Image.new("RGB", (4, 4), c) for c in ("red", "blue", "green")]  # the last two swapped
    sets = [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    assert judge_paintings(paintings, _colour_embedder, cand, sets, [0, 1, 2]) == [True, False, False]
    with pytest.raises(ValueError, match="not among its candidates"):
        judge_paintings(paintings[:1], _colour_embedder, cand, [[1, 2]], [0])
    judge = RenderJudge(_colour_embedder, dict(zip(colours, refs)))
    scores = judge.score(paintings[:1], ["green", "red"])
    assert scores.shape == (1, 2) and scores[0, 1] > scores[0, 0]
    rows = judge.score_candidates(paintings, [["red", "green"], ["green", "blue"], ["blue", "green"]])
    assert [int(r.argmax()) for r in rows] == [0, 1, 1]


def test_candidate_sets_hold_the_item_and_distinct_others() -> None:
    sets = candidate_sets(20, 8, seed=3)
    assert all(len(s) == 8 == len(set(s)) and i in s for i, s in enumerate(sets))
    assert sets == candidate_sets(20, 8, seed=3) != candidate_sets(20, 8, seed=4)


def test_the_grid_has_a_labelled_row_per_language(tmp_path: Path) -> None:
    refs = [Image.new("RGBA", (8, 8), (255, 0, 0, 255)) for _ in range(3)]
    rows = {"en": [Image.new("RGB", (8, 8), "blue")] * 3, "zh": [Image.new("RGB", (8, 8), "green")] * 3}
    path = paint_grid(refs, rows, tmp_path / "g.png", cell=16, label_width=20, title="t")
    grid = Image.open(path)
    assert grid.size == (20 + 3 * 16, 16 + 3 * 16)
    assert grid.getpixel((20 + 8, 16 + 8)) == (255, 0, 0)  # reference row
    assert grid.getpixel((20 + 8, 16 + 16 + 8)) == (0, 0, 255)  # en
    assert grid.getpixel((20 + 8, 16 + 32 + 8)) == (0, 128, 0)  # zh
    label = [grid.getpixel((x, y)) for x in range(20) for y in range(32, 48)]
    assert any(p != (255, 255, 255) for p in label)  # the row's language code is drawn
    with pytest.raises(ValueError, match="row 'en' has 2 paintings for 3"):
        paint_grid(refs, {"en": rows["en"][:2]}, tmp_path / "h.png")
