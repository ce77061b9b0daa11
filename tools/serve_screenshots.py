"""Screenshots of `mpm serve` for the README: start it on a run, drive headless Chromium, save one PNG a tab.

    python tools/serve_screenshots.py outputs/default --out docs
    # -> docs/serve-chat.png, docs/serve-paint.png, docs/serve-board.png

The chat tab gets one image of the run's evaluation split (or --image) and --question; the paint tab paints
--prompt and the first EmojiCap concept in every language of the run. Needs `mpm-integration[serve]`,
selenium, and Chromium with its driver (Debian: `apt-get install chromium chromium-driver`).

The functions here are also what tests/test_serve_browser.py drives the UI with.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
FINAL = ("Done", "Stopped", "⚠")
"""How the status lines of the app start when a request has finished."""
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)


def find_browser() -> tuple[str | None, str | None]:
    """``(chromium, chromedriver)`` paths on PATH (or ``$MPM_CHROMIUM`` / ``$MPM_CHROMEDRIVER``); ``None`` if absent."""
    browser = os.environ.get("MPM_CHROMIUM") or next(filter(None, map(shutil.which, CHROMIUM_NAMES)), None)
    driver = os.environ.get("MPM_CHROMEDRIVER") or next(filter(None, map(shutil.which, DRIVER_NAMES)), None)
    return browser, driver


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(run_dir: Path, *, port: int | None = None, timeout_s: float = 120.0) -> Iterator[str]:
    """``mpm serve RUN_DIR`` in a subprocess on 127.0.0.1; yields its URL (read from the line it prints)."""
    port = port or free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    log = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mpm.cli", "serve", str(run_dir), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        url = None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break  # the process ended
            if line.startswith("mpm serve: http"):
                url = line.split()[2]
                break
        if url is None:
            log.seek(0)
            raise RuntimeError(f"mpm serve did not start (exit {proc.poll()}):\n{log.read()[-4000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@contextmanager
def chromium(width: int = 1280, height: int = 1000) -> Iterator[Any]:
    """A headless Chromium driven by Selenium, with a fresh profile (removed afterwards)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    if browser is None or driver_path is None:
        raise RuntimeError("no Chromium/chromedriver found: apt-get install chromium chromium-driver")
    profile = tempfile.mkdtemp(prefix="mpm-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--window-size={width},{height}", f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


# ------------------------------------------------------------------------------------------------
# driving the UI (element ids are set in mpm/serve.py)
# ------------------------------------------------------------------------------------------------
def _wait(driver: Any, timeout_s: float) -> Any:
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    ignored = (NoSuchElementException, StaleElementReferenceException)  # Gradio re-renders as it streams
    return WebDriverWait(driver, timeout_s, poll_frequency=0.1, ignored_exceptions=ignored)


def open_app(driver: Any, url: str, timeout_s: float = 120.0) -> None:
    """Load the app and wait until its tabs are there."""
    from selenium.webdriver.common.by import By

    driver.get(url)
    _wait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#tab-board-button"))


def select_tab(driver: Any, tab: str, timeout_s: float = 30.0) -> None:
    """Click the tab ``chat``, ``paint`` or ``board`` and wait until it is shown."""
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, f"tab-{tab}-button").click()
    _wait(driver, timeout_s).until(lambda d: d.find_element(By.ID, f"tab-{tab}").is_displayed())


def text_of(driver: Any, elem_id: str) -> str:
    """The visible text of the element ``elem_id`` (read in one script: streaming re-renders elements)."""
    text = driver.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.innerText : '';", elem_id
    )
    return str(text or "").strip()


_WATCH = """
const el = document.getElementById(arguments[0]);
window.__mpmChanged = window.__mpmChanged || {};
window.__mpmChanged[arguments[0]] = false;
if (window.__mpmObserver && window.__mpmObserver[arguments[0]]) window.__mpmObserver[arguments[0]].disconnect();
window.__mpmObserver = window.__mpmObserver || {};
const ob = new MutationObserver(() => { window.__mpmChanged[arguments[0]] = true; });
ob.observe(el, {subtree: true, childList: true, characterData: true});
window.__mpmObserver[arguments[0]] = ob;
"""


def watch(driver: Any, elem_id: str) -> None:
    """Start noticing changes of the element ``elem_id`` (the app clears a status line on each request)."""
    driver.execute_script(_WATCH, elem_id)


def changed(driver: Any, elem_id: str) -> bool:
    """Whether ``elem_id`` changed since :func:`watch`."""
    return bool(driver.execute_script("return !!(window.__mpmChanged || {})[arguments[0]];", elem_id))


def wait_status(driver: Any, elem_id: str, timeout_s: float, *, starts: tuple[str, ...] = FINAL) -> str:
    """After :func:`watch`: wait until the status line ``elem_id`` changed and starts with one of ``starts``."""
    _wait(driver, timeout_s).until(lambda d: changed(d, elem_id) and text_of(d, elem_id).startswith(starts))
    return text_of(driver, elem_id)


def bot_messages(driver: Any) -> list[str]:
    """The texts of the model's messages in the conversation, oldest first."""
    texts = driver.execute_script(
        "return Array.from(document.querySelectorAll('#chat-log .message.bot')).map(e => e.innerText.trim());"
    )
    return [str(t) for t in texts or []]


def ask(
    driver: Any, question: str, images: Sequence[Path] = (), timeout_s: float = 120.0
) -> tuple[str, list[str]]:
    """Attach ``images``, type ``question``, press Enter; returns the status line and every text the
    latest answer showed while it streamed (the last one is the answer)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    select_tab(driver, "chat")
    thumbs = "#chat-input .thumbnail-item"
    if images:
        n = len(driver.find_elements(By.CSS_SELECTOR, thumbs))
        upload = driver.find_element(By.CSS_SELECTOR, "#chat-input input[type=file]")
        # chromedriver adds to the files already chosen in a `multiple` input: start from none
        driver.execute_script("arguments[0].value = '';", upload)
        upload.send_keys("\n".join(str(Path(p).resolve()) for p in images))
        _wait(driver, timeout_s).until(
            lambda d: len(d.find_elements(By.CSS_SELECTOR, thumbs)) >= n + len(images)
        )
    n_before = len(bot_messages(driver))
    box = driver.find_element(By.CSS_SELECTOR, "#chat-input textarea")
    box.clear()
    box.send_keys(question)
    watch(driver, "chat-status")
    box.send_keys(Keys.ENTER)
    seen: list[str] = []

    def finished(d: Any) -> bool:
        msgs = bot_messages(d)
        if len(msgs) > n_before and msgs[-1] and (not seen or seen[-1] != msgs[-1]):
            seen.append(msgs[-1])
        return changed(d, "chat-status") and text_of(d, "chat-status").startswith(FINAL)

    _wait(driver, timeout_s).until(finished)
    msgs = bot_messages(driver)
    if len(msgs) > n_before and (not seen or seen[-1] != msgs[-1]):
        seen.append(msgs[-1])
    return text_of(driver, "chat-status"), seen


def paint(
    driver: Any, prompt: str, *, steps: int | None = None, timeout_s: float = 120.0
) -> tuple[str, tuple[int, int]]:
    """Paint ``prompt`` in the paint tab; returns the status line and the image's natural size."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    select_tab(driver, "paint")
    box = driver.find_element(By.CSS_SELECTOR, "#paint-prompt textarea")
    box.clear()
    box.send_keys(prompt)
    if steps is not None:
        field = driver.find_element(By.CSS_SELECTOR, "#paint-steps input[type=number]")
        field.clear()
        field.send_keys(str(steps), Keys.TAB)
    watch(driver, "paint-status")
    driver.find_element(By.ID, "paint-run").click()
    status = wait_status(driver, "paint-status", timeout_s)
    size = (0, 0)
    if status.startswith("Done"):

        def loaded(d: Any) -> Any:
            imgs = d.find_elements(By.CSS_SELECTOR, "#paint-image img")
            ok = imgs and d.execute_script(
                "return arguments[0].complete && arguments[0].naturalWidth", imgs[0]
            )
            return imgs[0] if ok else False

        img = _wait(driver, timeout_s).until(loaded)
        w, h = driver.execute_script("return [arguments[0].naturalWidth, arguments[0].naturalHeight]", img)
        size = (int(w), int(h))
    return status, size


def paint_languages(driver: Any, *, timeout_s: float = 120.0) -> tuple[str, int]:
    """Paint the side-by-side prompts as they stand; returns the status and the number of images shown."""
    from selenium.webdriver.common.by import By

    select_tab(driver, "paint")
    watch(driver, "paint-langs-status")
    driver.find_element(By.ID, "paint-langs-run").click()
    status = wait_status(driver, "paint-langs-status", timeout_s)
    n = 0
    if status.startswith("Done"):
        n = len(
            _wait(driver, timeout_s).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#paint-gallery img"))
        )
    return status, n


def screenshot(driver: Any, tab: str, path: Path) -> Path:
    """Select ``tab`` and save the page as a PNG at ``path``."""
    select_tab(driver, tab)
    path.parent.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(path))
    return path


def sample_image(run_dir: Path, out: Path) -> tuple[Path, dict[str, str]]:
    """One image of the run's evaluation split, saved as PNG (upscaled to 128 px), and its names."""
    from PIL import Image

    from mpm.recipe import load_run_config
    from mpm_bench import load_emojicap

    cfg = load_run_config(run_dir)
    (ex,) = load_emojicap(cfg.data_root, cfg.eval.split, langs=list(cfg.run.langs), limit=1)
    im = ex.image.convert("RGB")
    if im.width < 128:
        im = im.resize((128, 128), Image.Resampling.NEAREST)
    im.save(out)
    return out, dict(ex.names)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", type=Path, default=Path("docs"), help="folder for serve-{chat,paint,board}.png")
    p.add_argument(
        "--image", type=Path, help="the image to chat about (default: one of the run's eval split)"
    )
    p.add_argument("--question", default="What is this?")
    p.add_argument("--question2", default="这是什么？", help="a second turn, in another language ('' skips)")
    p.add_argument(
        "--prompt", help="the paint prompt (default: the sample image's name in the run's 2nd language)"
    )
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1000)
    args = p.parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    with tempfile.TemporaryDirectory() as tmp:
        image, names = args.image, {}
        if image is None:
            image, names = sample_image(args.run_dir, Path(tmp) / "sample.png")
        prompt = args.prompt or next((v for k, v in names.items() if k != "en"), None) or "a red apple"
        with running_server(args.run_dir) as url, chromium(args.width, args.height) as driver:
            print(f"serve_screenshots: {url}")
            open_app(driver, url)
            status, _ = ask(driver, args.question, [image])
            print(f"  chat: {status}")
            if args.question2:
                status, _ = ask(driver, args.question2)
                print(f"  chat: {status}")
            print(f"  chat -> {screenshot(driver, 'chat', args.out / 'serve-chat.png')}")
            status, size = paint(driver, prompt)
            print(f"  paint {prompt!r}: {status} {size}")
            status, n = paint_languages(driver)
            print(f"  paint side by side: {status} ({n} images)")
            print(f"  paint -> {screenshot(driver, 'paint', args.out / 'serve-paint.png')}")
            print(f"  board -> {screenshot(driver, 'board', args.out / 'serve-board.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
