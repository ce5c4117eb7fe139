"""The registry browser in a real headless Chromium (Debian's package, driven by selenium):
open ``/``, follow links to a leaderboard and to the "try it" form, submit a history
and read the ranked list the page renders."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi, uvicorn, jinja2) is not installed")
pytest.importorskip("selenium", reason="selenium (serve extra) is not installed")

from test_server import library, served_registry, server  # noqa: E402,F401  (shared fixtures)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600"]


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="xreg-chromium-")
    for flag in [*FLAGS, f"--user-data-dir={profile}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(180)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def _image_loaded(driver, element_id: str) -> bool:
    return driver.execute_script(
        "const i = document.getElementById(arguments[0]); return i.complete && i.naturalWidth > 0;",
        element_id)


@pytest.mark.slow
def test_browse_to_a_leaderboard_and_try_a_history(browser, server, library, tmp_path: Path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    from xcross_registry import serving

    wait = WebDriverWait(browser, 180)
    browser.get(server.base + "/")
    assert browser.title == "registry · xreg"
    domains = browser.find_element(By.ID, "domains")
    assert "kitchen" in domains.text and "<script>alert('x')</script> & co" in domains.text

    domains.find_element(By.LINK_TEXT, "kitchen").click()
    board = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "table.board")))
    subjects = [row.find_elements(By.TAG_NAME, "td")[0].text
                for row in board.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert set(subjects) == {"kitchen-x", "kitchen@v1", "popularity:kitchen"}
    wait.until(lambda driver: _image_loaded(driver, "board-plot") and _image_loaded(driver, "efficiency-plot"))
    browser.save_screenshot(str(tmp_path / "leaderboard.png"))

    browser.find_element(By.XPATH, "//a[@href='/try/kitchen-x']").click()
    form = wait.until(ready.presence_of_element_located((By.ID, "try-form")))
    model = library["kitchen-x"]
    history = [model.data.items[i].title for i in (4, 17, 30)]
    textarea = form.find_element(By.ID, "history")
    textarea.clear()
    textarea.send_keys("\n".join(history))
    top = form.find_element(By.ID, "top_k")
    top.clear()
    top.send_keys("5")
    form.find_element(By.ID, "submit").click()
    ranked = wait.until(ready.presence_of_element_located((By.ID, "ranked")))
    titles = [item.find_element(By.CLASS_NAME, "title").text for item in ranked.find_elements(By.TAG_NAME, "li")]
    assert titles == [r.title for r in serving.recommend(model, history, top=5)]
    assert browser.find_element(By.ID, "history").get_attribute("value") == "\n".join(history)
    screenshot = tmp_path / "try-it.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
