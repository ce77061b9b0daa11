"""`mpm serve` in a real browser: headless Chromium (Selenium) against the app on a tiny smoke run on 127.0.0.1.

Chats about an uploaded image and reads the streamed answer, paints a prompt and checks the image's size,
uploads a corrupt and an empty file and reads the messages, and saves a screenshot of each tab under the
test's tmp dir. Needs the serve extra (Gradio), selenium and Chromium with chromedriver (Debian:
`apt-get install chromium chromium-driver`; .ci/run installs them); skipped only when those are missing.
The UI is driven by the functions of tools/serve_screenshots.py (the README's screenshots use them too).
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.browser

pytest.importorskip("gradio", reason="mpm serve needs the serve extra: pip install 'mpm-integration[serve]'")
pytest.importorskip("selenium", reason="the browser tests need selenium (the serve extra's test dependency)")

ROOT = Path(__file__).resolve().parents[1]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "serve_screenshots", ROOT / "tools" / "serve_screenshots.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ui = _tool()
_browser, _driver = ui.find_browser()
if _browser is None or _driver is None:
    pytest.skip(
        "no Chromium/chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)",
        allow_module_level=True,
    )

PAINT_SIZE = 16  # the smoke preset's data.image_size (paint.resolution unset)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A smoke run with its board (the evaluation cut to classification: the fastest board)."""
    import torch

    from mpm.cli import main

    out = tmp_path_factory.mktemp("serve") / "run"
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    rc = main(
        [
            "demo",
            "--preset",
            "smoke",
            f"run.out_dir={out}",
            "run.progress=false",
            "eval.caption=false",
            "eval.paint_items=0",
        ]
    )
    torch.set_num_threads(threads)
    assert rc == 0
    print(f"\nsmoke run for mpm serve: {time.perf_counter() - t0:.1f} s")
    assert (out / "board" / "leaderboard.md").is_file()
    return out


@pytest.fixture(scope="module")
def page(run_dir: Path) -> Iterator[Any]:
    """Chromium with the app open (the server is a `mpm serve` subprocess)."""
    t0 = time.perf_counter()
    with ui.running_server(run_dir) as url, ui.chromium() as driver:
        assert url.startswith("http://127.0.0.1:")
        ui.open_app(driver, url)
        print(f"\nmpm serve up and page loaded: {time.perf_counter() - t0:.1f} s")
        yield driver


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


def _is_png_of_window(path: Path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= 800 and im.height >= 600


def _sample(run_dir: Path, tmp: Path) -> tuple[Path, dict[str, str]]:
    image, names = ui.sample_image(run_dir, tmp / "emoji.png")
    return Path(image), names


def test_chat_answers_about_an_uploaded_image_streamed(
    page: Any, run_dir: Path, shots: Path, tmp_path: Path
) -> None:
    image, _ = _sample(run_dir, tmp_path)
    status, seen = ui.ask(page, "What is this?", [image])
    assert status.startswith("Done:"), status
    assert "1 image(s) in this conversation" in status
    assert seen and seen[-1], "no answer text appeared in the conversation"
    # a second turn in another language: the image stays in the conversation (its vision state cached)
    status, seen = ui.ask(page, "这是什么？")
    assert status.startswith("Done:") and "1 image(s) in this conversation" in status, status
    assert len(ui.bot_messages(page)) == 2
    path = ui.screenshot(page, "chat", shots / "chat.png")
    _is_png_of_window(path)


def test_a_corrupt_or_empty_upload_shows_a_message(page: Any, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 8)
    status, _ = ui.ask(page, "and this?", [broken])
    assert status.startswith("⚠ broken.png is not an image mpm can read"), status
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    status, _ = ui.ask(page, "and this?", [empty])
    assert status.startswith("⚠ empty.jpg is empty (0 bytes)"), status
    assert "Traceback" not in page.page_source


def test_paint_returns_an_image_of_the_run_size(
    page: Any, run_dir: Path, shots: Path, tmp_path: Path
) -> None:
    status, size = ui.paint(page, "roter Apfel", steps=3)
    assert status.startswith(f"Done: {PAINT_SIZE}x{PAINT_SIZE} px, 3 steps"), status
    assert size == (PAINT_SIZE, PAINT_SIZE)
    status, n = ui.paint_languages(page)
    assert status.startswith("Done: 3 image(s)"), status  # the smoke run's three languages
    assert n == 3
    _is_png_of_window(ui.screenshot(page, "paint", shots / "paint.png"))


def test_board_tab_shows_the_leaderboard(page: Any, shots: Path) -> None:
    path = ui.screenshot(page, "board", shots / "board.png")
    table = ui.text_of(page, "board-table")
    assert "classification" in table and "mpm-tiny-llama" in table and "random" in table
    _is_png_of_window(path)
