"""The ``hst`` command line.

Every verb takes its options as flags and, equivalently, as dotted ``key=value`` overrides (and, for
training, a ``--config`` YAML file); see ``hst VERB --help``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hst.apps.benchmark import BenchmarkError
from hst.config import ConfigError, resolve_config
from hst.data.base import DataError
from hst.data.spec import DATA_SPEC_HELP
from hst.io import FolderBusyError, WriteError

EPILOG_OVERRIDES = "Options can also be given as dotted key=value overrides after the positional arguments."


@dataclass
class DataStatsOptions:
    data: str = "synthetic"
    top: int = 10


@dataclass
class MakePartialOptions:
    data: str = "synthetic"
    scheme: str = "entry"
    proportion: float = 0.5
    seed: int = 0
    out: str = ""


@dataclass
class MetricsOptions:
    scores: str = ""
    labels: str = ""
    json: bool = False
    scores_are_probabilities: bool = False


def _options(schema: type, args: argparse.Namespace, names: Sequence[str]) -> object:
    # Flags given on the command line become overrides, applied before the free key=value ones.
    positional = getattr(args, "data", None)
    if isinstance(positional, str) and "=" in positional.split(":", 1)[0]:
        # A lone key=value lands in the optional positional slot; treat it as an override.
        args.overrides = [positional, *args.overrides]
        args.data = None
    flags = [f"{name}={json.dumps(getattr(args, name))}" for name in names if getattr(args, name) is not None]
    return resolve_config(schema, getattr(args, "config", None), [*flags, *args.overrides])


def _print(lines: Sequence[str]) -> None:
    for line in lines:
        print(line)


def _print_metrics(metrics: dict, with_rates: bool = False) -> None:
    print(f"mAP {metrics['mAP']:.2f}  OF1 {metrics['OF1']:.2f}  CF1 {metrics['CF1']:.2f}")
    if with_rates:
        print(f"OP {metrics['OP']:.2f}  OR {metrics['OR']:.2f}  CP {metrics['CP']:.2f}  CR {metrics['CR']:.2f}")
    print("per-class AP:")
    for name, value in metrics["per_class_AP"].items():
        print(f"  {name}: {value:.2f}")


def cmd_data_stats(args: argparse.Namespace) -> int:
    from hst.data.spec import load_dataset
    from hst.data.stats import dataset_stats

    options = _options(DataStatsOptions, args, ["data", "top"])
    assert isinstance(options, DataStatsOptions)
    data = load_dataset(options.data)
    print(f"dataset: {data.source}")
    _print(dataset_stats(data, top=options.top).lines())
    return 0


def cmd_make_partial(args: argparse.Namespace) -> int:
    from hst.data.partial import make_partial, partial_stats
    from hst.data.readers import write_csv_manifest
    from hst.data.spec import load_dataset

    options = _options(MakePartialOptions, args, ["data", "scheme", "proportion", "seed", "out"])
    assert isinstance(options, MakePartialOptions)
    if not options.out:
        raise ConfigError("make-partial needs --out FILE.csv")
    data = load_dataset(options.data)
    partial = make_partial(data.labels, options.scheme, options.proportion, options.seed)
    out = Path(options.out)
    write_csv_manifest(data.with_labels(partial), out)
    print(f"wrote {out} ({options.scheme}, proportion {options.proportion}, seed {options.seed}) from {data.source}")
    _print(partial_stats(partial, data.class_names, full=data.labels).lines())
    return 0


def cmd_metrics(args: argparse.Namespace) -> int:
    from hst.apps.evaluate import evaluate_score_files

    options = _options(MetricsOptions, args, ["scores", "labels", "json", "scores_are_probabilities"])
    assert isinstance(options, MetricsOptions)
    if not options.scores or not options.labels:
        raise ConfigError("metrics needs --scores S.csv and --labels L.csv")
    result, messages = evaluate_score_files(options.scores, options.labels, options.scores_are_probabilities)
    for message in messages:
        print(f"warning: {message}", file=sys.stderr)
    if options.json:
        print(json.dumps(result.to_dict()))
        return 0
    _print_metrics(result.to_dict(), with_rates=True)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from hst.config import TrainConfig
    from hst.engine.train import resume_training, train

    if args.resume:
        if args.config:
            raise ConfigError("--resume continues a run with its own saved config.yaml; leave out --config")
        result = resume_training(Path(args.resume), args.overrides)
    else:
        result = train(resolve_config(TrainConfig, args.config, args.overrides))
    if result.rank != 0:  # under DDP only the main process reports
        return 0
    print()
    print(f"run folder: {result.run_dir}")
    for line in result.summary_lines:
        print(line)
    test = result.test_metrics
    if test:
        print(f"test mAP {test['mAP']:.2f}  OF1 {test['OF1']:.2f}  CF1 {test['CF1']:.2f}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from hst.apps.evaluate import evaluate_checkpoint

    metrics = evaluate_checkpoint(Path(args.checkpoint), args.data)
    if args.json:
        print(json.dumps(metrics))
        return 0
    _print_metrics(metrics)
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from hst.apps.benchmark import options_from_text, run_benchmark

    options = options_from_text(
        args.config,
        args.out,
        list(args.overrides),
        args.methods,
        args.proportions,
        args.seeds,
        args.tune,
        args.tune_seeds,
        args.workers,
        args.allow_diagnostics,
    )
    run_benchmark(options)
    out = Path(options.out)
    print((out / "results.md").read_text())
    print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")
    return 0


def cmd_extract_features(args: argparse.Namespace) -> int:
    from hst.apps.extract_features import extract_features
    from hst.config import TrainConfig

    config = resolve_config(TrainConfig, args.config, args.overrides)
    _print(extract_features(config, progress=True))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hst.apps.report import build_report

    page = build_report(Path(args.run_dir), Path(args.out) if args.out else None)
    print(f"wrote {page}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hst.apps.predict import predict

    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in {".csv", ".json"}:
        raise ConfigError(f"--out must end in .csv or .json, got {out}")
    result = predict(
        Path(args.checkpoint),
        args.input,
        batch_size=args.batch_size,
        threshold=args.threshold,
        top_k=args.top_k,
        on_error=args.on_error,
        image_size=args.image_size,
        device=args.device,
    )
    _print(result.table_lines(limit=None if args.show < 0 else args.show))
    rule = result.rule
    predicted = int(result.selected().sum())
    print(f"{len(result)} images, {predicted} predicted labels ({rule}), {len(result.class_names)} classes")
    if result.skipped:
        print(f"skipped {len(result.skipped)} unreadable images:", file=sys.stderr)
        for image, reason in result.skipped:
            print(f"  {image}: {reason}", file=sys.stderr)
    if out is not None:
        result.write(out, all_scores=args.all_scores)
        print(f"wrote {out}")
    return 0


def _threshold_help() -> str:
    return (
        "a probability in [0, 1] for every class, 'tuned' (per-class thresholds tuned for F1 on the "
        "validation split at train time, stored in the checkpoint) or 'auto' (tuned when present, else 0.5)"
    )


def cmd_complete(args: argparse.Namespace) -> int:
    if args.precision is not None:
        from hst.apps.complete_at_precision import complete_at_precision
        from hst.engine.module import PartialLabelModule

        calibrated = complete_at_precision(
            PartialLabelModule.from_checkpoint(Path(args.checkpoint)),
            args.partial_labels,
            Path(args.out),
            args.precision,
            data=args.data,
            calibrate_on=args.calibrate_on,
            negatives=not args.positives_only,
            batch_size=args.batch_size,
            on_error=args.on_error,
            device=args.device,
        )
        _print(calibrated.lines())
        return 0
    from hst.apps.complete import complete

    result = complete(
        Path(args.checkpoint),
        args.partial_labels,
        Path(args.out),
        data=args.data,
        min_confidence=args.min_confidence,
        threshold=args.threshold,
        evidence=not args.no_evidence,
        batch_size=args.batch_size,
        on_error=args.on_error,
        device=args.device,
    )
    _print(result.lines())
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from hst.review.cli import run_review

    return run_review(args)


def cmd_export(args: argparse.Namespace) -> int:
    from hst.apps.export import ParityError, export_checkpoint

    try:
        result = export_checkpoint(
            Path(args.checkpoint), Path(args.out), args.format, args.image_size, tolerance=args.tolerance
        )
    except ParityError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print(result.lines())
    return 0


Handler = Callable[[argparse.Namespace], int]


def _inference_arguments(sub: argparse.ArgumentParser) -> None:
    """The options of a pass over images that predict and complete share."""
    sub.add_argument("--batch-size", dest="batch_size", type=int, default=32, help="images per batch (32)")
    sub.add_argument(
        "--on-error",
        dest="on_error",
        choices=["error", "skip"],
        default="error",
        help="unreadable or missing image: stop (default) or skip it and report",
    )
    sub.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (cpu)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hst",
        description="Multi-label image recognition with partial labels: HST and baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Data specs:\n" + DATA_SPEC_HELP,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True

    def verb(
        parent: argparse._SubParsersAction, name: str, help_text: str, handler: Handler
    ) -> argparse.ArgumentParser:
        sub = parent.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EPILOG_OVERRIDES,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.set_defaults(handler=handler)
        return sub

    data = verbs.add_parser("data", help="inspect datasets", description="Inspect datasets.")
    data_verbs = data.add_subparsers(dest="data_verb", metavar="DATA_VERB")
    data_verbs.required = True
    stats = verb(
        data_verbs, "stats", "images, classes, positives per image, frequent co-occurring pairs", cmd_data_stats
    )
    stats.add_argument("data", nargs="?", default=None, help="data spec (default: synthetic)")
    stats.add_argument("--top", type=int, default=None, help="number of co-occurring pairs to list (10)")
    stats.add_argument("overrides", nargs="*", metavar="key=value")

    partial = verb(verbs, "make-partial", "hide labels by a seeded protocol and write a CSV manifest", cmd_make_partial)
    partial.add_argument("data", nargs="?", default=None, help="data spec of the fully labelled dataset")
    partial.add_argument(
        "--scheme",
        default=None,
        choices=["entry", "image-count", "class", "single-positive"],
        help="entry (published protocol, default), image-count, class, single-positive",
    )
    partial.add_argument("--proportion", type=float, default=None, help="known proportion in [0, 1] (0.5)")
    partial.add_argument("--seed", type=int, default=None, help="random seed (0)")
    partial.add_argument("--out", default=None, help="output CSV manifest")
    partial.add_argument("overrides", nargs="*", metavar="key=value")

    metrics = verb(verbs, "metrics", "mAP, OF1, CF1 and per-class AP of a score file against a label file", cmd_metrics)
    metrics.add_argument("--scores", default=None, help="CSV: image,<classes…> with real-valued scores")
    metrics.add_argument("--labels", default=None, help="CSV manifest with 1/-1/0/empty labels")
    metrics.add_argument("--json", action="store_const", const=True, default=None, help="print one JSON object")
    metrics.add_argument(
        "--scores-are-probabilities",
        dest="scores_are_probabilities",
        action="store_const",
        const=True,
        default=None,
        help="scores are probabilities (threshold 0.5) rather than logits (threshold 0)",
    )
    metrics.add_argument("overrides", nargs="*", metavar="key=value")

    train = verb(
        verbs, "train", "train a method (HST by default) and test the checkpoint chosen on validation", cmd_train
    )
    train.add_argument("--config", default=None, help="YAML config file (e.g. configs/paper/voc2007.yaml)")
    train.add_argument(
        "--resume",
        default=None,
        metavar="RUN_DIR",
        help="continue an interrupted run exactly from its last checkpoint (same folder, same "
        "config; overrides such as trainer.epochs=30 extend it)",
    )
    train.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="e.g. data.proportion=0.5 method.name=partial_bce trainer.epochs=20",
    )

    evaluate = verb(
        verbs, "evaluate", "score a dataset with a trained checkpoint (mAP, OF1, CF1, per-class AP)", cmd_evaluate
    )
    evaluate.add_argument("checkpoint", help="checkpoint file written by hst train (checkpoints/best.ckpt)")
    evaluate.add_argument("data", help="data spec with full labels")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object")

    bench = verb(
        verbs, "benchmark", "methods x known proportions x seeds under one protocol (resumable)", cmd_benchmark
    )
    bench.add_argument("--config", default=None, help="base training config (YAML)")
    bench.add_argument("--methods", default=None, help="comma-separated (default hst,partial_bce,sst,assume_negative)")
    bench.add_argument("--proportions", default=None, help="comma-separated known proportions (default 0.1,...,0.9)")
    bench.add_argument("--seeds", default=None, help="comma-separated seeds (default 0)")
    bench.add_argument("--out", default="benchmark", help="output folder (results.csv/.md/.png, runs/)")
    bench.add_argument(
        "--tune",
        default=None,
        help="per-method grid chosen on validation mAP, e.g. "
        "'linear_assume_negative:optim.lr=0.003,0.03;optim.weight_decay=0,0.001' "
        "(several methods joined by '+'; 'all:...' gives every method the same grid)",
    )
    bench.add_argument(
        "--tune-seeds",
        default=None,
        help="seeds whose cells train the whole grid; the other seeds reuse the point chosen there "
        "for the same method and proportion (default: every cell tunes)",
    )
    bench.add_argument(
        "--workers", type=int, default=1, help="cells trained at once in separate processes, CPU threads shared out (1)"
    )
    bench.add_argument(
        "--allow-diagnostics",
        action="store_true",
        help="train diagnostic options (method.pseudo_label_oracle other than none, trainer.select_on=test), "
        "refused otherwise; their rows are marked [diagnostic: ...] in results.csv and results.md",
    )
    bench.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the training config")

    extract = verb(
        verbs,
        "extract-features",
        "run the frozen backbone once over the data of a config and store its feature maps "
        "(float16, memory-mapped; reused by training with model.trainable=none)",
        cmd_extract_features,
    )
    extract.add_argument("--config", default=None, help="YAML config file (e.g. configs/coco128-benchmark.yaml)")
    extract.add_argument("overrides", nargs="*", metavar="key=value", help="overrides of the training config")

    report = verb(verbs, "report", "one self-contained HTML page (plus PNGs) of a run or benchmark folder", cmd_report)
    report.epilog = None  # no key=value overrides here
    report.add_argument("run_dir", help="run folder written by hst train, or an hst benchmark folder")
    report.add_argument("--out", default=None, help="output folder (default RUN_DIR/report)")

    pred = verb(verbs, "predict", "label new images (file, folder or data spec) with a trained checkpoint", cmd_predict)
    pred.epilog = None  # no key=value overrides here
    pred.add_argument("checkpoint", help="checkpoint file written by hst train (checkpoints/best.ckpt)")
    pred.add_argument("input", help="image file, folder (searched recursively) or data spec (csv:FILE, ...)")
    pred.add_argument("--out", default=None, help="FILE.csv (image,label,probability per predicted label) or FILE.json")
    pred.add_argument(
        "--threshold", "--thresholds", dest="threshold", default="0.5", help="0.5 (default): " + _threshold_help()
    )
    pred.add_argument(
        "--top-k",
        dest="top_k",
        type=int,
        default=None,
        help="predict the k most probable labels of each image instead of thresholding",
    )
    pred.add_argument(
        "--all-scores",
        dest="all_scores",
        action="store_true",
        help="CSV: image,<classes…> probabilities of every class (for hst metrics "
        "--scores-are-probabilities); JSON: add a probabilities object",
    )
    _inference_arguments(pred)
    pred.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=None,
        help="resize images to N×N (default: the training size)",
    )
    pred.add_argument("--show", type=int, default=20, help="images listed in the printed table (20; -1 = all)")

    comp = verb(
        verbs,
        "complete",
        "fill the unknown labels of a partially labelled dataset with a trained checkpoint (classifier + "
        "IST/CST evidence); known labels are never changed",
        cmd_complete,
    )
    comp.epilog = None  # no key=value overrides here
    comp.add_argument("checkpoint", help="checkpoint file written by hst train (checkpoints/best.ckpt)")
    comp.add_argument(
        "partial_labels", help="CSV manifest with 1/-1/empty labels (as hst make-partial writes), or any data spec"
    )
    comp.add_argument(
        "--out", required=True, help="completed CSV manifest; OUT.confidence.csv lists every filled entry"
    )
    comp.add_argument(
        "--data",
        default=None,
        help="data spec with the full labels of the same images: prints precision/recall of the "
        "filled labels at several confidence levels",
    )
    comp.add_argument(
        "--min-confidence",
        dest="min_confidence",
        type=float,
        default=0.9,
        help="entries filled with lower confidence stay unknown (0.9)",
    )
    comp.add_argument(
        "--threshold", "--thresholds", dest="threshold", default="auto", help="auto (default): " + _threshold_help()
    )
    comp.add_argument(
        "--no-evidence",
        dest="no_evidence",
        action="store_true",
        help="use the classifier alone (no IST co-occurrence or CST prototype evidence)",
    )
    comp.add_argument(
        "--precision",
        type=float,
        default=None,
        help="fill with the cross-fitted rule calibrated per class on the known labels so that the filled labels "
        "are P precise (e.g. 0.9); classes that cannot reach P are left unfilled and listed (replaces the "
        "confidence rule and its options)",
    )
    comp.add_argument(
        "--calibrate-on",
        dest="calibrate_on",
        default=None,
        help="with --precision: the manifest before a person reviewed it; only its (randomly chosen) known "
        "labels calibrate the rule",
    )
    comp.add_argument(
        "--positives-only", dest="positives_only", action="store_true", help="with --precision: fill positives only"
    )
    _inference_arguments(comp)

    from hst.review.cli import add_review_arguments

    review = verb(
        verbs,
        "review",
        "serve a local page (127.0.0.1) where a person accepts or rejects the labels a "
        "checkpoint suggests; every decision is saved at once to the output manifest",
        cmd_review,
    )
    review.epilog = None  # no key=value overrides here
    add_review_arguments(review)

    export = verb(
        verbs,
        "export",
        "export a checkpoint's inference graph (images → probabilities) to ONNX or "
        "TorchScript, with a JSON sidecar and a parity check",
        cmd_export,
    )
    export.epilog = None  # no key=value overrides here
    export.add_argument("checkpoint", help="checkpoint file written by hst train (checkpoints/best.ckpt)")
    export.add_argument("--format", required=True, choices=["onnx", "torchscript"], help="onnx or torchscript")
    export.add_argument("--out", required=True, help="output file (model.onnx / model.pt); FILE.json is the sidecar")
    export.add_argument(
        "--image-size",
        dest="image_size",
        type=int,
        default=None,
        help="input height and width N (default: the training size)",
    )
    export.add_argument(
        "--tolerance",
        type=float,
        default=1e-4,
        help="largest allowed |exported - torch| probability in the parity check (1e-4)",
    )

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except (ConfigError, DataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except (WriteError, FolderBusyError, BenchmarkError) as error:  # full disk, a second writer, failed cells
        print(f"error: {error}", file=sys.stderr)
        return 4
    except FloatingPointError as error:  # a non-finite loss: the message names the step and the checkpoint kept
        print(f"error: {error}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
