"""A real browser watches ``memrope serve``: Debian's chromium, driven by selenium through chromedriver.

The page is opened, a stream is started, at least 2 s of it play through Media Source (the video
element's clock advances, the frames it shows are not blank), a new prompt is typed and cut to, and
both the statistics (the prompt, the switch) and the frames themselves (the toy world's background
changes from a navy gradient to a grey checker) show the switch.

``scripts/install-test-deps.sh`` installs chromium and its driver (CI runs it); without them the test
skips and says so. ``MEMROPE_SCREENSHOT=docs/serve.png`` also saves the page as the README's picture.
"""

import os
import shutil
import time
from pathlib import Path

import pytest

from memrope.generate_options import DEFAULT_PROMPT
from memrope.serve.app import build_parser, server_from_args
from memrope.serve.load import ServerThread

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
NEW_PROMPT = "a large yellow square bounce on a grey checker"
PLAY_S = 2.0  # the bar: at least 2 s of the live stream played
WAIT_S = 45.0  # bound of every wait below
WINDOW = (1100, 760)  # CSS pixels: the page's two columns side by side (the README's screenshot)

# Reads the frame on show into a canvas: mean and spread of each channel, and the share of pixels
# whose blue exceeds red by more than 40 (the navy gradient; the grey checker has none).
FRAME_JS = """
const v = document.getElementById("video");
if (!v.videoWidth) return null;
const c = document.createElement("canvas"); c.width = v.videoWidth; c.height = v.videoHeight;
const g = c.getContext("2d"); g.drawImage(v, 0, 0);
const d = g.getImageData(0, 0, c.width, c.height).data;
const n = d.length / 4, mean = [0, 0, 0], sq = [0, 0, 0]; let blue = 0;
for (let i = 0; i < d.length; i += 4) {
  for (let k = 0; k < 3; k++) { mean[k] += d[i + k]; sq[k] += d[i + k] * d[i + k]; }
  if (d[i + 2] - d[i] > 40) blue += 1;
}
const m = mean.map(x => x / n);
return {mean: m, std: sq.map((x, k) => Math.sqrt(Math.max(0, x / n - m[k] * m[k]))), blue: blue / n,
        time: v.currentTime};
"""


def find_browser() -> tuple[str, str] | None:
    driver = shutil.which("chromedriver") or next((p for p in ("/usr/lib/chromium/chromedriver",)
                                                   if os.path.exists(p)), None)
    browser = next((shutil.which(b) for b in BROWSERS if shutil.which(b)), None)
    return (browser, driver) if browser and driver else None


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[test]')")
    found = find_browser()
    if found is None:
        pytest.skip("no chromium and chromedriver on PATH: run scripts/install-test-deps.sh (Debian: apt-get install "
                    "chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--mute-audio",
                "--autoplay-policy=no-user-gesture-required", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(found[1]), options=options)
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(predicate, what: str):
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"the page never showed {what} within {WAIT_S} s")


@pytest.mark.browser
def test_the_page_plays_the_live_stream_and_shows_a_prompt_switch(browser, tmp_path):
    from selenium.webdriver.common.by import By

    args = build_parser().parse_args(["--runs-dir", str(tmp_path / "runs"), "--pace", "realtime", "--seed", "2"])
    server, _, _ = server_from_args(args)
    with ServerThread(server) as running:
        browser.get(running.url + "/")
        text = lambda el: browser.find_element(By.ID, el).text  # noqa: E731
        wait_for(lambda: browser.find_element(By.ID, "policy").get_attribute("value") == "memrope", "the defaults")
        assert browser.find_element(By.ID, "prompt0").get_attribute("value") == DEFAULT_PROMPT
        browser.find_element(By.ID, "start").click()
        wait_for(lambda: text("s-state") == "running", "a running stream")

        times = [browser.execute_script("return document.getElementById('video').currentTime")]
        played = wait_for(lambda: (f := browser.execute_script(FRAME_JS)) and f["time"] >= PLAY_S and f,
                          f"{PLAY_S} s of video played")
        times.append(played["time"])
        assert times[1] - times[0] >= PLAY_S * 0.9  # the clock advanced (it may have started a little late)
        assert min(played["std"]) > 5 and max(played["mean"]) > 20, played  # not a blank frame
        assert played["blue"] > 0.5, played  # the first prompt's navy gradient
        assert text("s-prompt") == DEFAULT_PROMPT and text("s-policy") == "memrope"
        assert text("s-fps").endswith("x real time)") and "frames," in text("s-cache") and text("slots")

        box = browser.find_element(By.ID, "prompt")
        box.clear()
        box.send_keys(NEW_PROMPT)
        browser.find_element(By.ID, "cut").click()
        wait_for(lambda: text("s-prompt") == NEW_PROMPT, "the new prompt in the statistics")
        assert text("s-switch").startswith("chunk ") and "(cut)" in text("s-switch")
        switch = browser.execute_script("return window.memropeStats")
        assert switch["switches"] == 1 and switch["last"]["prompt_index"] == 1
        switched_at = switch["lastSwitchTime"]  # where the switch chunk starts on the video's clock
        after = wait_for(lambda: (f := browser.execute_script(FRAME_JS)) and f["time"] > switched_at + 0.5 and f,
                         "the frames after the switch")
        assert min(after["std"]) > 5 and after["blue"] < 0.05, after  # the grey checker: no navy left
        if os.environ.get("MEMROPE_SCREENSHOT"):
            save_screenshot(browser, Path(os.environ["MEMROPE_SCREENSHOT"]))
        browser.find_element(By.ID, "stop").click()
        wait_for(lambda: text("s-state").startswith("stopped"), "the stopped state")
    manifest = (server.runs_dir / switch["last"]["stream"] / "manifest.json")
    assert manifest.is_file()


def save_screenshot(browser, path: Path) -> None:
    """The page as a PNG of at most 256 colours (the README's picture, well under 200 kB)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    image.quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
