"""``hst review`` as a person uses it: the real server in a subprocess (token, path traversal, concurrent
decisions, resuming after a kill) and the review page in a real headless Chromium."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from _helpers_review import (
    P,
    Server,
    body_data,
    browser_binaries,
    chromium,
    get_json,
    load,
    log_events,
    post_json,
    press,
    wait_for,
)
from hst.data.readers import read_csv_manifest
from hst.review.session import log_path

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_real_server_token_traversal_and_concurrent_decisions(
    server_factory: Callable[[Path], Server], tmp_path: Path
) -> None:
    out = tmp_path / "reviewed.csv"
    server = server_factory(out)
    state = get_json(f"{server.url}api/state")
    # Without the token (or with another one) nothing is served, not even the page or its script.
    for path in ("/", "/api/state", "/static/review.js", "/image/0", f"/{server.token[:-1]}/api/state"):
        assert server.raw_get(path)[0] == 403, path
    status, body = server.raw_get(f"/{server.token}/image/0")
    assert status == 200 and body.startswith(b"\x89PNG")
    attempts = [
        "image/../../../../etc/passwd",
        "image/..%2f..%2f..%2fetc%2fpasswd",
        "image/%2e%2e/%2e%2e/etc/passwd",
        "static/../../../../etc/passwd",
        "static/..%2f..%2fsession.py",
    ]
    for attempt in attempts:
        status, body = server.raw_get(f"/{server.token}/{attempt}")
        assert status in (403, 404) and b"root:" not in body and b"import" not in body, (attempt, status)
    # Forty decisions from eight threads at once: every one is in the log and in the manifest.
    chosen = state["suggestions"][:40]
    actions = ["accept", "reject", "unknown", "accept"]

    def decide(n: int) -> dict:
        image, label = chosen[n][0], chosen[n][1]
        return post_json(f"{server.url}api/decide", {"image": image, "label": label, "action": actions[n % 4]})

    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(decide, range(len(chosen))))
    assert sorted(a["decided"] for a in answers) == list(range(1, len(chosen) + 1))  # serialised, none lost
    written = read_csv_manifest(out).labels
    for n, row in enumerate(chosen):
        expected = {"accept": row[2], "reject": -row[2], "unknown": 0}[actions[n % 4]]
        assert written[row[0], row[1]] == expected
    events = log_events(log_path(out))
    assert [e["event"] for e in events].count("open") == 1 and len(events) == 1 + len(chosen)
    assert get_json(f"{server.url}api/state")["progress"]["decided"] == len(chosen)


@pytest.mark.slow
def test_review_page_in_headless_chromium(
    server_factory: Callable[..., Server], manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    browser_binaries()  # before the server starts
    out = tmp_path / "reviewed.csv"
    server = server_factory(out)
    state = get_json(f"{server.url}api/state")
    names, images = state["classes"], state["images"]
    order_seen = [f"{images[s[0]]}|{names[s[1]]}" for s in state["suggestions"]]

    with chromium(tmp_path / "profile") as driver:
        load(driver, server.url)
        assert body_data(driver, "current") == order_seen[0]  # the server's first question comes first
        assert not driver.find_element(By.ID, "promise").is_displayed()  # no --precision, no promise
        shortcuts = driver.find_element(By.ID, "keys").text
        assert "accept" in shortcuts and "reject" in shortcuts and "undo" in shortcuts
        press(driver, "a", 1)
        assert body_data(driver, "current") == order_seen[1]
        press(driver, "r", 2)
        press(driver, "a", 3)
        press(driver, "z", 2)  # undo the third decision: the cursor goes back to it
        assert body_data(driver, "current") == order_seen[2]
        assert "decided 2 / " in driver.find_element(By.ID, "progress").text
        # Every resource came from the review server itself.
        sources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert sources and all(url.startswith(server.url) for url in sources), sources

        driver.refresh()
        wait_for(driver, lambda d: body_data(d, "ready") == "1", "the reloaded page did not finish loading")
        assert body_data(driver, "decided") == "2" and body_data(driver, "current") == order_seen[2]

        # On disk: the manifest and the decision log, with the input untouched.
        first, second, third = state["suggestions"][:3]
        written = read_csv_manifest(out).labels
        assert written[first[0], first[1]] == first[2] and written[second[0], second[1]] == -second[2]
        assert written[third[0], third[1]] == 0
        given = read_csv_manifest(manifests[1]).labels
        changed = written != given
        assert changed.sum() == 2 and np.all(given[changed] == 0)
        events = [(e["event"], e.get("image"), e.get("label")) for e in log_events(log_path(out))]
        assert events[1:] == [
            ("accept", images[first[0]], names[first[1]]),
            ("reject", images[second[0]], names[second[1]]),
            ("accept", images[third[0]], names[third[1]]),
            ("undo", None, None),
        ]

        # Killing the server loses nothing: a new one on the same output resumes where the person stopped.
        server.kill()
        again = server_factory(out)
        assert any("2 already decided" in line for line in again.output)
        load(driver, again.url)
        assert body_data(driver, "decided") == "2" and body_data(driver, "current") == order_seen[2]
        press(driver, "u", 3)
        assert read_csv_manifest(out).labels[third[0], third[1]] == 0
        assert log_events(log_path(out))[-1]["event"] == "unknown"


@pytest.mark.slow
def test_precision_review_page_states_the_promise(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser_binaries()  # before the server starts
    out = tmp_path / "reviewed.csv"
    server = server_factory(out, "--precision", str(P), "--round-size", "0")  # no loop: suggestions first
    assert any(line.startswith(f"suggestions at precision {P:g}") for line in server.output)
    state = get_json(f"{server.url}api/state")
    names, promise = state["classes"], state["promise"]
    # a class refused both ways: its reasons are on the page and its entries have no suggestion
    both = [
        c for c, found in enumerate(promise["classes"]) if found["positive"]["reason"] and found["negative"]["reason"]
    ]
    refused = both[0]
    with chromium(tmp_path / "profile") as driver:
        load(driver, server.url)
        summary = driver.find_element(By.ID, "promise-summary")
        assert f"at least {P} precise" in summary.text and "never on this review's decisions" in summary.text
        summary.click()  # the per-class table: each class's measured precision, or why it was refused
        table = driver.find_element(By.ID, "promise-table").text
        assert promise["classes"][refused]["negative"]["reason"] in table
        calibrated = next(found for found in promise["classes"] if found["negative"]["threshold"] is not None)
        assert f"{calibrated['negative']['correct']} of {calibrated['negative']['known']} known correct" in table
        current = driver.find_element(By.CSS_SELECTOR, "#suggestions tr.current").text
        assert "no suggestion" not in current and "score" in current  # suggestions first
        # In a refused class every entry is reviewable with no suggestion; A marks it present.
        Select(driver.find_element(By.ID, "filter-class")).select_by_visible_text(names[refused])
        wait_for(driver, lambda d: body_data(d, "current").endswith(f"|{names[refused]}"), "the filter did not apply")
        current = driver.find_element(By.CSS_SELECTOR, "#suggestions tr.current")
        assert f"no suggestion at {P}" in current.text
        image, label = int(current.get_attribute("data-image")), refused
        press(driver, "a", 1)
    assert read_csv_manifest(out).labels[image, label] == 1
    last = log_events(log_path(out))[-1]
    assert (last["event"], last["value"], last["suggested"]) == ("accept", 1, 0)
