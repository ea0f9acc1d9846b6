"""The review page's loop at VOC 2007's size: one round's update and re-rank, and every request's time while it runs.

    python benchmarks/review_page_latency.py [--images 1625] [--classes 20] [--features 1280] [--round-size 130]

Synthetic pooled features and labels of that size (10% known), one tiny PNG per image, a review session with the
loop attached (``hst.review.loop``) served by waitress in this process, one torch thread as ``hst review`` sets. It
answers one round over HTTP, then, while the update runs, answers, polls and fetches the page's state and an image
in turn, and prints the update's time and each kind of request's median and maximum time.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from hst.apps.review_loop import ReviewLoop
from hst.config import MethodConfig
from hst.data.base import MultiLabelData
from hst.data.partial import make_partial
from hst.methods.pseudo_label_round import completion_settings
from hst.review.app import make_server
from hst.review.loop import LiveLoop
from hst.review.session import ReviewSession, Suggestion


def session_of(folder: Path, images: int, classes: int, features: int, round_size: int) -> ReviewSession:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(images, features)).astype(np.float32)
    logits = x @ rng.normal(size=(features, classes)) / np.sqrt(features) - 1.5
    full = np.where(logits + 0.5 * rng.normal(size=logits.shape) > 0, 1, -1).astype(np.int8)
    partial = make_partial(full, "entry", 0.1, 0)
    names = [f"img{i}.png" for i in range(images)]
    for name in names:
        Image.new("RGB", (64, 64)).save(folder / name)
    data = MultiLabelData(names, partial, [f"c{k}" for k in range(classes)], image_paths=[folder / n for n in names])
    (folder / "input.csv").write_text("image\n")
    unknown = np.argwhere(partial == 0)
    suggestions = [Suggestion(int(i), int(c), -1, 0.9, 0.1, 0.5) for i, c in unknown]
    session = ReviewSession(data, names, suggestions, folder / "out" / "reviewed.csv", folder / "input.csv")
    loop = ReviewLoop(x, partial, completion_settings(MethodConfig(), 0.9), "rarest")
    start = time.perf_counter()
    session.attach(LiveLoop(loop, np.arange(images), partial.shape, session.out_csv, round_size))
    print(f"{len(suggestions)} open questions; model v0 fit and ranked in {time.perf_counter() - start:.1f} s")
    return session


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=1625)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--features", type=int, default=1280)
    parser.add_argument("--round-size", dest="round_size", type=int, default=130)
    args = parser.parse_args()
    torch.set_num_threads(1)
    folder = Path(tempfile.mkdtemp(prefix="hst-review-latency-"))
    session = session_of(folder, args.images, args.classes, args.features, args.round_size)
    assert session.live is not None
    server, url = make_server(session, 0, "token")
    gc.freeze()  # as hst review's serve does
    threading.Thread(target=server.run, daemon=True).start()
    order = [(row[0], row[1]) for row in session.state()["suggestions"]]

    def timed(request: urllib.request.Request | str) -> float:
        start = time.perf_counter()
        with urllib.request.urlopen(request, timeout=60) as response:
            response.read()
        return time.perf_counter() - start

    def answer(entry: tuple[int, int]) -> urllib.request.Request:
        body = json.dumps({"image": entry[0], "label": entry[1], "action": "reject"}).encode()
        return urllib.request.Request(f"{url}api/decide", data=body, headers={"Content-Type": "application/json"})

    idle = [timed(answer(e)) for e in order[: args.round_size - 1]]
    start = time.perf_counter()
    idle.append(timed(answer(order[args.round_size - 1])))  # the round's last answer starts the update
    during: dict[str, list[float]] = {"decide": [], "loop": [], "state": [], "image": []}
    k = args.round_size
    while session.live.status()["updating"]:
        during["decide"].append(timed(answer(order[k])))
        during["loop"].append(timed(f"{url}api/loop"))
        during["image"].append(timed(f"{url}image/0"))
        if k % 4 == 0:
            during["state"].append(timed(f"{url}api/state"))
        k += 1
        time.sleep(0.1)
    ranking = session.live.ranking
    assert ranking is not None
    print(f"update and re-rank: {time.perf_counter() - start:.1f} s (the model's fit {ranking.seconds:.1f} s)")
    print(f"answers before the update: median {1000 * statistics.median(idle):.0f} ms, max {1000 * max(idle):.0f} ms")
    for name, found in during.items():
        if found:
            median, most = 1000 * statistics.median(found), 1000 * max(found)
            print(f"during the update, {name}: {len(found)} requests, median {median:.0f} ms, max {most:.0f} ms")
    server.close()


if __name__ == "__main__":
    main()
