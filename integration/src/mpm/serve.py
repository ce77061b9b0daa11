"""``mpm serve RUN_DIR``: a browser UI (Gradio) for a trained run: chat, paint and the board.

    mpm serve outputs/default                 # http://127.0.0.1:7860 (localhost only)
    mpm serve outputs/default --port 8000 --host 0.0.0.0

Three tabs:

* **Chat**: upload one or more images, ask in any language, several turns (the images' vision states
  are cached in the conversation's :class:`mpm_vision.ChatHistory`), tokens streamed as they come.
* **Paint**: a prompt in any language with seed, steps and guidance; and one concept painted in several
  languages side by side (one prompt a line, the same seed for each).
* **Board**: the run's leaderboard (``board/leaderboard.md``) with its plots.

A run without a chat or paint model shows that tab disabled, with the reason. Requests go through one
queue (``concurrency_limit=1``, one concurrency group), and a lock guards the models as well, so the
weights are never run concurrently. Bad uploads (0 bytes, not an image, over :data:`MAX_PIXELS`) get a
message in the UI. **Stop** ends a generation mid-way: chat stops at the next token (the partial answer
stays in the conversation), paint at the next denoising step.

Needs the optional extra ``mpm-integration[serve]`` (Gradio). Nothing goes to the network: Gradio's
analytics are switched off, no share link is made and the theme uses the system's fonts.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "MAX_PIXELS",
    "MAX_PROMPTS",
    "ChatTurn",
    "Server",
    "UploadError",
    "build_app",
    "check_upload",
    "register",
    "unavailable_reasons",
]

MAX_PIXELS = 16_000_000
"""The largest upload, in pixels (width x height); larger images are refused with a message."""
MAX_UPLOAD = "50mb"
"""Gradio's limit on the size of one uploaded file."""
MAX_PROMPTS = 6
"""At most this many prompts (languages) are painted side by side."""
DEFAULT_PORT = 7860
CONCURRENCY_ID = "mpm-models"
"""Every event that runs a model belongs to this concurrency group (limit 1)."""

_COMPONENTS = {"vlm": "chat", "paint": "paint"}


class UploadError(ValueError):
    """An uploaded file that cannot be used; the message is shown to the user as it is."""


class _Stopped(Exception):
    """Raised inside the paint UNet when the user pressed Stop."""


def check_upload(path: str | os.PathLike[str], *, max_pixels: int = MAX_PIXELS) -> Any:
    """The uploaded image at ``path`` as RGB, or :class:`UploadError` with a message for the user.

    Refused: a missing file, 0 bytes, anything PIL cannot decode, and images over ``max_pixels``
    (checked from the header, before the pixels are decoded).
    """
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    name = p.name
    if not p.is_file():
        raise UploadError(f"{name}: the upload did not arrive; upload it again")
    if p.stat().st_size == 0:
        raise UploadError(f"{name} is empty (0 bytes): choose an image file (PNG, JPEG, WebP, GIF, BMP)")
    try:
        # verify() reads the whole file: a truncated one is refused even when some imported library
        # has set PIL's global ImageFile.LOAD_TRUNCATED_IMAGES (seen in the full test suite)
        with Image.open(p) as im:
            im.verify()
        with Image.open(p) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise UploadError(
                    f"{name} is {w}x{h} = {w * h / 1e6:.1f} megapixels; the limit is "
                    f"{max_pixels / 1e6:g} megapixels: make the image smaller and upload it again"
                )
            if min(w, h) < 1:
                raise UploadError(f"{name} has no pixels ({w}x{h})")
            im.load()
            return im.convert("RGB")
    except UploadError:
        raise
    except Image.DecompressionBombError:
        raise UploadError(
            f"{name} is too large to open (over {max_pixels / 1e6:g} megapixels): make it smaller"
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
        raise UploadError(
            f"{name} is not an image mpm can read ({type(err).__name__}): upload a PNG, JPEG, WebP, GIF or BMP"
        ) from None


def unavailable_reasons(cfg: Any, root: Path) -> dict[str, str | None]:
    """``{"chat": reason or None, "paint": reason or None}`` for a run's config and directory.

    The same checks as :func:`mpm.recipe.load_run`: the run has an enabled stage for the model, and every
    such stage has finished (its ``result.json`` is there).
    """
    from mpm.recipe import CONFIG_FILE, STAGES_DIR

    reasons: dict[str, str | None] = {}
    for model, what in _COMPONENTS.items():
        stages = list(cfg.stages_of(model))
        reason = None
        if not stages:
            reason = (
                f"this run has no {what} model (no enabled stage with model = {model!r} in its config.toml)"
            )
        else:
            for name in stages:
                if not (root / STAGES_DIR / name / "result.json").is_file():
                    reason = (
                        f"stage {name!r} of the {what} model has not finished: "
                        f"run `mpm train --config {root / CONFIG_FILE}`"
                    )
                    break
        reasons[what] = reason
    return reasons


# ------------------------------------------------------------------------------------------------
# the app's logic (no Gradio here: tested without a browser)
# ------------------------------------------------------------------------------------------------
@dataclass
class ChatTurn:
    """What one step of :meth:`Server.chat` shows: the messages, the model's history and a status line."""

    messages: list[dict[str, Any]]
    history: Any
    status: str


def _stop_criteria(stop: threading.Event) -> Any:
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _OnEvent(StoppingCriteria):
        """Every sequence is done once ``stop`` is set (checked after each new token)."""

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_OnEvent()])


@dataclass
class Server:
    """The models of a run behind a lock, and what each tab does with them.

    ``vlm``/``pipeline``: the run's chat model and paint pipeline (``None`` when the run has none:
    ``reasons`` then says why). Every model call holds :attr:`lock`, so two requests never run the
    same weights at once even outside Gradio's queue.
    """

    root: Path
    vlm: Any = None
    pipeline: Any = None
    run: Any = None
    """The loaded run (``mpm.recipe.TrainedRun``): when set, paintings go through its painter, which
    knows the paint model's conditioning (the pivot's cached states or live-LM prompts)."""
    reasons: dict[str, str | None] = field(default_factory=dict)
    paint_size: int = 64
    langs: tuple[str, ...] = ("en",)
    concepts: dict[str, dict[str, str]] = field(default_factory=dict)
    """EmojiCap concepts for the side-by-side painter: ``{English name: {lang: name}}``."""
    label: str = "mpm"
    max_new_tokens: int = 64
    lock: threading.Lock = field(default_factory=threading.Lock)
    _stops: dict[str, threading.Event] = field(default_factory=dict)

    # -------------------------------------------------------------------------------------- stop
    def _new_stop(self, session: str) -> threading.Event:
        stop = threading.Event()
        self._stops[session] = stop
        return stop

    def stop(self, session: str) -> str:
        """Stop the generation running for ``session`` (chat: at the next token; paint: the next step)."""
        stop = self._stops.get(session)
        if stop is None or stop.is_set():
            return "Nothing to stop."
        stop.set()
        return "Stopping…"

    # -------------------------------------------------------------------------------------- chat
    def chat(
        self,
        text: str,
        files: Sequence[str],
        messages: list[dict[str, Any]],
        history: Any,
        *,
        session: str = "",
        max_new_tokens: int | None = None,
        timeout_s: float = 600.0,
    ) -> Iterator[ChatTurn]:
        """One question (with the images new in this turn): yields the conversation as the answer grows.

        A bad upload or an empty question yields one :class:`ChatTurn` with a message and the
        conversation unchanged. The last turn carries the new history (pass it back on the next
        question); a stopped answer stays in it as far as it got.
        """
        from transformers import TextIteratorStreamer

        messages = list(messages or [])
        if self.vlm is None:
            yield ChatTurn(messages, history, f"⚠ Chat is unavailable: {self.reasons.get('chat')}")
            return
        images = []
        for path in files or []:
            try:
                images.append(check_upload(path))
            except UploadError as err:
                yield ChatTurn(messages, history, f"⚠ {err}")
                return
        text = (text or "").strip()
        if not text:
            yield ChatTurn(messages, history, "⚠ Type a question (any language), then press Enter.")
            return
        for path in files or []:
            messages.append({"role": "user", "content": {"path": str(path)}})
        messages += [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        stop = self._new_stop(session)
        streamer = TextIteratorStreamer(
            self.vlm.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=timeout_s
        )
        outcome: dict[str, Any] = {}
        limit = int(max_new_tokens or self.max_new_tokens)

        def work() -> None:
            try:
                with self.lock:
                    outcome["out"] = self.vlm.chat(
                        images or None,
                        text,
                        history,
                        streamer=streamer,
                        stopping_criteria=_stop_criteria(stop),
                        max_new_tokens=limit,
                        do_sample=False,
                    )
            except Exception as err:  # shown in the UI; the server keeps running
                outcome["error"] = err
                streamer.end()

        t0 = time.perf_counter()
        thread = threading.Thread(target=work, name="mpm-serve-chat", daemon=True)
        thread.start()
        answer = ""
        pieces = 0
        try:
            for piece in streamer:
                if not piece:
                    continue
                answer += piece
                pieces += 1
                messages[-1] = {"role": "assistant", "content": answer}
                yield ChatTurn([*messages], history, "Answering…  (Stop ends it here)")
        except GeneratorExit:  # the page went away or Gradio cancelled the event: end the generation too
            stop.set()
            raise
        finally:
            thread.join(timeout=timeout_s)
        if "error" in outcome:
            messages.pop()
            failure = outcome["error"]
            yield ChatTurn(messages, history, f"⚠ The model failed: {type(failure).__name__}: {failure}")
            return
        out = outcome["out"]
        messages[-1] = {"role": "assistant", "content": out.answer or "(empty answer)"}
        how = "stopped" if stop.is_set() else "done"
        stop.set()  # nothing left to stop
        yield ChatTurn(
            messages,
            out.history,
            f"{how.capitalize()}: {pieces} piece(s) streamed in {time.perf_counter() - t0:.1f} s; "
            f"{out.history.num_images} image(s) in this conversation.",
        )

    # ------------------------------------------------------------------------------------- paint
    def _check_paint(self, steps: Any, guidance: Any, seed: Any) -> tuple[int, float, int]:
        try:
            steps_i, guidance_f, seed_i = int(steps), float(guidance), int(seed)
        except (TypeError, ValueError):
            raise UploadError("steps, guidance and seed must be numbers") from None
        if not 1 <= steps_i <= 500:
            raise UploadError(f"steps must be between 1 and 500, got {steps_i}")
        if not math.isfinite(guidance_f) or guidance_f < 0:
            raise UploadError(f"guidance must be a finite number >= 0, got {guidance}")
        return steps_i, guidance_f, seed_i

    def _paint(
        self, prompts: list[str], steps: int, guidance: float, seed: int, stop: threading.Event
    ) -> list[Any]:
        """One image per prompt, each from the same seed, holding the lock; :class:`_Stopped` on Stop."""
        import torch

        def check(_module: Any, _args: Any) -> None:
            if stop.is_set():
                raise _Stopped

        images = []
        with self.lock:
            handle = self.pipeline.unet.register_forward_pre_hook(check)
            try:
                for prompt in prompts:
                    if self.run is not None:
                        images += self.run.paint_prompts(
                            [prompt], num_inference_steps=steps, guidance_scale=guidance, seed=seed
                        )
                        continue
                    out = self.pipeline(
                        [prompt],
                        num_inference_steps=steps,
                        guidance_scale=guidance,
                        height=self.paint_size,
                        width=self.paint_size,
                        generator=torch.Generator().manual_seed(seed),
                    )
                    images.append(out.images[0])
            finally:
                handle.remove()
        return images

    def paint(
        self, prompt: str, seed: Any, steps: Any, guidance: Any, *, session: str = ""
    ) -> tuple[Any, str]:
        """``(image or None, status)`` for one prompt (any language)."""
        if self.pipeline is None:
            return None, f"⚠ Paint is unavailable: {self.reasons.get('paint')}"
        prompt = (prompt or "").strip()
        if not prompt:
            return None, "⚠ Type a prompt (any language)."
        try:
            steps_i, guidance_f, seed_i = self._check_paint(steps, guidance, seed)
        except UploadError as err:
            return None, f"⚠ {err}"
        stop = self._new_stop(session)
        t0 = time.perf_counter()
        try:
            (image,) = self._paint([prompt], steps_i, guidance_f, seed_i, stop)
        except _Stopped:
            return None, "Stopped."
        finally:
            stop.set()
        return image, (
            f"Done: {image.width}x{image.height} px, {steps_i} steps, guidance {guidance_f:g}, seed {seed_i}, "
            f"{time.perf_counter() - t0:.1f} s."
        )

    def paint_languages(
        self, lines: str, seed: Any, steps: Any, guidance: Any, *, session: str = ""
    ) -> tuple[list[tuple[Any, str]], str]:
        """One concept in several languages: one prompt a line (``lang: text`` or just ``text``), same seed."""
        if self.pipeline is None:
            return [], f"⚠ Paint is unavailable: {self.reasons.get('paint')}"
        items = parse_prompt_lines(lines)
        if not items:
            return [], "⚠ Write one prompt a line, e.g. `en: red apple` and `de: roter Apfel`."
        if len(items) > MAX_PROMPTS:
            return [], f"⚠ At most {MAX_PROMPTS} prompts at a time (got {len(items)})."
        try:
            steps_i, guidance_f, seed_i = self._check_paint(steps, guidance, seed)
        except UploadError as err:
            return [], f"⚠ {err}"
        stop = self._new_stop(session)
        t0 = time.perf_counter()
        try:
            images = self._paint([p for _, p in items], steps_i, guidance_f, seed_i, stop)
        except _Stopped:
            return [], "Stopped."
        finally:
            stop.set()
        gallery = [(im, f"{lang}: {p}" if lang else p) for im, (lang, p) in zip(images, items)]
        return gallery, f"Done: {len(images)} image(s), seed {seed_i}, {time.perf_counter() - t0:.1f} s."

    def concept_lines(self, concept: str | None) -> str:
        """The names of an EmojiCap concept in the run's languages, one ``lang: name`` a line."""
        names = self.concepts.get(concept or "", {})
        return "\n".join(f"{lang}: {names[lang]}" for lang in self.langs if lang in names)

    # ------------------------------------------------------------------------------------- board
    def board(self) -> tuple[str, list[tuple[str, str]]]:
        """The leaderboard as Markdown and its plots as ``(path, caption)``."""
        board = self.root / "board"
        md = board / "leaderboard.md"
        if not md.is_file():
            return (
                f"This run has no board yet: `mpm eval {self.root}` evaluates it and writes one.",
                [],
            )
        plots = sorted((board / "plots").glob("*.png")) if (board / "plots").is_dir() else []
        return md.read_text(encoding="utf-8"), [(str(p), p.stem.replace("_", " ")) for p in plots]


_LANG_LINE = re.compile(r"^([A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*)\s*:\s*(\S.*)$")


def parse_prompt_lines(text: str) -> list[tuple[str, str]]:
    """``"en: red apple\\nroter Apfel"`` -> ``[("en", "red apple"), ("", "roter Apfel")]`` (blank lines skipped)."""
    items = []
    for line in (text or "").splitlines():
        line = line.strip()
        if not line:
            continue
        m = _LANG_LINE.match(line)
        items.append((m.group(1), m.group(2).strip()) if m else ("", line))
    return items


def _concepts(cfg: Any, limit: int = 40) -> dict[str, dict[str, str]]:
    """Names of the run's evaluation concepts in its languages (empty when its data is not there)."""
    try:
        from mpm_bench import load_emojicap

        examples = load_emojicap(cfg.data_root, cfg.eval.split, langs=list(cfg.run.langs), limit=limit)
    except Exception:  # the board and the free-text painter still work without the data
        return {}
    out: dict[str, dict[str, str]] = {}
    for ex in examples:
        key = ex.names.get("en") or next(iter(ex.names.values()), ex.key)
        out.setdefault(key, dict(ex.names))
    return out


def load_server(run_dir: str | os.PathLike[str], *, max_new_tokens: int = 64) -> Server:
    """A :class:`Server` for a run directory: its config checked, then the models it has loaded.

    Raises :class:`mpm.config.ConfigError` when ``run_dir`` is not a run directory.
    """
    from mpm.builders import paint_resolution
    from mpm.recipe import _label, load_run, load_run_config

    root = Path(run_dir)
    cfg = load_run_config(root)
    reasons = unavailable_reasons(cfg, root)
    need = tuple(model for model, what in _COMPONENTS.items() if reasons[what] is None)
    server = Server(
        root=root,
        reasons=reasons,
        paint_size=paint_resolution(cfg),
        langs=tuple(cfg.run.langs),
        label=_label(None, cfg),
        max_new_tokens=max_new_tokens,
    )
    if need:
        run = load_run(root, need=need)
        server.vlm = run.vlm
        server.pipeline = run.pipeline() if run.paint is not None else None
        server.run = run if run.paint is not None else None
        server.label = run.label
    if server.pipeline is not None:
        server.concepts = _concepts(cfg)
    return server


# ------------------------------------------------------------------------------------------------
# the Gradio app
# ------------------------------------------------------------------------------------------------
_CSS = """
#paint-image img, #paint-gallery img, #chat-log img { image-rendering: pixelated; }
#paint-image img { width: 100%; height: 100%; object-fit: contain; }
.mpm-status { min-height: 1.5em; }
"""


def _theme() -> Any:
    import gradio as gr

    # System fonts: the default theme would load Google Fonts, and the app must not touch the network.
    return gr.themes.Default(
        font=[gr.themes.Font("system-ui"), gr.themes.Font("sans-serif")],
        font_mono=[gr.themes.Font("ui-monospace"), gr.themes.Font("monospace")],
    )


def _session(request: Any) -> str:
    return str(getattr(request, "session_hash", "") or "")


def _clear() -> str:
    return ""


def _with_request(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Mark ``fn``'s ``request`` parameter as a ``gr.Request`` (this module's string annotations name a
    local ``gr`` that Gradio cannot resolve), so Gradio passes the request and not an input."""
    import gradio as gr

    fn.__annotations__ = {**fn.__annotations__, "request": gr.Request}
    return fn


def build_app(server: Server) -> Any:
    """The Gradio ``Blocks`` of the three tabs over ``server`` (queued: one model call at a time)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    reasons = server.reasons
    chat_ok, paint_ok = server.vlm is not None, server.pipeline is not None
    first = "chat" if chat_ok else "paint" if paint_ok else "board"
    model_event: dict[str, Any] = {"concurrency_limit": 1, "concurrency_id": CONCURRENCY_ID}

    with gr.Blocks(title=f"mpm · {server.label}") as demo:
        gr.Markdown(
            f"## mpm · {server.label}\n`{server.root}` · languages: {', '.join(server.langs)}",
            elem_id="mpm-title",
        )
        for what, ok in (("chat", chat_ok), ("paint", paint_ok)):
            if not ok:
                gr.Markdown(
                    f"**{what.capitalize()} is unavailable:** {reasons.get(what)}",
                    elem_id=f"{what}-unavailable",
                )
        with gr.Tabs(selected=first, elem_id="mpm-tabs"):
            # ------------------------------------------------------------------------------- chat
            with gr.Tab(
                "Chat" if chat_ok else "Chat (unavailable)",
                id="chat",
                interactive=chat_ok,
                elem_id="tab-chat",
            ):
                chatbot = gr.Chatbot(label="Conversation", height=420, elem_id="chat-log")
                history = gr.State(None)
                box = gr.MultimodalTextbox(
                    file_types=["image"],
                    file_count="multiple",
                    placeholder="Attach images (clip button) and ask in any language, then press Enter",
                    show_label=False,
                    elem_id="chat-input",
                    interactive=chat_ok,
                )
                with gr.Row():
                    max_tokens = gr.Slider(
                        1, 512, value=server.max_new_tokens, step=1, label="max new tokens"
                    )
                    stop_chat = gr.Button("Stop", variant="stop", elem_id="chat-stop")
                    reset = gr.Button("New conversation", elem_id="chat-reset")
                chat_status = gr.Markdown("", elem_id="chat-status", elem_classes="mpm-status")

                @_with_request
                def on_chat(
                    message: dict[str, Any] | None,
                    messages: list[dict[str, Any]],
                    hist: Any,
                    limit: float,
                    request: gr.Request,
                ) -> Iterator[tuple[Any, ...]]:
                    message = message or {}
                    files = [f if isinstance(f, str) else f.get("path", "") for f in message.get("files", [])]
                    turns = server.chat(
                        message.get("text", ""),
                        files,
                        messages,
                        hist,
                        session=_session(request),
                        max_new_tokens=int(limit),
                    )
                    for turn in turns:
                        # after a refusal the question stays in the box (the files go: attach them again)
                        keep = {"text": message.get("text", ""), "files": []}
                        yield (
                            turn.messages,
                            turn.history,
                            turn.status,
                            gr.MultimodalTextbox(value=keep if turn.status.startswith("⚠") else None),
                        )

                # Each request first clears its status line (at once, outside the queue), so that a repeated
                # message is seen to arrive again.
                box.submit(_clear, None, chat_status, queue=False).then(
                    on_chat,
                    [box, chatbot, history, max_tokens],
                    [chatbot, history, chat_status, box],
                    **model_event,
                )

                @_with_request
                def on_stop(request: gr.Request) -> str:
                    return server.stop(_session(request))

                stop_chat.click(on_stop, None, chat_status, queue=False)
                reset.click(
                    lambda: ([], None, "New conversation."),
                    None,
                    [chatbot, history, chat_status],
                    queue=False,
                )

            # ------------------------------------------------------------------------------ paint
            with gr.Tab(
                "Paint" if paint_ok else "Paint (unavailable)",
                id="paint",
                interactive=paint_ok,
                elem_id="tab-paint",
            ):
                with gr.Row():
                    with gr.Column():
                        prompt = gr.Textbox(label="Prompt (any language)", elem_id="paint-prompt")
                        with gr.Row():
                            seed = gr.Number(0, label="seed", precision=0, elem_id="paint-seed")
                            steps = gr.Slider(1, 200, value=20, step=1, label="steps", elem_id="paint-steps")
                            guidance = gr.Slider(
                                0, 15, value=3.0, step=0.5, label="guidance", elem_id="paint-guidance"
                            )
                        with gr.Row():
                            paint_btn = gr.Button("Paint", variant="primary", elem_id="paint-run")
                            stop_paint = gr.Button("Stop", variant="stop", elem_id="paint-stop")
                        paint_status = gr.Markdown("", elem_id="paint-status", elem_classes="mpm-status")
                    with gr.Column():
                        image = gr.Image(
                            label=f"{server.paint_size}x{server.paint_size} px",
                            type="pil",
                            format="png",
                            interactive=False,
                            height=320,
                            elem_id="paint-image",
                        )
                gr.Markdown("### The same concept in several languages (one prompt a line, the same seed)")
                with gr.Row():
                    with gr.Column():
                        names = list(server.concepts)
                        concept = gr.Dropdown(
                            names,
                            value=names[0] if names else None,
                            label="an EmojiCap concept",
                            elem_id="paint-concept",
                        )
                        lines = gr.Textbox(
                            server.concept_lines(names[0] if names else None),
                            lines=len(server.langs) + 1,
                            label="prompts (`lang: text`, one a line)",
                            elem_id="paint-lines",
                        )
                        langs_btn = gr.Button("Paint side by side", elem_id="paint-langs-run")
                        langs_status = gr.Markdown(
                            "", elem_id="paint-langs-status", elem_classes="mpm-status"
                        )
                    gallery = gr.Gallery(label="side by side", columns=MAX_PROMPTS, elem_id="paint-gallery")
                concept.change(server.concept_lines, concept, lines, queue=False)

                @_with_request
                def on_paint(p: str, s: float, n: float, g: float, request: gr.Request) -> tuple[Any, str]:
                    return server.paint(p, s, n, g, session=_session(request))

                @_with_request
                def on_langs(t: str, s: float, n: float, g: float, request: gr.Request) -> tuple[Any, str]:
                    return server.paint_languages(t, s, n, g, session=_session(request))

                paint_ev = [prompt, seed, steps, guidance]
                for trigger in (paint_btn.click, prompt.submit):
                    trigger(_clear, None, paint_status, queue=False).then(
                        on_paint, paint_ev, [image, paint_status], **model_event
                    )
                langs_btn.click(_clear, None, langs_status, queue=False).then(
                    on_langs, [lines, seed, steps, guidance], [gallery, langs_status], **model_event
                )
                stop_paint.click(on_stop, None, paint_status, queue=False)

            # ------------------------------------------------------------------------------ board
            with gr.Tab("Board", id="board", elem_id="tab-board"):
                text, plots = server.board()
                gr.Markdown(text, elem_id="board-table")
                if plots:
                    gr.Gallery(plots, label="plots", columns=3, elem_id="board-plots")
    demo.queue(default_concurrency_limit=1, max_size=64)
    return demo


# ------------------------------------------------------------------------------------------------
# the command
# ------------------------------------------------------------------------------------------------
def serve(
    run_dir: str,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    max_new_tokens: int = 64,
    block: bool = True,
    printer: Callable[[str], None] = print,
) -> Any:
    """Load the run, start the app on ``host:port`` and print its URL; with ``block`` wait for Ctrl+C."""
    server = load_server(run_dir, max_new_tokens=max_new_tokens)
    demo = build_app(server)
    allowed = [str(server.root / "board")]
    demo.launch(
        server_name=host,
        server_port=port,
        share=False,
        inbrowser=False,
        prevent_thread_lock=True,
        quiet=True,
        show_error=False,
        allowed_paths=allowed,
        max_file_size=MAX_UPLOAD,
        ssr_mode=False,
        theme=_theme(),
        css=_CSS,
    )
    parts = [w for w, ok in (("chat", server.vlm), ("paint", server.pipeline)) if ok is not None] + ["board"]
    printer(f"mpm serve: {demo.local_url}  ({run_dir}: {', '.join(parts)}; Ctrl+C stops)")
    sys.stdout.flush()
    if block:
        try:
            demo.block_thread()
        except KeyboardInterrupt:
            pass
        finally:
            demo.close()
    return demo


def _serve(args: argparse.Namespace) -> int:
    from mpm.config import ConfigError
    from mpm.recipe import load_run_config

    try:
        load_run_config(Path(args.run_dir))  # checked before gradio and the models load
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be 0..65535, got {args.port}")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported
        import gradio  # noqa: F401
    except ImportError:
        print(
            "mpm serve: error: the web UI needs Gradio: pip install 'mpm-integration[serve]'",
            file=sys.stderr,
        )
        return 2
    except (ConfigError, ValueError) as err:
        print(f"mpm serve: error: {err}", file=sys.stderr)
        return 2
    serve(args.run_dir, host=args.host, port=args.port, max_new_tokens=args.max_new_tokens)
    return 0


def register(sub: Any) -> None:
    """Add ``mpm serve`` to the ``mpm`` command line."""
    s = sub.add_parser(
        "serve",
        help="a browser UI for a trained run: chat, paint and its board (Gradio, localhost)",
        description="Start a web UI for a run directory (written by mpm train / mpm demo): chat with images in "
        "any language, paint prompts, read the board. Binds to 127.0.0.1 unless --host says otherwise.",
    )
    s.add_argument("run_dir", metavar="RUN_DIR")
    s.add_argument(
        "--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)"
    )
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    s.add_argument("--max-new-tokens", type=int, default=64, help="default answer length in tokens")
    s.set_defaults(func=_serve)
