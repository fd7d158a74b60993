"""Headless Chromium for the browser tests and benchmarks: one set of flags, a fresh profile, every request the page
made (from Chrome's performance log), and an offline mode in which nothing can leave the machine."""

from __future__ import annotations

import atexit
import json
import shutil
import tempfile
import time
from pathlib import Path

FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # WebGL in software (sigma.js), with no GPU
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
)


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) paths, or None when either is missing."""
    browser = next(
        (shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def start_chromium(offline: bool = False, size: tuple[int, int] = (1280, 900), profile: Path | None = None):
    """A started selenium driver on a fresh profile. Host names never resolve (only 127.0.0.1 is reachable); with
    ``offline`` every request, loopback included, goes to a dead proxy and CDP switches the network off."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("headless Chromium not installed (apt-get install chromium chromium-driver)")
    opts = Options()
    opts.binary_location = found[0]
    if profile is None:
        profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        atexit.register(shutil.rmtree, profile, True)
    for arg in (*FLAGS, f"--window-size={size[0]},{size[1]}", f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    opts.add_argument("--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1")
    if offline:
        opts.add_argument("--proxy-server=http://127.0.0.1:9")
        opts.add_argument("--proxy-bypass-list=<-loopback>")
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(found[1]))
    drv.set_script_timeout(30)
    if offline:
        drv.execute_cdp_cmd("Network.enable", {})
        drv.execute_cdp_cmd(
            "Network.emulateNetworkConditions",
            {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        )
    return drv


def requested_urls(drv) -> list[str]:
    """Every URL the browser asked for since the last call (documents, frames, scripts, fetches)."""
    out = []
    for entry in drv.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            out.append(msg["params"]["request"]["url"])
    return out


def wait_for(drv, script: str, timeout: float = 30.0, what: str = "condition"):
    """Poll a JavaScript expression (``return ...``) until it is truthy; its value, or AssertionError."""
    end = time.time() + timeout
    while True:
        value = drv.execute_script(script)
        if value:
            return value
        if time.time() > end:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.2)


def painted_pixels(png: bytes, box: tuple[int, int, int, int] | None = None) -> int:
    """Pixels of a screenshot (optionally a box x0, y0, x1, y1) that are neither white nor near-white."""
    import io

    import matplotlib.image as mpimg

    img = mpimg.imread(io.BytesIO(png), format="png")[..., :3]
    if box is not None:
        x0, y0, x1, y1 = box
        img = img[y0:y1, x0:x1]
    return int((img.min(axis=2) < 0.85).sum())
