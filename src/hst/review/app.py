"""The review page's web application (Flask) and its server (waitress), bound to 127.0.0.1 only.

Every URL starts with a random token (``/<token>/...``); a request without it, or with another host name than
the loopback one (DNS rebinding), gets 403. Images are served by row number, never by a path taken from the
request, and the page's own files only from this package's ``static`` folder, so no request can read any
other file. Nothing is fetched from the internet: the page, its script and its style are served from here.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask, Response, abort, jsonify, redirect, request, send_file, send_from_directory

from hst.review.session import ACTIONS, ReviewSession

STATIC = Path(__file__).resolve().parent / "static"
HOST = "127.0.0.1"
LOOPBACK_NAMES = ("127.0.0.1", "localhost")
# The page talks to this server only; nothing else may load (no CDN, no inline script).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def new_token() -> str:
    return secrets.token_urlsafe(18)


def create_app(session: ReviewSession, token: str) -> Flask:
    """The Flask application serving ``session`` under ``/<token>/``."""
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024  # a decision is a few bytes
    prefix = f"/{token}"

    @app.before_request
    def check_request() -> Response | None:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        if host not in LOOPBACK_NAMES:
            abort(403, description="this page answers on 127.0.0.1 only")
        first = request.path.split("/", 2)[1] if request.path.startswith("/") else ""
        if not hmac.compare_digest(first.encode(), token.encode()):
            abort(403, description="the URL's token is missing or wrong: open the URL hst review printed")
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CSP
        response.headers["Referrer-Policy"] = "no-referrer"  # the token must not leak in a Referer header
        response.headers["X-Content-Type-Options"] = "nosniff"
        if not request.path.startswith(f"{prefix}/image/"):  # images may be cached; state and page never
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.get(prefix)
    def bare() -> Any:
        return redirect(f"{prefix}/")

    @app.get(f"{prefix}/")
    def page() -> Any:
        return send_from_directory(STATIC, "review.html")

    @app.get(f"{prefix}/static/<path:name>")
    def static_file(name: str) -> Any:
        # send_from_directory refuses any name that resolves outside STATIC (.., absolute, drive letters)
        return send_from_directory(STATIC, name)

    @app.get(f"{prefix}/image/<int:row>")
    def image(row: int) -> Any:
        path = session.image_path(row)
        if path is None or not path.is_file():
            abort(404)
        response = send_file(path.resolve(), max_age=3600)
        response.headers["Cache-Control"] = "private, max-age=3600"
        return response

    @app.get(f"{prefix}/api/state")
    def state() -> Any:
        return Response(session.state_json(), mimetype="application/json")

    @app.get(f"{prefix}/api/loop")
    def loop() -> Any:
        # polled by the page: which model ranks it, and whether an update runs
        return jsonify(session.loop_status())

    @app.post(f"{prefix}/api/decide")
    def decide() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            abort(400, description="send a JSON object {image, label, action}")
        image, label, action = body.get("image"), body.get("label"), body.get("action")
        if not isinstance(image, int) or not isinstance(label, int) or action not in ACTIONS:
            abort(400, description=f"image and label must be integers and action one of {', '.join(ACTIONS)}")
        try:
            return jsonify(session.decide(image, label, action))
        except KeyError:
            abort(404, description=f"no suggestion for image {image}, class {label}")

    @app.post(f"{prefix}/api/undo")
    def undo() -> Any:
        return jsonify(session.undo())

    return app


def make_server(session: ReviewSession, port: int = 0, token: str | None = None, threads: int = 4) -> tuple[Any, str]:
    """A waitress server for ``session`` on ``127.0.0.1:port`` (0: a free port), not yet running, and its URL."""
    from waitress import create_server

    token = token or new_token()
    # waitress would print its own URL, without the token; ours is the one to open
    logging.getLogger("waitress").setLevel(logging.WARNING)
    server = create_server(create_app(session, token), host=HOST, port=port, threads=threads, ident="hst-review")
    return server, f"http://{HOST}:{server.effective_port}/{token}/"  # type: ignore[union-attr]


def serve(
    session: ReviewSession,
    port: int = 0,
    token: str | None = None,
    announce: Callable[[str], None] = print,
    threads: int = 4,
) -> None:
    """Serve the review until interrupted; ``announce`` gets the URL to open."""
    import gc

    server, url = make_server(session, port, token, threads)
    # the review's many objects live as long as the server: no collection should walk them during a request
    gc.freeze()
    announce(url)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


__all__ = ["create_app", "make_server", "new_token", "serve"]
