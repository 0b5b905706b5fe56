"""Every page in headless Chromium against a real `streamlit run` server on 127.0.0.1.

Each test checks that the page shows no exception box and draws its main widgets, and saves a
full-page screenshot under its tmp_path. The browser is the Debian chromium package; these tests
never download one, and skip when /usr/bin/chromium is missing. All traffic stays on loopback.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.clustering import DEFAULT_K
from tests.app_data import PROJECT_ROOT, AppData, prepare_app_data

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SERVER_START_SECONDS = 60
PAGE_TIMEOUT_MS = 120_000  # a page that clusters or computes a map for the first time takes tens of seconds
VIEWPORT = {"width": 1440, "height": 1000}
MAX_SCREENSHOT_HEIGHT = 6000  # pixels

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} not found; install Debian's chromium package")

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect
expect.set_options(timeout=PAGE_TIMEOUT_MS)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(base_url: str, process: subprocess.Popen, log_path: Path) -> None:
    """Poll Streamlit's health endpoint until it returns 200, or fail with the server log."""
    # An empty ProxyHandler keeps urllib off any proxy from the environment, so the request stays on loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    deadline = time.monotonic() + SERVER_START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with status {process.returncode}:\n{log_path.read_text()}")
        try:
            with opener.open(f"{base_url}/_stcore/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    pytest.fail(f"streamlit health check timed out after {SERVER_START_SECONDS} s:\n{log_path.read_text()}")


@pytest.fixture(scope="module")
def app_data(tmp_path_factory: pytest.TempPathFactory) -> AppData:
    return prepare_app_data(tmp_path_factory)


@pytest.fixture(scope="module")
def server(app_data: AppData, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Run `streamlit run streamlit_app.py` on a free loopback port and return its base URL."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("streamlit-server") / "streamlit.log"
    command = [
        sys.executable, "-m", "streamlit", "run", "streamlit_app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
    ]
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env={**os.environ, **app_data.environment()},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base_url, process, log_path)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, tmp_path: Path):
    """Return a page in a fresh browser context; its last state is saved as tmp_path/at-teardown.png."""
    context = browser.new_context(viewport=VIEWPORT)
    page = context.new_page()
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    yield page
    # Shows where a failed test stopped.
    page.screenshot(path=str(tmp_path / "at-teardown.png"))
    context.close()


def wait_until_idle(page) -> None:
    """Wait until the script run has finished and no spinner is shown."""
    expect(page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]')).to_have_count(1)
    expect(page.get_by_test_id("stSpinner")).to_have_count(0)


def open_page(page, url: str, title: str) -> None:
    """Open a page and wait until its title is shown and its script run has finished."""
    page.goto(url)
    expect(page.get_by_role("heading", name=title, exact=True)).to_be_visible()
    wait_until_idle(page)


def widget(page, test_id: str, label: str):
    """Return the widget with this Streamlit test id whose label contains `label`."""
    return page.get_by_test_id(test_id).filter(has=page.get_by_text(label, exact=True)).first


def choose_writer(page, writer: str) -> None:
    """Search the writer dropdown for `writer` and click its option."""
    wait_until_idle(page)  # a rerun that is still drawing the page would clear the typed search
    dropdown = page.get_by_role("combobox", name="Writer", exact=True)
    # The option list opens below the dropdown. Near the bottom of the viewport it would lie
    # outside it, where no click reaches, so the dropdown is scrolled to the top first.
    dropdown.evaluate("element => element.scrollIntoView({block: 'start'})")
    dropdown.click()
    dropdown.press("Control+a")
    page.keyboard.type(writer)
    page.get_by_role("option", name=re.compile(f"^{re.escape(writer)} ")).click()
    expect(dropdown).to_have_value(re.compile(f"^{re.escape(writer)} · "))


def assert_no_exception(page) -> None:
    expect(page.locator('[data-testid="stException"]')).to_have_count(0)


def screenshot(page, tmp_path: Path, name: str) -> Path:
    """Save the whole page as tmp_path/<name>.png.

    Streamlit scrolls its main area inside a fixed-height frame, so a full-page screenshot contains
    only the viewport. The viewport is stretched to the content height first.
    """
    wait_until_idle(page)
    height = page.evaluate("document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"], "height": min(max(height, VIEWPORT["height"]), MAX_SCREENSHOT_HEIGHT)})
    page.wait_for_timeout(500)  # let the charts redraw at the new size
    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    page.set_viewport_size(VIEWPORT)
    return path


def test_direct_link_runs_main_script(server: str, page, tmp_path: Path) -> None:
    # The first request of the server process: a link to a page other than the default one
    # must still get the main script's sidebar.
    open_page(page, f"{server}/train", "Train")
    sidebar = page.get_by_test_id("stSidebar")
    expect(sidebar.get_by_text("Dataset", exact=True)).to_be_visible()
    expect(sidebar.get_by_role("link", name="Compare")).to_be_visible()
    assert_no_exception(page)
    screenshot(page, tmp_path, "direct-link")


def test_writers_page_in_browser(server: str, page, tmp_path: Path) -> None:
    open_page(page, f"{server}/", "Writers")
    expect(page.get_by_role("combobox", name="Writer", exact=True)).to_be_visible()
    expect(page.get_by_role("combobox", name="Sort writers by", exact=True)).to_be_visible()
    expect(page.get_by_test_id("stMetric")).to_have_count(4)
    expect(page.locator(".js-plotly-plot").first).to_be_visible()
    expect(page.get_by_test_id("stImage").first).to_be_visible()
    assert_no_exception(page)
    assert screenshot(page, tmp_path, "writers").stat().st_size > 0


def test_writers_dropdown_search_chooses_writer(server: str, page, app_data: AppData, tmp_path: Path) -> None:
    open_page(page, f"{server}/", "Writers")
    writer = app_data.complete_writer
    assert page.get_by_role("combobox", name="Writer", exact=True).input_value().split(" · ")[0] != writer
    choose_writer(page, writer)
    expect(page.get_by_text(re.compile(f"^Writer {writer} has"))).to_be_visible()
    expect(page.get_by_text("Missing cell:", exact=False)).to_have_count(0)
    assert_no_exception(page)
    screenshot(page, tmp_path, "writers-search")


def test_clusters_page_in_browser(server: str, page, tmp_path: Path) -> None:
    open_page(page, f"{server}/clusters", "Clusters")
    page.get_by_test_id("stButtonGroup").get_by_role("radio", name="3", exact=True).click()
    expect(page.get_by_text("Writers of digit 3")).to_be_visible()
    wait_until_idle(page)
    expect(widget(page, "stNumberInput", "Clusters per digit (k)")).to_be_visible()
    expect(page.locator(".js-plotly-plot")).to_have_count(2)
    expect(page.get_by_text(f"Cluster {DEFAULT_K - 1}", exact=True)).to_be_visible()
    assert_no_exception(page)
    screenshot(page, tmp_path, "clusters")


def test_clusters_map_click_chooses_writer(server: str, page, tmp_path: Path) -> None:
    open_page(page, f"{server}/clusters", "Clusters")
    page.get_by_test_id("stButtonGroup").get_by_role("radio", name="3", exact=True).click()
    expect(page.get_by_text("Writers of digit 3")).to_be_visible()
    wait_until_idle(page)
    writer_box = page.get_by_role("combobox", name="Writer", exact=True)
    before = writer_box.input_value()

    # The last point of the last cluster's trace is not the writer chosen by default (the first one).
    point = page.locator(".js-plotly-plot").first.locator(".scatterlayer .trace").nth(DEFAULT_K - 1).locator("path.point").last
    point.click(force=True)
    expect(writer_box).not_to_have_value(before)
    chosen = writer_box.input_value().split(" · ")[0]
    expect(page.get_by_text(f"Cluster of {chosen}")).to_be_visible()
    assert_no_exception(page)
    screenshot(page, tmp_path, "clusters-click")


def test_train_page_in_browser(server: str, page, tmp_path: Path) -> None:
    open_page(page, f"{server}/train", "Train")
    expect(page.get_by_role("combobox", name="Cluster", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Launch training")).to_be_visible()
    expect(page.get_by_role("heading", name="Jobs")).to_be_visible()
    expect(page.get_by_test_id("stDataFrame")).to_be_visible()
    assert_no_exception(page)
    screenshot(page, tmp_path, "train")


def test_compare_page_in_browser(server: str, page, app_data: AppData, tmp_path: Path) -> None:
    open_page(page, f"{server}/", "Writers")
    choose_writer(page, app_data.complete_writer)
    expect(page.get_by_text(re.compile(f"^Writer {app_data.complete_writer} has"))).to_be_visible()

    # The writer chosen on the Writers page is preselected on the Compare page.
    page.get_by_test_id("stSidebarNav").get_by_role("link", name="Compare").click()
    expect(page.get_by_role("heading", name="Compare", exact=True)).to_be_visible()
    expect(page.get_by_role("combobox", name="Writer", exact=True)).to_have_value(re.compile(f"^{app_data.complete_writer} "))

    choose_writer(page, app_data.sparse_writer)
    expect(page.get_by_role("heading", name=f"Real digits of writer {app_data.sparse_writer}")).to_be_visible()
    wait_until_idle(page)
    page.get_by_test_id("stButtonGroup").get_by_role("radio", name=str(app_data.trained_digit), exact=True).click()
    expect(page.get_by_text(f"Generated X({app_data.sparse_writer}, {app_data.trained_digit})")).to_be_visible()
    expect(page.get_by_text("Hide this cell from the method")).to_be_visible()
    expect(page.get_by_test_id("stDownloadButton")).to_have_count(2)
    expect(page.locator(".js-plotly-plot")).to_have_count(2)
    expect(page.get_by_test_id("stSpinner")).to_have_count(0)
    assert_no_exception(page)
    screenshot(page, tmp_path, "compare")
