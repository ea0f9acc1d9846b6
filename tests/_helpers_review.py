"""Helpers shared by the ``hst review`` tests: the decision log, the --precision level, the real server
(``hst review`` in a subprocess) and a headless Chromium driven by selenium."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest


def log_events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


P = 0.6  # the tiny model calibrates a few classes' negatives at 0.6 and none at 0.9


# ---- the real server (hst review in a subprocess) and a real headless browser --------------------------------
BROWSER_HINT = "run `.ci/install-test-deps` (it installs Debian's chromium and chromium-driver)"


def browser_binaries() -> tuple[str, str]:
    """(chromium, chromedriver): the review page is tested in a real browser, so their absence is a failure."""
    browser = next((shutil.which(n) for n in ("chromium", "chromium-browser") if shutil.which(n)), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = [name for name, path in (("chromium", browser), ("chromedriver", driver)) if path is None]
        pytest.fail(f"no {' and no '.join(missing)} found: {BROWSER_HINT}")
    return browser, driver


class Server:
    """``hst review`` running in its own process, as a person starts it."""

    def __init__(
        self, checkpoint: Path, partial: Path, out: Path, *options: str, launch: Sequence[str] = ("-m", "hst.cli")
    ) -> None:
        command = [
            sys.executable,
            *launch,
            "review",
            str(checkpoint),
            str(partial),
            "--out",
            str(out),
            *options,
        ]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.output: list[str] = []
        lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        try:
            self.url = self._wait_for_url(lines)
        except BaseException:
            self.process.kill()  # not yet known to the fixture, which would otherwise leave it running
            raise
        parts = urllib.parse.urlsplit(self.url)
        self.host, self.port, self.token = parts.hostname, parts.port, parts.path.strip("/")
        assert self.host == "127.0.0.1"

    def _wait_for_url(self, lines: queue.Queue[str | None]) -> str:
        deadline = time.monotonic() + 240  # the URL comes after the model has run over the images
        while True:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"hst review printed no URL in 240 s:\n{''.join(self.output)}") from None
            if line is None:
                raise AssertionError(f"hst review exited ({self.process.wait()}):\n{''.join(self.output)}")
            self.output.append(line)
            if line.startswith("review page: "):
                return line.split(": ", 1)[1].strip()

    def _read(self, lines: queue.Queue[str | None]) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            lines.put(line)
        lines.put(None)

    def raw_get(self, path: str) -> tuple[int, bytes]:
        """GET ``path`` byte for byte as given (no client-side normalisation of ``..``)."""
        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)  # type: ignore[arg-type]
        try:
            connection.putrequest("GET", path, skip_accept_encoding=True)
            connection.endheaders()
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def kill(self) -> None:
        self.process.kill()  # no clean shutdown: nothing may depend on one
        self.process.wait(timeout=30)


def post_json(url: str, body: dict) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def wait_for(driver: object, condition: Callable[[object], object], what: str, timeout: float = 60) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition, message=what)  # type: ignore[arg-type]


def body_data(driver: object, name: str) -> str:
    return str(driver.execute_script(f"return document.body.dataset.{name} || ''"))  # type: ignore[attr-defined]


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[Any]:
    """A headless Chromium driven by selenium, quit on leaving."""
    browser, driver_path = browser_binaries()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1280,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_path))
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def load(driver: Any, url: str) -> None:
    driver.get(url)
    wait_for(driver, lambda d: body_data(d, "ready") == "1", "the page did not finish loading")


def press(driver: Any, keys: str, decided: int) -> None:
    from selenium.webdriver.common.by import By

    driver.find_element(By.TAG_NAME, "body").send_keys(keys)
    wait_for(
        driver,
        lambda d: body_data(d, "decided") == str(decided) and not body_data(d, "busy"),
        f"no {decided} decisions after pressing {keys!r}",
    )
