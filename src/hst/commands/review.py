"""``hst review``: a local page where a person accepts or rejects the labels a checkpoint suggests."""

from __future__ import annotations

import argparse
import sys

from hst.commands import CHECKPOINT_HELP, add_evidence_argument, add_inference_arguments, print_lines

HELP = (
    "serve a local page (127.0.0.1) where a person accepts or rejects the labels a "
    "checkpoint suggests; every decision is saved at once, and every round of them updates the model that ranks "
    "the questions"
)
ROUND_SIZE = 130  # hst.review.loop.ROUND_SIZE, here so that --help does not import the review's dependencies


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help=CHECKPOINT_HELP)
    parser.add_argument(
        "partial_labels",
        help="CSV manifest with 1/-1/empty labels and image files (as hst make-partial writes); it is never written",
    )
    parser.add_argument(
        "--out",
        required=True,
        help="reviewed CSV manifest, rewritten at every decision; OUT.decisions.jsonl is the "
        "decision log. If both exist the review resumes",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument(
        "--threshold",
        "--thresholds",
        dest="threshold",
        default="auto",
        help="decision threshold of the suggestions: auto (tuned per class when the checkpoint "
        "has them, else 0.5), tuned, or a probability",
    )
    add_evidence_argument(parser)
    parser.add_argument(
        "--precision",
        type=float,
        default=None,
        help="suggest what hst complete --precision P fills (the cross-fitted rule, calibrated per class on the "
        "input's known labels, never on this review's decisions); the page states the promise per class, and "
        "entries the rule leaves unknown come last with no suggestion (replaces --threshold and --no-evidence)",
    )
    parser.add_argument(
        "--round-size",
        dest="round_size",
        type=int,
        default=ROUND_SIZE,
        help="answers per round: after each round the model is updated from the backbone's pooled features in the "
        f"background and the open questions are re-ranked ({ROUND_SIZE}, the round size docs/review-loop.md "
        "measured; 0: no loop, the checkpoint's order, most doubtful first)",
    )
    parser.add_argument(
        "--policy",
        default=None,
        help="question policy that ranks the open questions: random, uncertain, positive, rarest, image, mix "
        "(default: rarest, the one docs/review-loop.md measured best)",
    )
    parser.add_argument(
        "--calibrate-on",
        dest="calibrate_on",
        default=None,
        help="when the input was itself reviewed: the file as it was before that review; only its (randomly "
        "chosen) known labels calibrate the rule of --precision and the loop's model",
    )
    parser.add_argument(
        "--positives-only",
        dest="positives_only",
        action="store_true",
        help="with --precision: suggest positives only",
    )
    # Unreadable images are always skipped here: a review page can go on without them.
    add_inference_arguments(parser, on_error=False)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hst.review.app import serve
    from hst.review.suggest import open_review, promise_lines

    if not 0 <= args.port <= 65535:
        print(f"error: --port must be in 0..65535, got {args.port}", file=sys.stderr)
        return 2
    from hst.methods.question_policy import DEFAULT_POLICY, POLICIES

    if args.precision is None and args.positives_only:
        print("error: --positives-only goes with --precision", file=sys.stderr)
        return 2
    if args.precision is None and args.round_size == 0 and args.calibrate_on is not None:
        print("error: --calibrate-on goes with --precision or the loop (--round-size > 0)", file=sys.stderr)
        return 2
    if args.round_size < 0 or (args.policy is not None and args.policy not in POLICIES):
        print(f"error: --round-size must be ≥ 0 and --policy one of {', '.join(POLICIES)}", file=sys.stderr)
        return 2
    session = open_review(
        Path(args.checkpoint),
        args.partial_labels,
        Path(args.out),
        threshold=args.threshold,
        evidence=not args.no_evidence,
        precision=args.precision,
        calibrate_on=args.calibrate_on,
        negatives=not args.positives_only,
        round_size=args.round_size,
        policy=args.policy or DEFAULT_POLICY,
        batch_size=args.batch_size,
        on_error="skip",
        device=args.device,
    )
    progress = session.progress()
    if session.promise is None:
        found = f"{progress['total']} suggestions on {len(session.cells)} images"
    else:
        suggested = progress["total"] - session.promise["unsuggested"]
        found = f"{progress['total']} unknown entries on {len(session.cells)} images, {suggested} with a suggestion"
    print(f"{found} (evidence: {' + '.join(session.evidence)}), {progress['decided']} already decided")
    if session.promise is not None:
        print_lines(promise_lines(session.promise))
    for reason in session.ignored:
        print(f"warning: decision log line not applied: {reason}", file=sys.stderr)
    if session.skipped:
        print(f"skipped {len(session.skipped)} unreadable images (no suggestions for them)", file=sys.stderr)
    print(f"saving every decision to {session.out_csv} and {session.log_path}")
    loop = session.loop_status()
    if loop is not None:
        import torch

        # the updates' small probe fits fastest on one thread, and a core stays free for the page's requests
        torch.set_num_threads(1)
        print(
            f"model v{loop['version']} (trained on {loop['learnt']} answers) ranks the questions with the "
            f"{loop['policy']!r} policy; it is updated after every {loop['round_size']} answers"
        )

    def announce(url: str) -> None:
        print(f"review page: {url}\n(Ctrl-C stops the server; every decision is saved as it is made)", flush=True)

    try:
        serve(session, port=args.port, announce=announce)
    except OSError as error:  # the port is taken, or not ours to use
        print(f"error: cannot serve on 127.0.0.1:{args.port}: {error}", file=sys.stderr)
        return 2
    final = session.progress()
    print(f"stopped: {final['decided']} of {final['total']} suggestions decided; reviewed manifest: {session.out_csv}")
    return 0
