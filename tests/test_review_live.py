"""The loop inside ``hst review``: a round of answers updates the model in the background and re-ranks the open
questions; requests stay fast meanwhile; a failed update or a killed server loses no answer and keeps the latest
completed model. On the tiny synthetic images and model of tests/test_review_session.py."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import hst.apps.review_loop as review_loop
from _helpers_review import (
    Server,
    body_data,
    browser_binaries,
    chromium,
    get_json,
    load,
    post_json,
    press,
    wait_for,
)
from hst.data.readers import read_csv_manifest
from hst.methods.question_policy import ask
from hst.review.app import make_server
from hst.review.loop import ROUND_SIZE, model_path
from hst.review.session import ReviewSession, log_path
from hst.review.suggest import open_review

pytestmark = pytest.mark.usefixtures("one_thread")

ROUND = 3
FAST = 0.2
"""Seconds: the most any request may take while an update runs."""


@pytest.fixture
def live(review_checkpoint: Path, review_manifests: tuple[Path, Path], tmp_path: Path) -> ReviewSession:
    return open_review(review_checkpoint, review_manifests[1], tmp_path / "out" / "reviewed.csv", round_size=ROUND)


def open_entries(session: ReviewSession) -> list[tuple[int, int]]:
    """The undecided entries in the page's order."""
    decided = session.decisions()
    entries = [(int(row[0]), int(row[1])) for row in session.state()["suggestions"]]
    return [e for e in entries if e not in decided]


def decide(session: ReviewSession, entries: list[tuple[int, int]], action: str = "accept") -> None:
    for image, label in entries:
        session.decide(image, label, action)


def saved_decisions(out: Path) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, log_path(out).read_text().splitlines()) if e["event"] != "open"]


def test_the_command_line_defaults_are_the_loop_s() -> None:
    import argparse

    from hst.commands import review
    from hst.methods.question_policy import DEFAULT_POLICY

    parser = argparse.ArgumentParser()
    review.add_arguments(parser)
    assert review.ROUND_SIZE == ROUND_SIZE == parser.get_default("round_size")
    assert f"(default: {DEFAULT_POLICY}," in " ".join(parser.format_help().split())


def test_a_round_of_answers_updates_the_model_and_reranks_the_open_questions(
    live: ReviewSession, review_checkpoint: Path, review_manifests: tuple[Path, Path]
) -> None:
    assert live.live is not None
    status = live.loop_status()
    assert status is not None and (status["version"], status["learnt"], status["next_in"]) == (0, 0, ROUND)
    before = open_entries(live)
    # An undo takes the answer back: two answers and an undo are one, not a round.
    decide(live, before[:2])
    live.undo()
    assert live.loop_status()["answers"] == 1 and not live.loop_status()["updating"]  # type: ignore[index]
    decide(live, before[1:3], "reject")
    assert live.live.wait(120)
    status = live.loop_status()
    assert status is not None and (status["version"], status["learnt"], status["error"]) == (1, ROUND, None)
    # The page now asks in the order the new model's policy gives over the entries still open.
    loop = live.live.loop
    assert loop.model is not None and loop.model.version == 1
    size, rng = loop.labels.size, np.random.default_rng(0)
    expected = ask(loop.policy, loop.model.probability, loop.labels, size, rng, ~loop.asked)
    rows, reviewable = live.live.rows, {(s.image, s.label) for s in live.suggestions}
    ranked = [(int(rows[i]), int(c)) for i, c in expected]
    assert open_entries(live) == [e for e in ranked if e in reviewable]
    assert open_entries(live) != [e for e in before if e not in set(before[:3])]
    assert live.state()["loop"]["version"] == 1
    # The ranking is on disk with its version; reopening serves it without fitting again.
    saved = json.loads(model_path(live.out_csv).read_text())
    assert (saved["version"], saved["answers"]) == (1, ROUND)
    again = open_review(review_checkpoint, review_manifests[1], live.out_csv, round_size=ROUND)
    assert again.live is not None and again.live.loop.model is None  # nothing refit
    assert again.loop_status()["version"] == 1 and open_entries(again) == open_entries(live)  # type: ignore[index]
    decide(again, open_entries(again)[:ROUND])
    assert again.live.wait(120) and again.loop_status()["version"] == 2  # type: ignore[index]


def slow_update(monkeypatch: pytest.MonkeyPatch, release: threading.Event, started: threading.Event) -> None:
    """Updates after the first wait for ``release`` (at most 30 s): an update that is still running."""
    original = review_loop.update_review_model

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(review_loop, "update_review_model", slow)


@pytest.fixture
def serving(live: ReviewSession) -> Iterator[str]:
    """``live`` served by waitress on a free port, in a thread; yields its URL."""
    server, url = make_server(live, 0, "t0ken")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    yield url
    server.close()


def timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def test_requests_answer_fast_while_an_update_runs(
    live: ReviewSession, serving: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    release, started = threading.Event(), threading.Event()
    slow_update(monkeypatch, release, started)
    entries = open_entries(live)
    url = serving

    def answer(entry: tuple[int, int]) -> Callable[[], Any]:
        return lambda: post_json(f"{url}api/decide", {"image": entry[0], "label": entry[1], "action": "reject"})

    def fetch(path: str) -> Callable[[], Any]:
        return lambda: urllib.request.urlopen(f"{url}{path}", timeout=5).read()

    try:
        times = [timed(answer(e)) for e in entries[:ROUND]]  # the third starts the update
        assert max(times) < FAST, f"answering took {times} s: the update ran in the request"
        assert started.wait(10), "no update started after a round of answers"
        assert get_json(f"{url}api/loop")["updating"]
        during = [timed(answer(e)) for e in entries[ROUND : 2 * ROUND - 1]]  # one short of the next round
        during += [timed(fetch(path)) for path in ("api/loop", "api/state", "", "image/0", "static/review.js")]
        assert get_json(f"{url}api/loop")["updating"], "the update ended before the requests were measured"
    finally:
        release.set()
    print(f"request seconds while the update ran: max {max(during):.3f}, all {[round(t, 3) for t in during]}")
    assert max(during) < FAST, during
    assert live.live is not None and live.live.wait(120)
    status = get_json(f"{url}api/loop")
    # the answers given during the update are kept, and wait for the next round
    assert (status["version"], status["learnt"], status["answers"]) == (1, ROUND, 2 * ROUND - 1)
    written = read_csv_manifest(live.out_csv).labels
    assert all(written[i, c] != 0 for i, c in entries[: 2 * ROUND - 1])


def test_a_failed_update_keeps_the_model_and_every_answer(
    live: ReviewSession, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    original = review_loop.update_review_model
    failures = [1]

    def failing(*args: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise MemoryError("no room for the probe")
        return original(*args, **kwargs)

    monkeypatch.setattr(review_loop, "update_review_model", failing)
    order = open_entries(live)
    saved = model_path(live.out_csv).read_bytes()
    with caplog.at_level(logging.ERROR, logger="hst.review.loop"):
        decide(live, order[:ROUND])
        assert live.live is not None and live.live.wait(120)
    status = live.loop_status()
    assert status is not None and status["version"] == 0 and "no room for the probe" in status["error"]
    assert any("update failed" in r.message for r in caplog.records)
    assert open_entries(live) == order[ROUND:]  # the previous model still ranks
    assert model_path(live.out_csv).read_bytes() == saved
    assert len(saved_decisions(live.out_csv)) == ROUND and len(live.decisions()) == ROUND
    # Answers keep coming; the next round tries again and its model is the next version.
    decide(live, order[ROUND : 2 * ROUND])
    assert live.live.wait(120)
    status = live.loop_status()
    assert status is not None and (status["version"], status["learnt"], status["error"]) == (1, 2 * ROUND, None)
    written = read_csv_manifest(live.out_csv).labels
    assert all(written[i, c] != 0 for i, c in order[: 2 * ROUND])


# ---- hst review in a subprocess: killed during an update, restarted ---------------------------------------------
LAUNCHER = """
import sys, time
import hst.apps.review_loop as loop

original = loop.update_review_model

def slow(*args, **kwargs):
    if args[4] >= {slow_from}:  # the model version this update makes
        end = time.monotonic() + {seconds}
        model = original(*args, **kwargs)
        while time.monotonic() < end:  # real work, as long as asked: an update that takes its time
            model = original(*args, **kwargs)
        return model
    return original(*args, **kwargs)

loop.update_review_model = slow
from hst.cli import main
sys.exit(main(sys.argv[1:]))
"""


def launcher(folder: Path, slow_from: int, seconds: float) -> tuple[str]:
    """``hst`` with every update from version ``slow_from`` on taking at least ``seconds`` of real updates."""
    script = folder / f"slow_review_{slow_from}_{seconds:g}.py"
    script.write_text(LAUNCHER.format(slow_from=slow_from, seconds=seconds))
    return (str(script),)


def wait_status(url: str, check: Callable[[dict[str, Any]], bool], what: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = get_json(f"{url}api/loop")
        if check(status):
            return status
        time.sleep(0.1)
    raise AssertionError(f"{what}: {status}")


@pytest.mark.slow
def test_killed_during_an_update_a_restart_loses_nothing(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    out = tmp_path / "reviewed.csv"
    slow = launcher(tmp_path, slow_from=2, seconds=600)
    server = server_factory(out, "--round-size", "2", launch=slow)
    state = get_json(f"{server.url}api/state")
    entries = [(row[0], row[1]) for row in state["suggestions"]]

    def answer(url: str, entry: tuple[int, int]) -> None:
        post_json(f"{url}api/decide", {"image": entry[0], "label": entry[1], "action": "reject"})

    for entry in entries[:2]:
        answer(server.url, entry)
    wait_status(server.url, lambda s: s["version"] == 1 and not s["updating"], "no model v1")
    for entry in entries[2:5]:  # the fourth answer starts v2, which runs for minutes; the fifth comes during it
        answer(server.url, entry)
    wait_status(server.url, lambda s: s["updating"] and s["answers"] == 5, "no update running")
    server.kill()
    assert json.loads(model_path(out).read_text())["version"] == 1
    assert len(saved_decisions(out)) == 5
    # Restarted: every answer is there, the last completed model ranks, and the waiting round is learnt.
    again = server_factory(out, "--round-size", "2", launch=launcher(tmp_path, slow_from=2, seconds=5))
    assert any("5 already decided" in line for line in again.output)
    assert any("model v1 (trained on 2 answers)" in line for line in again.output)
    state = get_json(f"{again.url}api/state")
    assert state["progress"]["decided"] == 5 and state["loop"]["version"] == 1
    written = read_csv_manifest(out).labels
    assert all(written[i, c] == -value for i, c, value, *_ in state["suggestions"] if (i, c) in entries[:5])
    wait_status(again.url, lambda s: s["version"] == 2 and s["learnt"] == 5, "the waiting round was not learnt")


@pytest.mark.slow
def test_review_page_loop_in_headless_chromium(server_factory: Callable[..., Server], tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    browser_binaries()  # before the server starts
    out = tmp_path / "reviewed.csv"
    # every update takes at least 4 s of real updates on the 2 cores: the page is measured while one runs
    server = server_factory(out, "--round-size", str(ROUND), launch=launcher(tmp_path, slow_from=1, seconds=4))
    first = get_json(f"{server.url}api/state")
    names, images = first["classes"], first["images"]
    with chromium(tmp_path / "profile") as driver:
        load(driver, server.url)
        assert body_data(driver, "version") == "0"
        assert "model v0, trained on 0 answers" in driver.find_element(By.ID, "model").text
        for n in range(1, ROUND + 1):
            press(driver, "r", n)
        wait_for(driver, lambda d: body_data(d, "updating") == "1", "the page did not show the update", 10)
        started = get_json(f"{server.url}api/loop")["started"]
        for n in range(ROUND + 1, ROUND + 3):  # answers during the update are taken and saved
            press(driver, "a", n)
        wait_for(driver, lambda d: body_data(d, "version") == "1", "the page did not take model v1")
        loop = get_json(f"{server.url}api/loop")
        assert "model v1, trained on 3 answers" in driver.find_element(By.ID, "model").text
        # the cursor is on the question the new model wants answered first
        state = get_json(f"{server.url}api/state")
        decided = {(i, c) for i, c, *_ in state["decisions"]}
        first_open = next(s for s in state["suggestions"] if (s[0], s[1]) not in decided)
        assert body_data(driver, "current") == f"{images[first_open[0]]}|{names[first_open[1]]}"
        timings = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => [e.name, performance.timeOrigin + e.startTime,"
            " e.duration])"
        )
        window = [(name, ms) for name, at, ms in timings if 1000 * started <= at <= 1000 * loop["finished"]]
        print(f"page requests during the update: {len(window)}, slowest {max(ms for _, ms in window):.1f} ms")
        assert len(window) >= 3 and any("api/decide" in name for name, _ in window), window
        assert max(ms for _, ms in window) < 1000 * FAST, window

        # One more answer fills the next round; the server is killed while that update runs.
        press(driver, "r", ROUND + 3)
        wait_for(driver, lambda d: body_data(d, "updating") == "1", "the second update did not start", 10)
        server.kill()
        assert json.loads(model_path(out).read_text())["version"] == 1
        assert len(saved_decisions(out)) == ROUND + 3
        again = server_factory(out, "--round-size", str(ROUND), launch=launcher(tmp_path, slow_from=1, seconds=4))
        assert any(f"model v1 (trained on {ROUND} answers)" in line for line in again.output)
        load(driver, again.url)
        assert body_data(driver, "decided") == str(ROUND + 3) and body_data(driver, "version") in ("1", "2")
        # the round that was being learnt when the server died is learnt after the restart
        wait_for(driver, lambda d: body_data(d, "version") == "2", "the restarted page did not take model v2")
        assert f"model v2, trained on {ROUND + 3} answers" in driver.find_element(By.ID, "model").text
