"""Fixtures of the app tests: AppTest runs of a page, a real ``streamlit run`` server, a browser.

The server and the browser are started once per session and shared, so later pages (Compare)
add tests, not start-up time. Screenshots of the browser tests go to a temporary folder, and
also to ``$KIDNEY_LAB_SCREENSHOTS`` when it is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import pytest

from kidney_lab.explain import preload
from kidney_lab.training import jobs

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_FILE = REPO_ROOT / "streamlit_app.py"
CHROMIUM = Path("/usr/bin/chromium")
# Seconds an AppTest run may take: the Train page imports TensorFlow on its first run.
APP_TIMEOUT = 180
SERVER_START_SECONDS = 90


@pytest.fixture(autouse=True)
def no_job_left_behind() -> Iterator[None]:
    """Kill any job a test started and left running, so no test leaves training behind."""
    yield
    for process, _folder in list(jobs._children.values()):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, 9)
            process.wait()
    jobs._children.clear()


@pytest.fixture
def open_app(monkeypatch: pytest.MonkeyPatch) -> Callable[..., object]:
    """Run the app on a page with AppTest: ``open_app(workspace, page=..., data=...)``.

    The workspace and dataset folder are given through the environment, as for a real app.
    ``page`` is a script path such as ``"pages/train.py"``; the Home page by default. The
    background warm-up of the Compare models is off, so no test's models load behind its back.
    """
    from streamlit.testing.v1 import AppTest

    def open_page(workspace: Path, page: str | None = None, data: Path | None = None) -> AppTest:
        monkeypatch.setenv("KIDNEY_LAB_WORKSPACE", str(workspace))
        monkeypatch.setenv(preload.WARM_UP_VARIABLE, "0")
        if data is None:
            monkeypatch.delenv("KIDNEY_LAB_DATA", raising=False)
        else:
            monkeypatch.setenv("KIDNEY_LAB_DATA", str(data))
        app = AppTest.from_file(str(APP_FILE), default_timeout=APP_TIMEOUT).run()
        if page is not None:
            app.switch_page(page).run()
        return app

    return open_page


# A real server and a real browser -------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.fixture(scope="session")
def app_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., str]]:
    """Start ``streamlit run streamlit_app.py`` for a workspace: ``app_server(workspace, data=None)``.

    Returns the server's base URL. One server per (workspace, data) pair, started on a free
    port on first use and stopped at the end of the session; its output goes to a log file
    whose end is shown if it does not become healthy.
    """
    servers: dict[tuple[str, str], tuple[subprocess.Popen[bytes], str]] = {}
    logs = tmp_path_factory.mktemp("streamlit-logs")

    def start(workspace: Path, data: Path | None = None) -> str:
        key = (str(workspace), str(data or ""))
        if key in servers:
            return servers[key][1]
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        environment = {**os.environ, "KIDNEY_LAB_WORKSPACE": str(workspace), "PYTHONPATH": str(REPO_ROOT)}
        environment.pop("KIDNEY_LAB_DATA", None)
        if data is not None:
            environment["KIDNEY_LAB_DATA"] = str(data)
        log_path = logs / f"server-{port}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", str(APP_FILE), "--server.port", str(port),
                 "--server.address", "127.0.0.1", "--server.headless", "true",
                 "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
                cwd=REPO_ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        servers[key] = (process, url)
        deadline = time.monotonic() + SERVER_START_SECONDS
        while not _healthy(url):
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise AssertionError(f"streamlit did not become healthy at {url}:\n{tail}")
            time.sleep(0.25)
        return url

    yield start
    for process, _url in servers.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    """Debian's Chromium driven by Playwright; skipped (with the reason) where it is absent."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent; install it with `apt-get install -y chromium` (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[object, str], Path]:
    """Save a full-page screenshot: ``screenshots(page, "home-empty")`` returns its path."""
    folder = tmp_path_factory.mktemp("screenshots")
    extra = os.environ.get("KIDNEY_LAB_SCREENSHOTS", "").strip()

    def save(page, name: str) -> Path:
        path = folder / f"{name}.png"
        # The app scrolls inside its main container, not the document, so a full-page shot
        # needs a window as tall as that container's content.
        height = page.evaluate(
            "() => Math.max(...[...document.querySelectorAll("
            "'[data-testid=stMain], [data-testid=stSidebarContent]')].map(e => e.scrollHeight))"
        )
        page.set_viewport_size({"width": page.viewport_size["width"], "height": max(600, int(height) + 40)})
        page.wait_for_timeout(1500)
        page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']")
        page.screenshot(path=str(path), full_page=True)
        if extra:
            Path(extra).mkdir(parents=True, exist_ok=True)
            shutil.copy(path, Path(extra) / path.name)
        return path

    return save
