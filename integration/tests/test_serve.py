"""`mpm serve` without a browser: uploads, chat streaming and stopping, paint, queueing, disabled tabs, the CLI.

The models are fakes with the interface the app calls (``vlm.chat(..., streamer=, stopping_criteria=)``, a
paint pipeline with a ``unet`` module run once per step); tests/test_serve_browser.py drives a real run.
"""

from __future__ import annotations

import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

pytest.importorskip("gradio", reason="mpm serve needs the serve extra: pip install 'mpm-integration[serve]'")

import torch
from PIL import Image

from mpm import serve as S


# ------------------------------------------------------------------------------------------------
# fakes
# ------------------------------------------------------------------------------------------------
class FakeVLM:
    """Streams ``answer`` word by word through the streamer, checking the stopping criteria before each word.

    ``hold``: after the first word, wait (up to 10 s) until the criteria say stop, as a long answer would.
    """

    tokenizer = None

    def __init__(self, answer: str = "a red apple on a table", *, hold: bool = False, fail: bool = False):
        self.answer, self.hold, self.fail = answer, hold, fail
        self.calls: list[dict[str, Any]] = []

    def chat(self, images: Any, question: str, history: Any, **kw: Any) -> Any:
        from mpm_vision import ChatHistory, ChatOutput

        self.calls.append({"images": images, "question": question, "history": history, **kw})
        if self.fail:
            raise RuntimeError("out of memory")
        streamer, criteria = kw["streamer"], kw["stopping_criteria"]
        said: list[str] = []
        ids = torch.zeros((1, 1), dtype=torch.long)
        for i, word in enumerate(self.answer.split()[: kw["max_new_tokens"]]):
            if i == 1 and self.hold:
                deadline = time.monotonic() + 10
                while not bool(criteria(ids, None).all()) and time.monotonic() < deadline:
                    time.sleep(0.01)
            if bool(criteria(ids, None).all()):
                break
            said.append(word)
            streamer.on_finalized_text(word + " ")
        streamer.end()
        old = history or ChatHistory()
        n_new = len(images or [])
        embeds = old.image_embeds
        if n_new:
            new = torch.zeros(n_new, 2, 4)
            embeds = new if embeds is None else torch.cat([embeds, new])
        answer = " ".join(said)
        return ChatOutput(answer=answer, history=ChatHistory([*old.turns, (question, answer)], embeds))


class FakePipeline:
    """Runs ``unet`` once per step; records how many calls overlap; ``on_step(i)`` is called before step i."""

    def __init__(self, on_step: Any = None, step_s: float = 0.0):
        self.unet = torch.nn.Identity()
        self.on_step, self.step_s = on_step, step_s
        self.active = self.max_active = self.steps_run = 0
        self._count = threading.Lock()
        self.calls: list[dict[str, Any]] = []

    def __call__(self, prompts: list[str], **kw: Any) -> Any:
        self.calls.append({"prompts": prompts, **kw})
        with self._count:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            for i in range(kw["num_inference_steps"]):
                if self.on_step is not None:
                    self.on_step(i)
                self.unet(torch.zeros(1))
                self.steps_run += 1
                time.sleep(self.step_s)
        finally:
            with self._count:
                self.active -= 1
        return SimpleNamespace(images=[Image.new("RGB", (kw["width"], kw["height"]), "red") for _ in prompts])


def _server(tmp_path: Path, **kw: Any) -> S.Server:
    kw.setdefault("reasons", {"chat": None, "paint": None})
    return S.Server(root=tmp_path, paint_size=16, langs=("en", "de"), **kw)


def _run(turns: Iterator[S.ChatTurn]) -> list[S.ChatTurn]:
    return list(turns)


@pytest.fixture
def png(tmp_path: Path) -> Path:
    path = tmp_path / "face.png"
    Image.new("RGB", (8, 6), "yellow").save(path)
    return path


# ------------------------------------------------------------------------------------------------
# uploads
# ------------------------------------------------------------------------------------------------
def test_check_upload_reads_a_good_image_as_rgb(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.new("RGBA", (5, 3)).save(path)
    im = S.check_upload(path)
    assert im.mode == "RGB" and im.size == (5, 3)


@pytest.mark.parametrize("load_truncated", [False, True])
def test_check_upload_refuses_empty_corrupt_truncated_and_huge_files(
    tmp_path: Path, png: Path, load_truncated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import ImageFile

    # some libraries set this global; a truncated upload must be refused either way
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", load_truncated)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    truncated = tmp_path / "cut.png"
    big_png = tmp_path / "big-source.png"
    Image.new("RGB", (64, 64), "blue").save(big_png)
    truncated.write_bytes(big_png.read_bytes()[:60])
    huge = tmp_path / "huge.png"
    Image.new("1", (8000, 5000)).save(huge)  # 40 megapixels, a small file
    cases = {
        empty: "empty (0 bytes)",
        text: "not an image mpm can read",
        truncated: "not an image mpm can read",
        huge: "8000x5000 = 40.0 megapixels; the limit is 16 megapixels",
        tmp_path / "gone.png": "did not arrive",
    }
    for path, message in cases.items():
        with pytest.raises(S.UploadError, match=message.replace("(", r"\(").replace(")", r"\)")):
            S.check_upload(path)


# ------------------------------------------------------------------------------------------------
# chat
# ------------------------------------------------------------------------------------------------
def test_chat_streams_the_answer_and_keeps_images_across_turns(tmp_path: Path, png: Path) -> None:
    vlm = FakeVLM("a red apple on a table")
    server = _server(tmp_path, vlm=vlm)
    turns = _run(server.chat("这是什么？", [str(png)], [], None, session="s"))
    answers = [t.messages[-1]["content"] for t in turns]
    assert answers[:-1] == [
        "a ",
        "a red ",
        "a red apple ",
        "a red apple on ",
        "a red apple on a ",
        "a red apple on a table ",
    ]
    assert answers[-1] == "a red apple on a table"
    last = turns[-1]
    assert last.status.startswith("Done: 6 piece(s)") and "1 image(s)" in last.status
    assert last.messages[0] == {"role": "user", "content": {"path": str(png)}}
    assert last.messages[1] == {"role": "user", "content": "这是什么？"}
    assert vlm.calls[0]["question"] == "这是什么？" and len(vlm.calls[0]["images"]) == 1
    assert all(t.history is None for t in turns[:-1])  # the history moves on only with the finished turn
    # second turn: no new image, the cached one stays in the history
    turns2 = _run(server.chat("und jetzt?", [], last.messages, last.history, session="s"))
    assert vlm.calls[1]["images"] is None and vlm.calls[1]["history"] is last.history
    assert turns2[-1].history.num_images == 1 and len(turns2[-1].history.turns) == 2
    assert len(turns2[-1].messages) == 5


@pytest.mark.parametrize(
    ("content", "message"),
    [(b"", "is empty (0 bytes)"), (b"GIF89a broken", "is not an image mpm can read")],
)
def test_a_bad_upload_is_a_message_and_the_model_is_not_called(
    tmp_path: Path, content: bytes, message: str
) -> None:
    bad = tmp_path / "bad.gif"
    bad.write_bytes(content)
    vlm = FakeVLM()
    server = _server(tmp_path, vlm=vlm)
    before = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    (turn,) = _run(server.chat("what is it?", [str(bad)], before, "HISTORY", session="s"))
    assert turn.status.startswith("⚠ bad.gif") and message in turn.status
    assert turn.messages == before and turn.history == "HISTORY"
    assert vlm.calls == []


def test_an_empty_question_and_a_failing_model_are_messages(tmp_path: Path) -> None:
    (turn,) = _run(_server(tmp_path, vlm=FakeVLM()).chat("   ", [], [], None))
    assert turn.status.startswith("⚠ Type a question")
    turns = _run(_server(tmp_path, vlm=FakeVLM(fail=True)).chat("hi", [], [], None))
    assert turns[-1].status == "⚠ The model failed: RuntimeError: out of memory"
    assert turns[-1].messages == [{"role": "user", "content": "hi"}]  # no empty answer left behind


def test_stop_ends_the_answer_mid_way_and_keeps_the_partial_answer(tmp_path: Path) -> None:
    vlm = FakeVLM("one two three four five six", hold=True)
    server = _server(tmp_path, vlm=vlm)
    turns = server.chat("count", [], [], None, session="me")
    first = next(turns)
    assert first.messages[-1]["content"] == "one "
    assert server.stop("other session") == "Nothing to stop."
    assert server.stop("me") == "Stopping…"
    rest = list(turns)
    assert rest[-1].status.startswith("Stopped:")
    assert rest[-1].messages[-1]["content"] == "one"
    assert rest[-1].history.turns == [("count", "one")]
    assert server.stop("me") == "Nothing to stop."  # finished


def test_closing_the_stream_stops_the_generation(tmp_path: Path) -> None:
    """When the page goes away Gradio closes the generator: the model thread must end, not run on."""
    vlm = FakeVLM("one two three four", hold=True)
    server = _server(tmp_path, vlm=vlm)
    turns = server.chat("count", [], [], None, session="me")
    next(turns)
    t0 = time.monotonic()
    turns.close()
    assert time.monotonic() - t0 < 5
    assert server.lock.acquire(timeout=1)  # the model is free again
    server.lock.release()


# ------------------------------------------------------------------------------------------------
# paint
# ------------------------------------------------------------------------------------------------
def test_paint_returns_an_image_of_the_run_size(tmp_path: Path) -> None:
    pipe = FakePipeline()
    server = _server(tmp_path, pipeline=pipe)
    image, status = server.paint("roter Apfel", 3, 5, 2.5)
    assert image.size == (16, 16)
    assert status.startswith("Done: 16x16 px, 5 steps, guidance 2.5, seed 3")
    call = pipe.calls[0]
    assert call["prompts"] == ["roter Apfel"] and call["guidance_scale"] == 2.5
    assert call["generator"].initial_seed() == 3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("", 0, 5, 3.0), "⚠ Type a prompt"),
        (("x", 0, 0, 3.0), "⚠ steps must be between 1 and 500"),
        (("x", 0, 5, float("nan")), "⚠ guidance must be a finite number"),
        (("x", "seed", 5, 3.0), "⚠ steps, guidance and seed must be numbers"),
    ],
)
def test_bad_paint_settings_are_messages(tmp_path: Path, args: tuple[Any, ...], message: str) -> None:
    pipe = FakePipeline()
    image, status = _server(tmp_path, pipeline=pipe).paint(*args)
    assert image is None and status.startswith(message)
    assert pipe.calls == []


def test_paint_languages_paints_each_line_with_the_same_seed(tmp_path: Path) -> None:
    pipe = FakePipeline()
    server = _server(tmp_path, pipeline=pipe)
    gallery, status = server.paint_languages("en: red apple\n\nde: roter Apfel\n红苹果", 7, 2, 3.0)
    assert [caption for _, caption in gallery] == ["en: red apple", "de: roter Apfel", "红苹果"]
    assert [c["prompts"] for c in pipe.calls] == [["red apple"], ["roter Apfel"], ["红苹果"]]
    assert {c["generator"].initial_seed() for c in pipe.calls} == {7}
    assert status.startswith("Done: 3 image(s), seed 7")
    too_many = "\n".join(f"p{i}" for i in range(S.MAX_PROMPTS + 1))
    assert server.paint_languages(too_many, 0, 2, 3.0)[1].startswith(f"⚠ At most {S.MAX_PROMPTS} prompts")
    assert server.paint_languages(" \n", 0, 2, 3.0)[1].startswith("⚠ Write one prompt a line")


def test_stop_ends_painting_at_the_next_step(tmp_path: Path) -> None:
    server = _server(tmp_path)
    pipe = FakePipeline(on_step=lambda i: server.stop("me") if i == 2 else None)
    server.pipeline = pipe
    image, status = server.paint("apple", 0, 50, 3.0, session="me")
    assert image is None and status == "Stopped."
    assert pipe.steps_run == 2
    image, status = server.paint("apple", 0, 1, 3.0, session="me")  # the next request starts afresh
    assert image is not None and status.startswith("Done")


def test_model_calls_never_overlap(tmp_path: Path) -> None:
    pipe = FakePipeline(step_s=0.01)
    server = _server(tmp_path, pipeline=pipe)
    threads = [threading.Thread(target=server.paint, args=("apple", i, 5, 3.0)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(pipe.calls) == 4 and pipe.max_active == 1


def test_concept_lines_and_prompt_parsing(tmp_path: Path) -> None:
    server = _server(
        tmp_path, concepts={"red apple": {"en": "red apple", "de": "roter Apfel", "fr": "pomme"}}
    )
    assert server.concept_lines("red apple") == "en: red apple\nde: roter Apfel"  # the run's languages only
    assert server.concept_lines(None) == ""
    assert S.parse_prompt_lines("zh-Hans: 苹果\nhttp://x: y\nratio 1:2") == [
        ("zh-Hans", "苹果"),
        ("", "http://x: y"),
        ("", "ratio 1:2"),
    ]


# ------------------------------------------------------------------------------------------------
# what a run has
# ------------------------------------------------------------------------------------------------
def _cfg(stages: dict[str, list[str]]) -> Any:
    return SimpleNamespace(stages_of=lambda model: stages.get(model, []))


def test_unavailable_reasons_name_the_missing_part(tmp_path: Path) -> None:
    (tmp_path / "stages" / "align").mkdir(parents=True)
    (tmp_path / "stages" / "align" / "result.json").write_text("{}")
    reasons = S.unavailable_reasons(_cfg({"vlm": ["align"]}), tmp_path)
    assert reasons["chat"] is None
    assert reasons["paint"] is not None and "no paint model" in reasons["paint"]
    reasons = S.unavailable_reasons(_cfg({"vlm": ["align", "instruct"], "paint": ["paint"]}), tmp_path)
    assert (
        reasons["chat"] is not None
        and "stage 'instruct' of the chat model has not finished" in reasons["chat"]
    )
    assert reasons["paint"] is not None and "mpm train --config" in reasons["paint"]


def test_a_run_without_chat_or_paint_shows_those_tabs_disabled_with_the_reason(tmp_path: Path) -> None:
    import gradio as gr

    server = _server(tmp_path, reasons={"chat": "no chat model here", "paint": "no paint model here"})
    demo = S.build_app(server)
    tabs = {b.id: b for b in demo.blocks.values() if isinstance(b, gr.Tab)}
    assert tabs["chat"].interactive is False and tabs["paint"].interactive is False
    assert tabs["board"].interactive is True
    notes = [str(b.value) for b in demo.blocks.values() if isinstance(b, gr.Markdown)]
    assert any("Chat is unavailable" in n and "no chat model here" in n for n in notes)
    assert any("Paint is unavailable" in n and "no paint model here" in n for n in notes)
    (turn,) = list(server.chat("hi", [], [], None))
    assert turn.status == "⚠ Chat is unavailable: no chat model here"
    assert server.paint("apple", 0, 2, 3.0) == (None, "⚠ Paint is unavailable: no paint model here")


def test_every_model_event_is_queued_one_at_a_time(tmp_path: Path) -> None:
    demo = S.build_app(_server(tmp_path, vlm=FakeVLM(), pipeline=FakePipeline()))
    fns = list(demo.fns.values())
    model = [fn for fn in fns if fn.name in ("on_chat", "on_paint", "on_langs")]
    assert len(model) == 4  # chat submit, paint button, prompt submit, side by side
    assert all(
        fn.queue and fn.concurrency_limit == 1 and fn.concurrency_id == S.CONCURRENCY_ID for fn in model
    )
    stops = [fn for fn in fns if fn.name == "on_stop"]
    assert len(stops) == 2 and not any(fn.queue for fn in stops)  # Stop is never stuck behind the generation


def test_board_tab_reads_the_leaderboard_and_plots(tmp_path: Path) -> None:
    server = _server(tmp_path)
    text, plots = server.board()
    assert "no board yet" in text and f"mpm eval {tmp_path}" in text and plots == []
    (tmp_path / "board" / "plots").mkdir(parents=True)
    (tmp_path / "board" / "leaderboard.md").write_text("### classification\n| a |\n", encoding="utf-8")
    Image.new("RGB", (4, 4)).save(tmp_path / "board" / "plots" / "classification_accat1_bars.png")
    text, plots = server.board()
    assert text.startswith("### classification")
    assert plots == [
        (str(tmp_path / "board" / "plots" / "classification_accat1_bars.png"), "classification accat1 bars")
    ]


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def test_serve_binds_to_localhost_by_default(tmp_path: Path) -> None:
    from mpm.cli import build_parser

    args = build_parser("serve").parse_args(["serve", str(tmp_path)])
    assert (args.host, args.port) == ("127.0.0.1", S.DEFAULT_PORT)


def test_serve_refuses_a_directory_that_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mpm.cli import main

    assert main(["serve", str(tmp_path / "nope")]) == 2
    assert "mpm serve: error: run directory" in capsys.readouterr().err
    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_starts_on_localhost_and_prints_its_url(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        S, "load_server", lambda run_dir, **kw: _server(Path(run_dir), pipeline=FakePipeline())
    )
    lines: list[str] = []
    port = _free_port()
    demo = S.serve(str(tmp_path), port=port, block=False, printer=lines.append)
    try:
        (line,) = lines
        url = f"http://127.0.0.1:{port}/"
        assert line.startswith(f"mpm serve: {url}  (") and "paint, board" in line
        with urllib.request.urlopen(url + "config", timeout=10) as r:
            assert r.status == 200
    finally:
        demo.close()
