"""``mpm train``, ``mpm eval``, ``mpm chat`` and ``mpm paint``: train a recipe, then use the trained run.

    mpm train integration/configs/smoke.toml stages.align.steps=20    # or a preset name: mpm train smoke
    mpm eval outputs/smoke                                            # board of a trained run
    mpm chat outputs/smoke                                            # interactive, streamed, any language
    mpm chat outputs/smoke --image face.png --question "这是什么？"     # one shot
    mpm paint outputs/smoke "pomme rouge" -o apple.png

Every command checks its arguments (config keys, run directory, image files, output path) before it
loads a model; a problem is one line on stderr and exit status 2. ``chat`` and ``paint`` rebuild the
run's models from its ``config.toml`` and load the trained weights from its checkpoints
(safetensors only); a run without that component is refused with a clear message.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

__all__ = ["chat_session", "register"]

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")


def _fail(command: str, message: str) -> int:
    print(f"mpm {command}: error: {message}", file=sys.stderr)
    return 2


def _check_image(path: str) -> Any:
    """The image at ``path`` (RGB), or ValueError naming the file."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"image {path!r} does not exist")
    try:
        with Image.open(p) as im:
            im.load()
            if min(im.size) < 1:
                raise ValueError(f"image {path!r} is empty ({im.size[0]}x{im.size[1]})")
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"{path!r} is not a readable image ({err})") from None


# ------------------------------------------------------------------------------------------------
def _train(args: argparse.Namespace) -> int:
    from mpm.demo import run_cli

    return run_cli(args, evaluation=False)


def _eval(args: argparse.Namespace) -> int:
    from mpm.config import ConfigError
    from mpm.recipe import evaluate_run_dir

    try:
        evaluate_run_dir(args.run_dir, tuple(args.overrides))
    except ConfigError as err:
        return _fail("eval", str(err))
    return 0


# ------------------------------------------------------------------------------------------------
def _streamer(tokenizer: Any, out: IO[str]) -> Any:
    """A transformers ``TextStreamer`` that writes each piece of the answer to ``out`` as it is decoded."""
    from transformers import TextStreamer

    class Printer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return Printer(tokenizer, skip_prompt=True, skip_special_tokens=True)


HELP = "/image PATH attaches an image to the next question, /reset starts over, /quit ends"


def chat_session(
    vlm: Any,
    lines: Sequence[str] | IO[str],
    *,
    out: IO[str],
    images: Sequence[Any] = (),
    max_new_tokens: int = 32,
    stream: bool = True,
) -> list[str]:
    """A multi-turn conversation: each line is a question (any language) or a command; returns the answers.

    ``/image PATH`` attaches an image to the next question (several may be attached), ``/reset`` clears
    the history, ``/quit`` ends. Earlier images stay in the conversation (their vision states are
    cached by ``VisionLanguageModel.chat``). Answers are streamed to ``out`` token by token.
    """
    from mpm_vision import ChatHistory

    history = ChatHistory()
    pending = list(images)
    answers: list[str] = []
    prompt = "> " if not isinstance(lines, Sequence) else ""
    while True:
        if prompt:
            out.write(prompt)
            out.flush()
        line = lines.readline() if not isinstance(lines, Sequence) else (lines[0] if lines else "")
        if isinstance(lines, Sequence):
            lines = lines[1:]
            if not line and not lines:
                break
        elif not line:
            break
        text = line.strip()
        if not text:
            continue
        if text in ("/quit", "/exit"):
            break
        if text == "/reset":
            history, pending = ChatHistory(), []
            out.write("(history cleared)\n")
            continue
        if text.startswith("/image"):
            path = text.removeprefix("/image").strip()
            try:
                pending.append(_check_image(path))
                out.write(f"(image {path} attached to the next question)\n")
            except ValueError as err:
                out.write(f"(error: {err})\n")
            continue
        if text.startswith("/"):
            out.write(f"(unknown command {text.split()[0]}; {HELP})\n")
            continue
        kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": False}
        if stream:
            kwargs["streamer"] = _streamer(vlm.tokenizer, out)
        result = vlm.chat(pending or None, text, history, **kwargs)
        if not stream:
            out.write(result.answer + "\n")
        history, pending = result.history, []
        answers.append(result.answer)
    return answers


def _chat(args: argparse.Namespace) -> int:
    from mpm.config import ConfigError
    from mpm.recipe import load_run, load_run_config

    try:
        load_run_config(Path(args.run_dir))  # the run directory is checked before any model loads
        images = [_check_image(p) for p in args.image or []]
        if args.max_new_tokens < 1:
            raise ValueError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
        run = load_run(args.run_dir, need=("vlm",))
    except (ConfigError, ValueError) as err:
        return _fail("chat", str(err))
    if args.question is not None:
        chat_session(
            run.vlm,
            [args.question],
            out=sys.stdout,
            images=images,
            max_new_tokens=args.max_new_tokens,
            stream=not args.no_stream,
        )
        return 0
    print(f"mpm chat: {args.run_dir} ({run.label}). Ask in any language; {HELP}.", flush=True)
    chat_session(
        run.vlm,
        sys.stdin,
        out=sys.stdout,
        images=images,
        max_new_tokens=args.max_new_tokens,
        stream=not args.no_stream,
    )
    return 0


# ------------------------------------------------------------------------------------------------
def _paint(args: argparse.Namespace) -> int:
    from PIL import Image

    from mpm.config import ConfigError
    from mpm.recipe import load_run, load_run_config

    out = Path(args.output)
    try:
        cfg = load_run_config(Path(args.run_dir))
        if not args.prompt.strip():
            raise ValueError("the prompt is empty")
        if out.suffix.lower() not in _IMAGE_SUFFIXES:
            raise ValueError(f"-o {args.output!r}: use an image file name ({', '.join(_IMAGE_SUFFIXES)})")
        if not out.parent.is_dir():
            raise ValueError(f"-o {args.output!r}: directory {out.parent} does not exist")
        if args.steps < 1 or args.num_images < 1:
            raise ValueError("--steps and --num-images must be >= 1")
        if not math.isfinite(args.guidance) or args.guidance < 0:
            raise ValueError(f"--guidance must be a finite number >= 0, got {args.guidance}")
        if not cfg.stages_of("paint"):
            raise ConfigError(
                f"{args.run_dir}: this run has no paint model (no enabled stage with model = 'paint')"
            )
        run = load_run(args.run_dir, need=("paint",))
    except (ConfigError, ValueError) as err:
        return _fail("paint", str(err))
    size = run.config.paint.resolution or run.config.data.image_size
    images = run.paint_prompts(
        [args.prompt] * args.num_images,
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        seed=args.seed,
    )
    sheet = Image.new("RGB", (size * len(images), size), "white")
    for i, im in enumerate(images):
        sheet.paste(im, (i * size, 0))
    sheet.save(out)
    print(f"mpm paint: {len(images)} image(s) of {args.prompt!r} ({size}px, {args.steps} steps) -> {out}")
    return 0


# ------------------------------------------------------------------------------------------------
def register(sub: Any) -> None:
    """Add ``mpm train``, ``mpm eval``, ``mpm chat`` and ``mpm paint`` to the ``mpm`` command line."""
    from mpm.demo import add_run_arguments

    t = sub.add_parser(
        "train",
        help="run a recipe config's stages (resumes; --fresh starts over)",
        description="Train the stages of a recipe config: CONFIG is a preset name (smoke, default, full, ...) "
        "or a TOML file; key=value overrides follow. The resolved config goes into the run as config.toml.",
    )
    t.add_argument("config_pos", nargs="?", metavar="CONFIG", help="a preset name or a TOML file")
    add_run_arguments(t)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate a trained run in every language and write its board")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. eval.items=100 eval.split=train")
    e.set_defaults(func=_eval)

    c = sub.add_parser("chat", help="chat with a trained run: images, several turns, any language, streamed")
    c.add_argument("run_dir", metavar="RUN_DIR")
    c.add_argument("--image", action="append", help="an image for the first question (repeatable)")
    c.add_argument("--question", help="ask once and exit (one-shot use)")
    c.add_argument("--max-new-tokens", type=int, default=32)
    c.add_argument("--no-stream", action="store_true", help="print each answer when it is complete")
    c.set_defaults(func=_chat)

    p = sub.add_parser("paint", help="paint a prompt in any language with a trained run")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("prompt")
    p.add_argument("-o", "--output", required=True, help="the image file to write (.png, .jpg, ...)")
    p.add_argument("--steps", type=int, default=20, help="sampling steps")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1, help="images side by side in the output")
    p.set_defaults(func=_paint)
