"""``hst review`` in-process: suggestions and their order, decisions, the decision log, resuming, and the web
application's guards (token, loopback host, path traversal), on a tiny model trained on synthetic images
written as PNG files."""

from __future__ import annotations

import csv
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from _helpers_review import P, log_events
from hst.apps.complete import complete
from hst.cli import main
from hst.config import ConfigError, DataConfig, resolve_config
from hst.data.readers import read_csv_manifest
from hst.data.splits import prepare_splits
from hst.review.app import create_app
from hst.review.session import ReviewSession, Suggestion, log_path, order, value_of
from hst.review.suggest import open_review, promise_lines
from tiny_run import TINY

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "t0ken-for-tests"
HOST = {"Host": "127.0.0.1:5000"}


@pytest.fixture
def session(checkpoint: Path, manifests: tuple[Path, Path], tmp_path: Path) -> ReviewSession:
    return open_review(checkpoint, manifests[1], tmp_path / "out" / "reviewed.csv")


def rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_suggestions_are_the_completion_of_every_unknown_entry(
    session: ReviewSession, checkpoint: Path, manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    filled = complete(checkpoint, manifests[1], tmp_path / "filled.csv", min_confidence=0.5)
    assert session.evidence == filled.evidence == ["classifier", "IST", "CST"]
    unknown = filled.partial == 0
    assert len(session.suggestions) == int(unknown.sum())
    for s in session.suggestions:
        assert unknown[s.image, s.label]
        assert s.value == filled.completed[s.image, s.label]
        assert s.confidence == pytest.approx(filled.confidence[s.image, s.label])
        cst = filled.cst_scores[s.image, s.label]  # type: ignore[index]
        # a class without prototypes has no CST score (-inf): no evidence rather than a number
        assert (s.cst, s.cst_vote is None) == ((cst, False) if np.isfinite(cst) else (None, True))
        # IST evidence exists only for images with a known positive, as in complete's rule
        assert (s.ist is None) == (not (filled.partial[s.image] == 1).any())
    # Nothing decided yet: the reviewed manifest holds the input's labels and names the same files.
    given, reviewed = read_csv_manifest(manifests[1]), read_csv_manifest(session.out_csv)
    assert np.array_equal(reviewed.labels, given.labels) and reviewed.class_names == given.class_names
    assert [p.resolve() for p in reviewed.image_paths] == [p.resolve() for p in given.image_paths]  # type: ignore[union-attr]


def test_order_puts_the_most_doubtful_first_grouped_by_image() -> None:
    def s(image: int, label: int, confidence: float, value: int = -1) -> Suggestion:
        return Suggestion(image, label, value, confidence, 0.0, 0.5)

    items = [s(0, 0, 0.99), s(0, 1, 0.6), s(1, 0, 0.55), s(1, 2, 0.9), s(2, 1, 0.6, 1), s(2, 0, 0.97)]
    # image 1 holds the most doubtful (0.55); images 0 and 2 tie at 0.6 and the suggested positive goes first
    assert order(items) == [2, 3, 4, 5, 1, 0]


def test_entries_with_no_suggestion_come_last_and_ask_present() -> None:
    def s(image: int, label: int, value: int, confidence: float, rank: float = 0.0) -> Suggestion:
        return Suggestion(image, label, value, confidence, None, None, rank=rank)

    # image 0 has only entries with no suggestion; image 1 a fill, whose entries with none follow it
    items = [s(0, 0, 0, 0.5, -2.0), s(1, 1, 0, 0.5, -3.0), s(1, 0, -1, 0.97, 0.4), s(2, 2, 1, 0.97, 0.1)]
    # image 2's fill is nearer its threshold than image 1's at equal measured precision
    assert order(items) == [3, 2, 1, 0]
    assert [value_of(a, 0) for a in ("accept", "reject", "unknown")] == [1, -1, 0]
    assert [value_of(a, -1) for a in ("accept", "reject", "unknown")] == [-1, 1, 0]


# ---- --precision: the suggestions of hst complete --precision P, and the promise it makes --------------------


def read_classes(path: Path) -> dict[tuple[str, str], dict[str, str]]:
    with path.open(newline="") as handle:
        return {(row["class"], row["polarity"]): row for row in csv.DictReader(handle)}


def test_precision_suggestions_are_the_fills_of_complete_at_precision(
    checkpoint: Path, manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    session = open_review(checkpoint, manifests[1], tmp_path / "reviewed.csv", precision=P)
    filled_csv = tmp_path / "filled.csv"
    given = ["complete", str(checkpoint), str(manifests[1]), "--out", str(filled_csv), "--precision", str(P)]
    assert main([*given, "--on-error", "skip"]) == 0
    partial, completed = session.partial, read_csv_manifest(filled_csv).labels
    fills = completed != partial
    # Every unknown entry is reviewable; its suggestion is complete's fill, or none where complete leaves it unknown.
    assert sorted((s.image, s.label) for s in session.suggestions) == [tuple(e) for e in np.argwhere(partial == 0)]
    for s in session.suggestions:
        assert s.value == (completed[s.image, s.label] if fills[s.image, s.label] else 0)
    assert 0 < sum(s.value != 0 for s in session.suggestions) < len(session.suggestions)
    # The promise on the page is the one complete wrote, class by class; a refused class suggests nothing.
    assert session.promise is not None
    written = read_classes(filled_csv.with_name("filled.classes.csv"))
    refused = 0
    for c, found in enumerate(session.promise["classes"]):
        for key, sign in (("positive", 1), ("negative", -1)):
            rule, row = found[key], written[found["name"], key]
            offered = [s for s in session.suggestions if s.label == c and s.value == sign]
            assert (rule["reason"], rule["known"], len(offered)) == (
                row["reason"],
                int(row["known_above"]),
                int(row["filled"]),
            )
            if rule["threshold"] is None:
                refused += 1
                assert row["threshold"] == "" and not offered
            else:
                assert rule["threshold"] == pytest.approx(float(row["threshold"]), abs=1e-5)
                assert rule["correct"] / rule["known"] == pytest.approx(float(row["known_precision"]), abs=1e-4)
                assert all(s.confidence == pytest.approx(rule["correct"] / rule["known"]) for s in offered)
                assert rule["correct"] / rule["known"] >= P
    assert refused > 0
    assert session.promise["unsuggested"] == sum(s.value == 0 for s in session.suggestions)
    # Suggestions come before the entries with none, in every image and across images.
    by_image: dict[int, list[int]] = {}
    for k in session.order:
        by_image.setdefault(session.suggestions[k].image, []).append(session.suggestions[k].value)
    assert all(values == sorted(values, key=lambda v: v == 0) for values in by_image.values())
    has_fill = [any(values) for values in by_image.values()]
    assert has_fill == sorted(has_fill, reverse=True)
    # The page gets plain JSON (no NaN) and the promise; the command prints it.
    state = json.loads(json.dumps(session.state(), allow_nan=False))
    assert state["promise"]["precision"] == P and any(row[2] == 0 for row in state["suggestions"])
    lines = promise_lines(session.promise)
    assert lines[0].startswith(f"suggestions at precision {P:g}, calibrated per class on the known labels of")


def test_review_decisions_never_change_the_calibration(
    checkpoint: Path, manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    out = tmp_path / "reviewed.csv"
    session = open_review(checkpoint, manifests[1], out, precision=P)
    promise, suggestions = session.promise, session.suggestions
    # A person who rejects every fill of a calibrated class and marks entries with no suggestion present: labels a
    # rule calibrated on them would fail its promise on.
    fills = [s for s in suggestions if s.value == -1]
    chosen = [s for s in fills if s.label == fills[0].label]
    none = [s for s in suggestions if s.value == 0][:20]
    for s in chosen:
        session.decide(s.image, s.label, "reject")
    for s in none:
        session.decide(s.image, s.label, "accept")
    written = read_csv_manifest(out).labels
    assert all(written[s.image, s.label] == 1 for s in chosen + none)  # no suggestion: accept writes present
    assert session.promise == promise
    # Resuming computes the suggestions again from the input, which the review never writes: same calibration.
    again = open_review(checkpoint, manifests[1], out, precision=P)
    assert again.promise == promise and again.suggestions == suggestions
    assert len(again.decisions()) == len(chosen) + len(none) and not again.ignored
    assert log_events(again.log_path)[-1]["precision"] == P
    # The reviewed file as input: its known labels are partly a person's, so only the file before calibrates.
    with pytest.raises(ConfigError, match="calibrate-on"):
        open_review(checkpoint, out, tmp_path / "second.csv", precision=P)
    second = open_review(checkpoint, out, tmp_path / "second.csv", precision=P, calibrate_on=manifests[1])
    assert second.promise is not None and second.promise["calibrated_on"] == str(manifests[1])


def test_decisions_undo_and_the_files_they_write(session: ReviewSession, manifests: tuple[Path, Path]) -> None:
    before = manifests[1].read_bytes()
    first, second, third = (session.suggestions[k] for k in session.order[:3])
    session.decide(first.image, first.label, "accept")
    session.decide(second.image, second.label, "reject")
    result = session.decide(third.image, third.label, "unknown")
    assert result["decided"] == 3 and result["counts"] == {"accept": 1, "reject": 1, "unknown": 1}
    written = read_csv_manifest(session.out_csv).labels
    assert written[first.image, first.label] == first.value
    assert written[second.image, second.label] == -second.value
    assert written[third.image, third.label] == 0
    # Only decided entries moved; known labels and the input file are untouched.
    changed = written != session.partial
    assert changed.sum() == 2 and np.all(session.partial[changed] == 0)
    assert manifests[1].read_bytes() == before
    assert session.undo()["label"] == third.label
    assert session.undo()["image"] == second.image
    assert read_csv_manifest(session.out_csv).labels[second.image, second.label] == 0
    events = [e["event"] for e in log_events(session.log_path)]
    assert events == ["open", "accept", "reject", "unknown", "undo", "undo"]
    assert not list(session.out_csv.parent.glob(".*.tmp")), "a temporary file was left behind"
    with pytest.raises(KeyError):
        known = np.argwhere(session.partial != 0)[0]
        session.decide(int(known[0]), int(known[1]), "accept")
    with pytest.raises(ValueError, match="action"):
        session.decide(first.image, first.label, "maybe")


def test_reopening_resumes_from_the_log(session: ReviewSession, checkpoint: Path, manifests: tuple[Path, Path]) -> None:
    a, b = (session.suggestions[k] for k in session.order[:2])
    session.decide(a.image, a.label, "reject")
    session.decide(b.image, b.label, "accept")
    session.decide(a.image, a.label, "accept")  # changed mind
    session.undo()  # back to "reject" for a
    expected = read_csv_manifest(session.out_csv).labels
    # A crash may cut the last line short; the lines before it stand.
    with session.log_path.open("a") as handle:
        handle.write('{"event": "acc')
    session.out_csv.unlink()  # the log alone is enough to rebuild the manifest
    again = open_review(checkpoint, manifests[1], session.out_csv)
    assert again.decisions() == {(a.image, a.label): ("reject", -a.value), (b.image, b.label): ("accept", b.value)}
    assert np.array_equal(read_csv_manifest(session.out_csv).labels, expected)
    assert len(again.ignored) == 1 and "not JSON" in again.ignored[0]
    assert again.undo()["label"] == b.label  # the undo history survives too


def test_bad_outputs_are_refused(checkpoint: Path, manifests: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="overwrite the input"):
        open_review(checkpoint, manifests[1], manifests[1])
    (tmp_path / "other.csv").write_text("image,a\n")
    with pytest.raises(ConfigError, match="not a review to resume"):
        open_review(checkpoint, manifests[1], tmp_path / "other.csv")
    assert (tmp_path / "other.csv").read_text() == "image,a\n"
    with pytest.raises(ConfigError, match=r"\.csv"):
        open_review(checkpoint, manifests[1], tmp_path / "out.json")
    with pytest.raises(ConfigError, match="--precision"):
        open_review(checkpoint, manifests[1], tmp_path / "p.csv", precision=1.5)
    assert not (tmp_path / "p.csv").exists()
    for option in (["--positives-only"], ["--calibrate-on", str(manifests[1]), "--round-size", "0"]):
        assert main(["review", str(checkpoint), str(manifests[1]), "--out", str(tmp_path / "q.csv"), *option]) == 2


def test_concurrent_decisions_are_all_kept(session: ReviewSession) -> None:
    chosen = [session.suggestions[k] for k in session.order[:40]]
    actions = ["accept", "reject", "unknown", "accept"]
    barrier = threading.Barrier(8)

    def decide(n: int) -> None:
        if n < 8:
            barrier.wait()  # the first eight start together
        s = chosen[n]
        session.decide(s.image, s.label, actions[n % 4])

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(decide, range(len(chosen))))
    decided = session.decisions()
    assert len(decided) == len(chosen)
    written = read_csv_manifest(session.out_csv).labels
    for n, s in enumerate(chosen):
        action, value = decided[(s.image, s.label)]
        assert action == actions[n % 4] and written[s.image, s.label] == value
    events = log_events(session.log_path)
    assert sum(e["event"] in ("accept", "reject", "unknown") for e in events) == len(chosen)


def test_app_requires_the_token_and_the_loopback_host(session: ReviewSession) -> None:
    client = create_app(session, TOKEN).test_client()
    assert client.get(f"/{TOKEN}/", headers=HOST).status_code == 200
    state = client.get(f"/{TOKEN}/api/state", headers=HOST)
    assert state.status_code == 200 and state.json["progress"]["total"] == len(session.suggestions)
    assert state.headers["Cache-Control"] == "no-store"
    assert "default-src 'none'" in state.headers["Content-Security-Policy"]
    for path in ("/", "/api/state", "/static/review.js", "/wrong/api/state", f"/{TOKEN}x/api/state"):
        assert client.get(path, headers=HOST).status_code == 403, path
    s = session.suggestions[session.order[0]]
    body = {"image": s.image, "label": s.label, "action": "accept"}
    assert client.post("/api/decide", json=body, headers=HOST).status_code == 403
    assert client.post(f"/{TOKEN}/api/decide", json=body, headers={"Host": "evil.example:5000"}).status_code == 403
    assert session.decisions() == {}
    # A form post (what another site could send without a preflight) is not a JSON decision.
    assert client.post(f"/{TOKEN}/api/decide", data=body, headers=HOST).status_code == 400
    answer = client.post(f"/{TOKEN}/api/decide", json=body, headers=HOST)
    assert answer.status_code == 200 and answer.json["decided"] == 1
    assert client.post(f"/{TOKEN}/api/decide", json={**body, "label": -5}, headers=HOST).status_code == 404


def test_image_route_serves_rows_only_no_path_traversal(session: ReviewSession, tmp_path: Path) -> None:
    client = create_app(session, TOKEN).test_client()
    image = client.get(f"/{TOKEN}/image/0", headers=HOST)
    assert image.status_code == 200 and image.data[:8] == b"\x89PNG\r\n\x1a\n"
    assert image.data == Path(session.image_path(0)).read_bytes()  # type: ignore[arg-type]
    secret = tmp_path / "secret.txt"
    secret.write_text("do not serve")
    attempts = [
        "image/../../etc/passwd",
        "image/..%2F..%2Fetc%2Fpasswd",
        "image/%2e%2e/%2e%2e/etc/passwd",
        f"image/{secret}",
        f"image/..%2F..%2F..%2F..%2F..%2F..%2F..%2F..{secret}",
        "image/-1",
        f"image/{len(session.cells)}",
        "static/../session.py",
        "static/..%2Fsession.py",
        "static/%2e%2e/app.py",
        f"static/{secret}",
    ]
    for attempt in attempts:
        answer = client.get(f"/{TOKEN}/{attempt}", headers=HOST, follow_redirects=True)
        assert answer.status_code in (403, 404), (attempt, answer.status_code)
        assert b"do not serve" not in answer.data and b"root:" not in answer.data and b"import" not in answer.data


def test_reviewed_manifest_trains_as_partial_labels(
    session: ReviewSession, manifests: tuple[Path, Path], tmp_path: Path
) -> None:
    for k in session.order[:6]:
        s = session.suggestions[k]
        session.decide(s.image, s.label, "reject" if k % 2 else "accept")
    # The reviewed manifest lives in another folder: its cells are paths relative to it, not the source's ids.
    assert rows(session.out_csv)[1][0] != rows(manifests[1])[1][0]
    labels = manifests[0]
    config = resolve_config(DataConfig, None, [f"train=csv:{labels}", f"partial_labels={session.out_csv}"])
    splits = prepare_splits(config)
    assert splits.source is not None and splits.train_rows is not None
    reviewed = read_csv_manifest(session.out_csv).labels
    assert np.array_equal(splits.train.labels, reviewed[splits.train_rows])
    # The command a person runs next: hst train data.partial_labels=REVIEWED.
    overrides = [f"data.train=csv:{labels}", f"data.partial_labels={session.out_csv}", "trainer.epochs=1"]
    assert main(["train", *TINY, f"trainer.output_dir={tmp_path}", "trainer.run_name=r2", *overrides]) == 0
    assert (tmp_path / "r2" / "checkpoints" / "best.ckpt").is_file()


def test_log_path_sits_beside_the_manifest() -> None:
    assert log_path(Path("a/b/reviewed.csv")) == Path("a/b/reviewed.decisions.jsonl")
