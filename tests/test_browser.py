"""The registry browser in a real headless Chromium (Debian's package, driven by selenium).

One walk on a 390 px phone screen, clicking links only: index → domain → adapter → its
run → a composition that uses it → a board → a paired comparison → item search → a
"try it" result by URL → the API docs.  Every page: its key content, no console error,
no element wider than the screen outside a scrolling frame, and no request leaving
127.0.0.1.  A second test uses the desktop size: plots and the "try it" form."""

from __future__ import annotations

import json
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
PHONE = {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True}

# Elements past the right edge of the screen that are not inside a frame that scrolls
# (tables and plots scroll inside theirs); [screen width, page width, offenders].
TOO_WIDE = """
const screen = document.documentElement.clientWidth, offenders = [];
function framed(element) {
  for (let p = element.parentElement; p && p !== document.body; p = p.parentElement) {
    if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(p).overflowX)) return true;
  }
  return false;
}
for (const element of document.querySelectorAll('body *')) {
  const box = element.getBoundingClientRect();
  if (box.width > 0 && (box.right > screen + 1 || box.left < -1) && !framed(element)) {
    offenders.push(element.tagName + '.' + element.className + ' to ' + Math.round(box.right) + 'px');
  }
}
return [screen, document.documentElement.scrollWidth, offenders.slice(0, 8)];
"""


@pytest.fixture
def browser():
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium is not installed: apt-get install chromium chromium-driver "
                    "(.ci/run does this)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
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


class Walk:
    """Follows links in the browser and checks each page it lands on."""

    def __init__(self, driver, base: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver, self.base = driver, base
        self.wait = WebDriverWait(driver, 180)
        self.requested: list[str] = []

    def click(self, link, heading: str | None, phone: bool = True) -> None:
        """Click ``link`` and wait for a page whose h1 starts with ``heading`` (None: a
        page without one)."""
        from selenium.webdriver.common.by import By

        old = self.driver.find_element(By.TAG_NAME, "html")
        self.driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", link)
        link.click()
        self.wait.until(lambda d: d.find_element(By.TAG_NAME, "html") != old)
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")
        self.check(heading, phone)

    def check(self, heading: str | None, phone: bool = True) -> None:
        from selenium.webdriver.common.by import By

        if heading is not None:
            title = self.driver.find_element(By.TAG_NAME, "h1").text
            assert title.startswith(heading), (title, self.driver.current_url)
        errors = [entry for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
        assert not errors, errors
        if phone:
            screen, page, offenders = self.driver.execute_script(TOO_WIDE)
            assert screen == 390 and page <= 390 and not offenders, (self.driver.current_url, page, offenders)
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                self.requested.append(message["params"]["request"]["url"])

    def link(self, css: str, text: str | None = None):
        from selenium.webdriver.common.by import By

        links = self.driver.find_elements(By.CSS_SELECTOR, css)
        chosen = [a for a in links if text is None or a.text == text]
        assert chosen, (css, text, [a.text for a in links])
        return chosen[0]


@pytest.mark.slow
def test_walk_every_kind_of_page_by_links_on_a_phone(browser, server, library, served_registry,
                                                     monkeypatch):
    from selenium.webdriver.common.by import By

    from xcross_registry import serving
    from xcross_registry.evaluation import compare
    from xcross_registry.registry import Registry

    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", PHONE)
    walk = Walk(browser, server.base)
    browser.get(server.base + "/")
    walk.check("Domains")
    assert "<script>alert('x')</script> & co" in browser.find_element(By.ID, "domains").text

    walk.click(walk.link("#domains a", "toys"), "Domain toys")
    walk.click(walk.link("#versions a", "toys@v1"), "Adapter toys@v1")
    assert "xreg export toys@v1 DIR" in browser.find_element(By.ID, "export").text

    walk.click(walk.link("a.base"), "Search models")  # models on the same base model
    hits = [row.find_elements(By.TAG_NAME, "td")[0].text
            for row in browser.find_elements(By.CSS_SELECTOR, "#hits tbody tr")]
    assert {"toys@v1", "tools@v1", "tools@v2", "kitchen@v1", "kitchen-x"} <= set(hits)

    walk.click(walk.link("#hits a", "toys@v1"), "Adapter toys@v1")
    walk.click(walk.link("#run-link"), "Run of toys@v1")
    record = browser.find_element(By.ID, "run-record").text
    assert "stop reason completed" in record and "examples seen" in record

    walk.click(walk.link("main p a", "toys@v1"), "Adapter toys@v1")
    walk.click(walk.link("#used-by a", "kitchen-x"), "Composition kitchen-x")
    lineage = browser.find_element(By.ID, "lineage").text
    assert "source 1: toys@v1" in lineage and "source 2: tools@v1" in lineage
    walk.wait.until(lambda driver: _image_loaded(driver, "integration-plot"))

    walk.click(walk.link("#results a", None), "Domain kitchen")  # the board of its test result
    board = browser.find_element(By.CSS_SELECTOR, "table.board")
    rows = {row.find_elements(By.TAG_NAME, "td")[0].text: row
            for row in board.find_elements(By.CSS_SELECTOR, "tbody tr")}
    assert set(rows) == {"kitchen-x", "kitchen@v1", "popularity:kitchen"}
    leader = next(iter(rows))
    other = next(name for name in rows if name != leader)
    assert "–" in rows[other].find_elements(By.TAG_NAME, "td")[7].text  # hit@1 with its interval

    walk.click(rows[other].find_element(By.PARTIAL_LINK_TEXT, "vs "), "Compare two results")
    monkeypatch.setenv("XREG_HOME", str(served_registry))
    expected = compare(Registry(), "kitchen", leader, other)
    differences = {row.find_elements(By.TAG_NAME, "td")[0].text: row.find_elements(By.TAG_NAME, "td")[1].text
                   for row in browser.find_elements(By.CSS_SELECTOR, "#differences tbody tr")}
    assert differences == {name: f"{d['difference']:+.4f}" for name, d in expected["differences"].items()}

    walk.click(walk.link("main p a", "kitchen"), "Domain kitchen")
    walk.click(walk.link("#items-link"), "Items of kitchen")
    model = library["kitchen-x"]
    first = model.data.items[0]
    assert browser.find_element(By.CSS_SELECTOR, "#items tbody tr td").text == first.id

    walk.click(walk.link("#items a.try", "kitchen-x"), "Try kitchen-x")
    assert "history=" in browser.current_url  # the result has a URL to share
    titles = [li.find_element(By.CLASS_NAME, "title").text
              for li in browser.find_elements(By.CSS_SELECTOR, "#ranked li")]
    assert titles == [r.title for r in serving.recommend(model, [first.title], top=10)]
    assert "title" in browser.find_element(By.ID, "matches").text

    walk.click(walk.link("header nav a", "API docs"), None, phone=False)
    walk.wait.until(lambda driver: driver.find_elements(By.CSS_SELECTOR, ".opblock"))
    walk.check(None, phone=False)
    # Network requests only (chrome:// is the browser's own start page).
    outside = [url for url in walk.requested
               if url.startswith(("http:", "https:", "ws:", "wss:")) and not url.startswith(server.base + "/")]
    assert not outside, outside
    assert any(url.endswith("/static/docs/swagger-ui-bundle.js") for url in walk.requested)


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
    assert "/try/kitchen-x?history=" in browser.current_url
    screenshot = tmp_path / "try-it.png"
    assert browser.save_screenshot(str(screenshot))
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
