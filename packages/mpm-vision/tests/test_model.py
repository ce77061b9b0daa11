from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from mpm_vision import IGNORE_INDEX, ChatHistory, VisionLanguageModel, export_llava

MakeVLM = Callable[..., VisionLanguageModel]
ARCHS = ["llama", "qwen2", "gemma3", "gpt2"]


def _samples(images: list[Any]) -> list[dict[str, Any]]:
    return [
        {"image": images[0], "prompt": "describe the image.", "answer": "a red apple"},
        {"images": [images[1], images[2]], "prompt": "<image> or <image>?", "answer": "the cat"},
        {"prompt": "no image here", "answer": "ok"},
        {
            "images": [images[3]],
            "conversation": [
                {"role": "user", "content": "what is <image>?"},
                {"role": "assistant", "content": "a tree"},
                {"role": "user", "content": "colour?"},
                {"role": "assistant", "content": "green"},
            ],
        },
    ]


@pytest.mark.parametrize("arch", ARCHS)
def test_loss_uses_answer_logits_only_and_matches_full_logits(
    make_vlm: MakeVLM, images: list[Any], arch: str
) -> None:
    overrides = {"final_logit_softcapping": 5.0} if arch == "gemma3" else None
    vlm = make_vlm(arch, bridge="query", lm_overrides=overrides)
    batch = vlm.collate(_samples(images))
    assert batch.pixel_values is not None and batch.pixel_values.shape[0] == 4
    assert batch.image_counts == [1, 2, 0, 1]
    k = vlm.num_image_tokens
    assert (batch.input_ids == vlm.image_token_id).sum(1).tolist() == [k, 2 * k, 0, k]
    assert batch.labels is not None
    out = vlm(**batch)
    n_answer = int((batch.labels[:, 1:] != IGNORE_INDEX).sum())
    assert out.logits is not None and out.logits.shape == (n_answer, 336) and out.num_loss_tokens == n_answer
    # the reference: every position's logits from the LM, then the usual shifted cross-entropy
    full = vlm(batch.pixel_values, batch.input_ids, batch.attention_mask, batch.labels, logits_to_keep=0)
    assert full.logits is not None and full.logits.shape[:2] == batch.input_ids.shape
    shifted = full.logits[:, :-1].reshape(-1, 336)
    ref = F.cross_entropy(shifted, batch.labels[:, 1:].reshape(-1), ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(out.loss, ref, atol=1e-5, rtol=1e-5)
    assert out.loss is not None
    out.loss.backward()
    assert vlm.bridge.queries.grad is not None and vlm.bridge.queries.grad.abs().sum() > 0


def test_labels_cover_answers_and_eos_only(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm()
    batch = vlm.collate([{"image": images[0], "prompt": "describe the image.", "answer": "a red apple"}])
    assert batch.labels is not None
    answer_ids = batch.labels[batch.labels != IGNORE_INDEX].tolist()
    tok = vlm.tokenizer
    assert answer_ids == tok(" a red apple", add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert batch.input_ids[0, -len(answer_ids) :].tolist() == answer_ids


def test_logits_equal_transformers_llava(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("llama", bridge="mlp")
    llava = export_llava(vlm)
    batch = vlm.collate(
        [
            {
                "images": [images[0], images[1]],
                "prompt": "<image> then <image>: describe the image.",
                "answer": "a cat",
            }
        ]
    )
    ours = vlm(batch.pixel_values, batch.input_ids, batch.attention_mask, logits_to_keep=0).logits
    ref = llava(
        input_ids=batch.input_ids, pixel_values=batch.pixel_values, attention_mask=batch.attention_mask
    ).logits
    assert ours is not None and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    # and greedy generation agrees token for token
    # (repetition_penalty also sees the prompt text in both)
    gen = vlm.generate(
        [images[0]], ["describe the image."], max_new_tokens=6, do_sample=False, repetition_penalty=1.3
    )
    prompt = vlm.collate([{"image": images[0], "prompt": "describe the image."}], for_generation=True)
    hf = llava.generate(
        input_ids=prompt.input_ids,
        pixel_values=prompt.pixel_values,
        attention_mask=prompt.attention_mask,
        max_new_tokens=6,
        do_sample=False,
        pad_token_id=vlm.pad_token_id,
        repetition_penalty=1.3,
    )
    assert hf[0, prompt.input_ids.shape[1] :].tolist() == gen.sequences[0].tolist()


@pytest.mark.parametrize("arch", ARCHS)
def test_padded_batch_equals_items_one_by_one(make_vlm: MakeVLM, images: list[Any], arch: str) -> None:
    vlm = make_vlm(arch, bridge="perceiver")
    samples = _samples(images)
    batch = vlm.collate(samples)
    out = vlm(**batch)
    assert out.logits is not None
    offset = 0
    for s in samples:
        one = vlm(**vlm.collate([s]))
        assert one.logits is not None
        n = one.logits.shape[0]
        torch.testing.assert_close(out.logits[offset : offset + n], one.logits, atol=1e-5, rtol=1e-4)
        offset += n
    # next-token logits at the last real token, right and left padding alike
    for side in ("right", "left"):
        prompts = vlm.collate(samples[:2], padding_side=side, for_generation=False)
        nxt = vlm(prompts.pixel_values, prompts.input_ids, prompts.attention_mask).logits
        for i, s in enumerate(samples[:2]):
            single = vlm.collate([s])
            ref = vlm(single.pixel_values, single.input_ids, single.attention_mask).logits
            assert nxt is not None and ref is not None
            torch.testing.assert_close(nxt[i], ref[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_cached_uncached_batched_and_beams(
    make_vlm: MakeVLM, images: list[Any], arch: str
) -> None:
    vlm = make_vlm(arch, bridge="qformer")
    imgs = [images[0], [images[1], images[2]], None]
    prompts = ["describe the image.", "<image> and <image>", "hello there"]
    cached = vlm.generate(imgs, prompts, max_new_tokens=5, do_sample=False)
    uncached = vlm.generate(imgs, prompts, max_new_tokens=5, do_sample=False, use_cache=False)
    assert cached.sequences.tolist() == uncached.sequences.tolist()
    assert len(cached.texts) == 3
    for i in (1, 2):  # the longest prompt (no left padding) and the shortest (most padding)
        single = vlm.generate(imgs[i], prompts[i], max_new_tokens=5, do_sample=False)
        n = single.sequences.shape[1]
        assert cached.sequences[i, :n].tolist() == single.sequences[0].tolist()
    batch = vlm.collate(
        [{"images": [] if im is None else im, "prompt": p} for im, p in zip(imgs, prompts)],
        padding_side="left",
        for_generation=True,
    )
    from_batch = vlm.generate_from_inputs(
        batch.input_ids, batch.attention_mask, batch.pixel_values, max_new_tokens=5, do_sample=False
    )
    assert from_batch.tolist() == cached.sequences.tolist()
    beams = vlm.generate(imgs, prompts, max_new_tokens=3, num_beams=3, repetition_penalty=1.1)
    assert beams.sequences.shape[0] == 3
    if arch == "llama":
        torch.manual_seed(0)
        sampled = vlm.generate(imgs, prompts, max_new_tokens=3, do_sample=True, top_k=5)
        assert sampled.sequences.shape[0] == 3


def test_chat_reuses_cached_vision_states(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("llama", bridge="query")
    calls: list[int] = []
    vlm.encoder.register_forward_hook(lambda m, i, o: calls.append(int(o.shape[0])))
    first = vlm.chat(images[0], "what is this?", max_new_tokens=3, do_sample=False)
    assert calls == [1] and first.history.num_images == 1
    second = vlm.chat(None, "and the colour?", first.history, max_new_tokens=3, do_sample=False)
    assert calls == [1]  # no new encoder call
    third = vlm.chat(images[1], "compare with <image>", second.history, max_new_tokens=3, do_sample=False)
    assert calls == [1, 1] and third.history.num_images == 2
    assert next(q for q, _ in third.history.turns).startswith("<image>")
    # the cached turn equals re-running the whole conversation with images through generate
    conv = []
    for q, a in second.history.turns:
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    seg = vlm.collator.render(
        {"conversation": [*conv, {"role": "user", "content": "compare with <image>"}]}, 2, for_generation=True
    )
    ids, _ = vlm.collator.tokenize(seg, num_images=2)
    prompt_ids = torch.tensor([ids])
    embeds = vlm.embed_inputs(prompt_ids, vlm.encode_images(vlm.preprocess(images[:2])))
    ref = vlm.language_model.generate(
        inputs_embeds=embeds,
        attention_mask=torch.ones_like(prompt_ids),
        max_new_tokens=3,
        do_sample=False,
        pad_token_id=vlm.pad_token_id,
    )
    assert third.answer == vlm.tokenizer.decode(ref[0], skip_special_tokens=True).strip()
    with pytest.raises(ValueError, match="placeholder"):
        vlm.chat([images[0]], "<image> <image>", ChatHistory())


def test_image_count_errors(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm()
    with pytest.raises(ValueError, match=r"2 image placeholder\(s\) .* but 1 image"):
        vlm.collate([{"image": images[0], "prompt": "<image> and <image>", "answer": "x"}])
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\) .* but 3 image"):
        vlm.collate([{"images": images[:3], "prompt": "<image> only one", "answer": "x"}])
    with pytest.raises(ValueError, match=r"1 image placeholder\(s\) .* but 0 image"):
        vlm.generate(None, "<image> where is it?")
    batch = vlm.collate([{"image": images[0], "prompt": "p", "answer": "a"}])
    assert batch.pixel_values is not None
    with pytest.raises(ValueError, match=r"but 2 image\(s\) were given"):
        vlm(batch.pixel_values.repeat(2, 1, 1, 1), batch.input_ids, batch.attention_mask)
    with pytest.raises(ValueError, match="16x16 but"):
        vlm(torch.zeros(1, 3, 16, 16), batch.input_ids, batch.attention_mask)
    with pytest.raises(ValueError, match="one entry per prompt"):
        vlm.generate([images[0]], ["a", "b"])


def test_tokenizer_without_pad_token(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("gpt2")
    vlm.tokenizer.pad_token = None
    assert vlm.tokenizer.pad_token_id is None
    vlm2 = VisionLanguageModel(vlm.encoder, vlm.bridge, vlm.language_model, vlm.tokenizer)
    assert vlm2.pad_token_id == vlm.tokenizer.eos_token_id
    batch = vlm2.collate(_samples(images)[:3])
    assert batch.labels is not None and torch.isfinite(vlm2(**batch).loss).all()  # type: ignore[arg-type]
    assert len(vlm2.generate([images[0], None], ["a", "bb"], max_new_tokens=2).texts) == 2


def test_stage_parameters_is_a_query_and_training_step(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("llama", bridge="query")
    assert set(vlm.parts()) == {"encoder", "bridge", "lm"} and vlm.parts()["lm"] is vlm.language_model
    lm_params = {id(p) for p in vlm.language_model.parameters()}
    enc_params = {id(p) for p in vlm.encoder.parameters()}
    flags = [p.requires_grad for p in vlm.parameters()]
    align = vlm.stage_parameters("align")
    ids = {id(p) for p in align}
    assert ids == {id(p) for p in vlm.bridge.parameters()}
    vlm.config = type(vlm.config).from_dict({**vlm.config.to_dict(), "train_encoder": True})
    assert {id(p) for p in vlm.stage_parameters("align")} >= enc_params
    instruct = {id(p) for p in vlm.stage_parameters("instruct")}
    assert lm_params <= instruct
    assert [p.requires_grad for p in vlm.parameters()] == flags  # nothing was frozen or unfrozen
    with pytest.raises(ValueError, match="unknown stage"):
        vlm.stage_parameters("pretrain")

    vlm.train()
    params = vlm.stage_parameters("align")
    vlm.requires_grad_(False)  # the trainer's explicit freezing step
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=3e-3)
    batch = vlm.collate(_samples(images))
    losses = []
    for _ in range(8):
        loss = vlm.training_step(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0]
    # a dict batch works too
    assert torch.isfinite(
        vlm.training_step(dict(batch.items()) if hasattr(batch, "items") else {k: batch[k] for k in batch})
    )


def test_lora_adapters_train_save_and_load(make_vlm: MakeVLM, images: list[Any], tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from peft import LoraConfig, inject_adapter_in_model

    vlm = make_vlm("qwen2", bridge="mlp")
    inject_adapter_in_model(
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]), vlm.language_model
    )
    params = vlm.stage_parameters("instruct")
    names = {n for n, p in vlm.named_parameters() if any(p is q for q in params)}
    assert any("lora_" in n for n in names)
    assert all(n.startswith("bridge.") or "lora_" in n for n in names)
    batch = vlm.collate(_samples(images)[:2])
    opt = torch.optim.SGD(params, lr=0.5)
    loss = vlm.training_step(batch)
    loss.backward()
    opt.step()
    vlm.eval()
    ref = vlm(**batch).logits
    vlm.save_pretrained(tmp_path / "lora_model")
    lora_dir = tmp_path / "lora_model" / "lora"
    assert {p.name for p in lora_dir.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    lm_files = {p.name for p in (tmp_path / "lora_model" / "language_model").iterdir()}
    assert "model.safetensors" in lm_files
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "lora_model")
    assert any("lora_" in n for n, _ in loaded.named_parameters())
    torch.testing.assert_close(loaded(**batch).logits, ref)


def test_save_and_load_round_trip(make_vlm: MakeVLM, images: list[Any], tmp_path: Path) -> None:
    vlm = make_vlm("gemma3", bridge="query", image_token="<img>")
    batch = vlm.collate([{"image": images[0], "prompt": "<img> what?", "answer": "a"}])
    ref = vlm(**batch).logits
    vlm.save_pretrained(tmp_path / "m")
    files = {p.name for p in (tmp_path / "m").iterdir()}
    assert {
        "encoder.safetensors",
        "bridge.safetensors",
        "mpm_vision_config.json",
        "language_model",
        "tokenizer",
    } <= files
    loaded = VisionLanguageModel.from_pretrained(tmp_path / "m")
    assert loaded.config.image_token == "<img>" and loaded.num_image_tokens == vlm.num_image_tokens
    torch.testing.assert_close(
        loaded(**loaded.collate([{"image": images[0], "prompt": "<img> what?", "answer": "a"}])).logits, ref
    )
    # objects passed in override the saved ones; the LM can also be left out of the directory
    vlm.save_pretrained(tmp_path / "light", save_language_model=False)
    assert not (tmp_path / "light" / "language_model").exists()
    light = VisionLanguageModel.from_pretrained(
        tmp_path / "light", language_model=vlm.language_model, tokenizer=vlm.tokenizer
    )
    torch.testing.assert_close(light(**batch).logits, ref)
    with pytest.raises(FileNotFoundError, match=r"mpm_vision_config\.json"):
        VisionLanguageModel.from_pretrained(tmp_path / "nothing")


def test_collator_pickles_for_dataloader_workers(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm()
    collator = pickle.loads(pickle.dumps(vlm.collator))
    a = collator(_samples(images))
    b = vlm.collate(_samples(images))
    assert torch.equal(a.input_ids, b.input_ids) and a.labels is not None and b.labels is not None
    assert torch.equal(a.labels, b.labels)
    moved = b.to("cpu")
    assert set(moved.keys()) == {"pixel_values", "input_ids", "attention_mask", "labels"}


def test_mismatched_widths_are_named(make_vlm: MakeVLM, tiny_lm: Callable[..., Any]) -> None:
    vlm = make_vlm()
    from mpm_vision import create_bridge

    with pytest.raises(ValueError, match="out_dim is 16 but the language model's hidden size is 32"):
        VisionLanguageModel(
            vlm.encoder, create_bridge("mlp", in_dim=32, out_dim=16), tiny_lm("llama"), vlm.tokenizer
        )
    with pytest.raises(ValueError, match="in_dim is 8 but the encoder's feature_dim is 32"):
        VisionLanguageModel(
            vlm.encoder, create_bridge("mlp", in_dim=8, out_dim=32), tiny_lm("llama"), vlm.tokenizer
        )


def test_gradient_checkpointing_keeps_the_loss_and_gradients(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("llama", bridge="mlp")
    params = vlm.stage_parameters("align")
    vlm.train()
    batch = vlm.collate(_samples(images)[:2])
    loss = vlm.training_step(batch)
    loss.backward()
    ref = [p.grad.clone() for p in params if p.grad is not None]
    vlm.zero_grad()
    vlm.gradient_checkpointing_enable()
    loss2 = vlm.training_step(batch)
    loss2.backward()
    torch.testing.assert_close(loss2, loss)
    for g, p in zip(ref, params):
        assert p.grad is not None
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-5)


def test_existing_vocab_token_becomes_the_atomic_placeholder(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm()
    # An existing multi-character token that the prompt template ("USER: ...\nASSISTANT:") does not contain, chosen
    # deterministically (vocabulary order is not stable across runs).
    template = vlm.config.prompt_template + vlm.config.answer_template
    word = sorted(
        t
        for t in vlm.tokenizer.get_vocab()
        if len(t) > 3
        and t not in template
        and not t.startswith("<")
        and t not in vlm.tokenizer.get_added_vocab()
    )[0]
    other = VisionLanguageModel(vlm.encoder, vlm.bridge, vlm.language_model, vlm.tokenizer, image_token=word)
    assert other.image_token_id == vlm.tokenizer.get_vocab()[word]
    batch = other.collate([{"image": images[0], "prompt": f"x{word}y", "answer": "a"}])
    assert int((batch.input_ids == other.image_token_id).sum()) == other.num_image_tokens


TEXTS = ["red apple", "a dog", "flag: Japan", "smiling face with open mouth and closed eyes", "x"]


@pytest.mark.parametrize("arch", ARCHS)
def test_answer_logprobs_equal_the_models_own_loss(make_vlm: MakeVLM, images: list[Any], arch: str) -> None:
    """Cached prefix, whole rows and the model's loss (one pair at a time) give the same numbers."""
    vlm = make_vlm(arch, bridge="query", num_queries=3)
    prompt = "<image>\nWhat is this?"
    cached = vlm.answer_logprobs(images[:3], prompt, TEXTS, batch_size=2)
    whole = vlm.answer_logprobs(images[:3], prompt, TEXTS, batch_size=4, use_prefix_cache=False)
    assert cached.total.shape == (3, len(TEXTS)) and cached.total.dtype == torch.float64
    torch.testing.assert_close(cached.total, whole.total, rtol=1e-4, atol=1e-4)
    assert torch.equal(cached.num_tokens, whole.num_tokens)
    assert bool((cached.mean < 0).all()) and float(cached.mean[:, 0].max() - cached.mean[:, 0].min()) > 0
    for i in (0, 2):
        for j, text in enumerate(TEXTS):
            b = vlm.collate([{"image": images[i], "prompt": prompt, "answer": text}])
            assert b.labels is not None
            loss = vlm(**b).loss
            assert loss is not None
            assert float(cached.mean[i, j]) == pytest.approx(-float(loss.detach()), rel=1e-4, abs=1e-5)
            assert int(cached.num_tokens[i, j]) == int((b.labels != IGNORE_INDEX).sum())


def test_answer_logprobs_pairs_and_per_image_prompts(make_vlm: MakeVLM, images: list[Any]) -> None:
    vlm = make_vlm("qwen2", bridge="query", num_queries=3)
    prompts = ["<image>\nWhat is this?", "Name it.", "<image>\nWhat is this?"]
    pairs = [(2, 4), (0, 0), (1, 3), (1, 0), (2, 1)]
    got = vlm.answer_logprobs(images[:3], prompts, TEXTS, pairs=pairs)
    assert got.total.shape == (5,)
    for k, (i, j) in enumerate(pairs):
        one = vlm.answer_logprobs([images[i]], prompts[i], [TEXTS[j]], use_prefix_cache=False)
        assert float(got.total[k]) == pytest.approx(float(one.total[0, 0]), rel=1e-4, abs=1e-4)
    with pytest.raises(ValueError, match="3 images but 2 prompts"):
        vlm.answer_logprobs(images[:3], prompts[:2], TEXTS)
    with pytest.raises(ValueError, match=r"pairs \[\(3, 0\)\] are out of range"):
        vlm.answer_logprobs(images[:3], prompts, TEXTS, pairs=[(3, 0)])
    with pytest.raises(ValueError, match="at most once"):
        vlm.answer_logprobs(images[:1], "<image><image>?", TEXTS)
    with pytest.raises(ValueError, match="at least one answer"):
        vlm.answer_logprobs(images[:1], "?", [])
    assert vlm.training is False
    vlm.train()
    vlm.answer_logprobs(images[:1], "?", ["a"])
    assert vlm.training  # the mode is restored
