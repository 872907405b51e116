"""The app itself: the Compare page in a real browser, and the app process's memory.

What a user waits for and what the server holds, measured on the real thing: ``streamlit run
streamlit_app.py`` on a free local port, Debian's Chromium driven by Playwright, a workspace
with one completed run per registry model at its native input size (InceptionV3 299, the others
224; random weights, made as ``bench_explain.py`` makes them), and 512x512 phantom scans
uploaded through the page's own file dropzone.

- start: from opening the app's address to the Home page drawn, on a fresh server, against
  the same for a bare Streamlit page (one ``st.write``) started the same way;
- warm-up: the app starts loading the models the Compare page opens with once the first page is
  drawn (:mod:`kidney_lab.explain.preload`); the time from the Home page drawn until the
  server is idle again (its CPU time stops growing), as a user reads the Home page;
- cold: then, on the Compare page, from the first upload to the scan and its five overlays
  drawn in the browser (with ``--no-wait`` right after the Home page, the warm-up still busy);
- warm: the same for each further, different scan (``--repeats``, 5), median and spread;
  every scan is new to the page, so nothing comes from a cache of results;
- memory: the server process's resident set after the last Compare (``VmRSS``) and its peak
  over its whole life (``VmHWM``), from ``/proc/<pid>/status``.

Targets: warm upload to five overlays drawn under 1 s on two cores; the first upload at most 3
times the warm median; the app process under 2 GiB resident (peak) with the five models loaded
and a Compare done.

Run from the repository root (needs /usr/bin/chromium and the playwright package)::

    python bench/bench_app.py [--repeats 5] [--models all] [--no-wait] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import common  # Sets up the environment and sys.path; import before TensorFlow.

DEFAULT_JSON = common.REPO_ROOT / "bench" / "out" / "app.json"
CHROMIUM = Path("/usr/bin/chromium")
SCAN_SIZE = 512
TARGET_WARM_SECONDS = 1.0
TARGET_COLD_OVER_WARM = 3.0
TARGET_PEAK_MIB = 2048
OVERLAYS = "[data-testid='stMain'] [data-testid='stImage'] img"
SERVER_START_SECONDS = 120
COLD_TIMEOUT_SECONDS = 600
# The server counts as idle once its CPU time grows by less than this over IDLE_WINDOW_SECONDS,
# twice in a row.
IDLE_CPU_SECONDS = 0.05
IDLE_WINDOW_SECONDS = 1.0
BARE_TEXT = "A bare Streamlit page."
HOME_DRAWN = "[data-testid='stMain'] h1:has-text('kidney_lab')"
SCRIPT_DONE = "[data-testid='stApp'][data-test-script-state='notRunning']"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory of process ``pid`` now (``VmRSS``) and at its peak (``VmHWM``), in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024.0
    return {"rss_mib": fields["VmRSS"], "peak_rss_mib": fields["VmHWM"]}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) that process ``pid`` has used so far, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_until_idle(pid: int, timeout_s: float) -> float:
    """Wait until process ``pid`` stops using CPU (see :data:`IDLE_CPU_SECONDS`); seconds waited."""
    begun = time.perf_counter()
    quiet = 0
    used = cpu_seconds(pid)
    while quiet < 2 and time.perf_counter() - begun < timeout_s:
        time.sleep(IDLE_WINDOW_SECONDS)
        now = cpu_seconds(pid)
        quiet = quiet + 1 if now - used < IDLE_CPU_SECONDS else 0
        used = now
    return max(0.0, time.perf_counter() - begun - 2 * IDLE_WINDOW_SECONDS)


def open_and_time(browser, url: str, drawn: str) -> float:
    """Seconds from opening ``url`` in a fresh browser context (empty cache) until ``drawn`` is
    in the page and its script has finished."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    begun = time.perf_counter()
    page.goto(url)
    page.wait_for_selector(drawn, timeout=SERVER_START_SECONDS * 1000)
    page.wait_for_selector(SCRIPT_DONE, timeout=SERVER_START_SECONDS * 1000)
    seconds = time.perf_counter() - begun
    context.close()
    return seconds


def bare_page_seconds(browser, folder: Path) -> float:
    """:func:`open_and_time` for a bare Streamlit page (one ``st.write``) on its own server."""
    script = folder / "bare_app.py"
    script.write_text(f"import streamlit as st\n\nst.write({BARE_TEXT!r})\n")
    server, url = start_server(folder / "workspace", folder / "bare.log", script)
    try:
        return open_and_time(browser, url, f"text={BARE_TEXT}")
    finally:
        server.terminate()
        server.wait(timeout=30)


def start_server(workspace: Path, log: Path, script: Path = common.REPO_ROOT / "streamlit_app.py",
                 ) -> tuple[subprocess.Popen[bytes], str]:
    """``streamlit run SCRIPT`` (the app by default) on a free port for ``workspace``; returns it
    and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = dict(os.environ, KIDNEY_LAB_WORKSPACE=str(workspace), PYTHONPATH=str(common.REPO_ROOT))
    environment.pop("KIDNEY_LAB_DATA", None)
    with open(log, "wb") as output:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(script),
             "--server.port", str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
             "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"],
            cwd=common.REPO_ROOT, env=environment, stdout=output, stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + SERVER_START_SECONDS
    while True:
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return server, url
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise SystemExit(f"streamlit did not start; its log:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.25)


def upload_and_wait(page, scan: Path, expected_images: int, timeout_s: float) -> float:
    """Upload ``scan`` through the dropzone; seconds until its row's images are all drawn.

    The page shows one row per uploaded file: the scan and one overlay per model. The clock
    stops when that many images are in the page and every one has loaded.
    """
    begun = time.perf_counter()
    page.locator("[data-testid='stFileUploaderDropzoneInput']").set_input_files(str(scan))
    page.wait_for_function(
        "(expected) => { const images = Array.from(document.querySelectorAll("
        f"\"{OVERLAYS}\"));"
        " return images.length === expected && images.every(image => image.complete && image.naturalWidth > 0); }",
        arg=expected_images, timeout=timeout_s * 1000,
    )
    return time.perf_counter() - begun


def remove_uploads(page) -> None:
    """Remove every uploaded file from the dropzone and wait until the page shows no scan row."""
    buttons = page.locator("[data-testid='stFileChipDeleteBtn']")
    while buttons.count():
        buttons.first.click()
        page.wait_for_timeout(200)
    page.wait_for_function(f"() => document.querySelectorAll(\"{OVERLAYS}\").length === 0", timeout=60_000)
    page.wait_for_selector("[data-testid='stApp'][data-test-script-state='notRunning']", timeout=60_000)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="all", help="all (default) or comma-separated registry names")
    parser.add_argument("--repeats", type=int, default=5, help="warm uploads, each a new scan (5)")
    parser.add_argument("--no-wait", action="store_true",
                        help="upload right after the Home page is drawn, without waiting for the warm-up")
    parser.add_argument("--json", type=Path, metavar="FILE", default=DEFAULT_JSON,
                        help="also write the results as JSON to FILE (default bench/out/app.json)")
    arguments = parser.parse_args(argv)
    if arguments.repeats < 1:
        parser.error("--repeats must be at least 1")
    info = common.machine_info()
    print(common.format_header("The app: Compare page in Chromium, and the app process's memory", info))
    if not CHROMIUM.is_file():
        print(f"Skipped: {CHROMIUM} is absent; install it with `apt-get install -y chromium`.")
        common.write_json(arguments.json, {"benchmark": "app", "machine": info, "skipped": "no chromium"})
        return 0
    from playwright.sync_api import sync_playwright

    from bench_explain import make_runs
    from kidney_lab.data import phantom
    from kidney_lab.explain.render import to_png
    from kidney_lab.models import registry

    models = registry.parse_model_names(arguments.models)
    load_before = os.getloadavg()
    print(f"Load average before: {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-app-") as temporary:
        folder = Path(temporary)
        make_runs(models, None, folder / "workspace")
        scans = []
        for index in range(arguments.repeats + 1):
            label = ("Tumor", "Cyst", "Stone", "Normal")[index % 4]
            scans.append(folder / f"scan-{index}.png")
            scans[-1].write_bytes(to_png(phantom.make_phantom(label, size=SCAN_SIZE, seed=1, index=index).image))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                                 args=["--no-sandbox", "--disable-gpu"])
            bare = bare_page_seconds(browser, folder)
            print(f"start: a bare Streamlit page drawn {bare:.2f} s after opening it")
            server, url = start_server(folder / "workspace", folder / "streamlit.log")
            try:
                memory_start = memory_mib(server.pid)
                home = open_and_time(browser, url, HOME_DRAWN)
                print(f"start: the Home page drawn {home:.2f} s after opening it")
                waited = None
                if not arguments.no_wait:
                    waited = wait_until_idle(server.pid, COLD_TIMEOUT_SECONDS)
                    print(f"warm-up: the server was busy {waited:.1f} s more after the Home page")
                page = browser.new_page(viewport={"width": 1600, "height": 1000})
                page.goto(f"{url}/compare")
                page.wait_for_selector("[data-testid='stFileUploaderDropzoneInput']", state="attached",
                                       timeout=SERVER_START_SECONDS * 1000)
                expected = len(models) + 1
                cold = upload_and_wait(page, scans[0], expected, COLD_TIMEOUT_SECONDS)
                print(f"cold: first upload to {len(models)} overlays drawn: {cold:.2f} s")
                warm = []
                for scan in scans[1:]:
                    remove_uploads(page)
                    warm.append(upload_and_wait(page, scan, expected, 120))
                    print(f"warm: {scan.name}: {warm[-1]:.3f} s")
                text = page.inner_text("body")
                browser.close()
                memory = memory_mib(server.pid)
            finally:
                server.terminate()
                server.wait(timeout=30)
    if "Traceback" in text:
        raise SystemExit("the Compare page showed a traceback")
    median = statistics.median(warm)
    spread = (max(warm) - min(warm)) / median if median else 0.0
    met_time = median < TARGET_WARM_SECONDS
    cold_over_warm = cold / median if median else float("inf")
    met_cold = cold_over_warm <= TARGET_COLD_OVER_WARM
    met_memory = memory["peak_rss_mib"] < TARGET_PEAK_MIB
    print()
    print(common.format_table(("figure", "value"), [
        ("models (native sizes)", ", ".join(f"{name} {registry.get_spec(name).default_size}" for name in models)),
        ("start: bare Streamlit page drawn (s)", round(bare, 2)),
        ("start: Home page drawn (s)", round(home, 2)),
        ("warm-up: server busy after the Home page (s)", "not waited" if waited is None else round(waited, 1)),
        ("cold: first upload to overlays drawn (s)", round(cold, 2)),
        (f"warm: median of {len(warm)} new scans (s)", round(median, 3)),
        ("warm: spread (max-min)/median", round(spread, 2)),
        ("app process RSS at start (MiB)", round(memory_start["rss_mib"])),
        ("app process RSS after the last Compare (MiB)", round(memory["rss_mib"])),
        ("app process peak RSS (MiB)", round(memory["peak_rss_mib"])),
    ]))
    print(f"\nCompare page, upload to {len(models)} overlays drawn in Chromium, warm median {median:.3f} s: "
          f"{'met' if met_time else 'NOT met'} (target < {TARGET_WARM_SECONDS:g} s)")
    print(f"Cold start: first upload {cold:.2f} s = {cold_over_warm:.1f} x the warm median "
          f"({'right after the Home page' if waited is None else 'after the warm-up'}): "
          f"{'met' if met_cold else 'NOT met'} (target at most {TARGET_COLD_OVER_WARM:g} x)")
    print(f"Cold start: the Home page drawn in {home:.2f} s, a bare Streamlit page in {bare:.2f} s "
          f"({home / bare:.1f} x)")
    print(f"App process peak resident memory {memory['peak_rss_mib']:.0f} MiB: "
          f"{'met' if met_memory else 'NOT met'} (target < {TARGET_PEAK_MIB} MiB)")
    load_after = os.getloadavg()
    print(f"Load average after: {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    common.write_json(arguments.json, {
        "benchmark": "app", "machine": info, "models": models, "repeats": arguments.repeats,
        "bare_page_seconds": bare, "home_page_seconds": home, "warm_up_wait_seconds": waited,
        "cold_seconds": cold, "warm_seconds": warm, "warm_median_seconds": median,
        "cold_over_warm": cold_over_warm,
        "memory_start": memory_start, "memory_after": memory,
        "load_average": {"before": load_before, "after": load_after},
        "targets": {"warm_seconds": TARGET_WARM_SECONDS, "cold_over_warm": TARGET_COLD_OVER_WARM,
                    "peak_rss_mib": TARGET_PEAK_MIB},
        "met": {"warm_seconds": met_time, "cold_over_warm": met_cold, "peak_rss_mib": met_memory},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
