"""The ``hst`` command line: the table of commands, the shared ``key=value`` overrides, the error report.

Each command is a module of ``hst.commands`` that declares its arguments (``add_arguments``) next to the code
that reads them (``run``); see ``hst VERB --help``. Command modules import nothing heavy until ``run``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import sys
from collections.abc import Sequence

# Command name (words after ``hst``) -> the module that declares and runs it; help lists them in this order.
COMMANDS: dict[str, str] = {
    "data stats": "hst.commands.data_stats",
    "make-partial": "hst.commands.make_partial",
    "metrics": "hst.commands.metrics",
    "train": "hst.commands.train",
    "evaluate": "hst.commands.evaluate",
    "benchmark": "hst.commands.benchmark",
    "extract-features": "hst.commands.extract_features",
    "report": "hst.commands.report",
    "predict": "hst.commands.predict",
    "complete": "hst.commands.complete",
    "review": "hst.commands.review",
    "simulate-review": "hst.commands.simulate_review",
    "export": "hst.commands.export",
}
# The commands that group others (``hst data stats``): their one-line help.
GROUPS: dict[str, str] = {"data": "inspect datasets"}

# Errors a user can act on, by the module that defines them (imported only if a command used it), and the exit code.
EXIT_CODES: tuple[tuple[str, str, int], ...] = (
    ("hst.config.loader", "ConfigError", 2),
    ("hst.data.base", "DataError", 2),
    ("builtins", "FileNotFoundError", 2),
    ("hst.io", "WriteError", 4),  # a full disk
    ("hst.io", "FolderBusyError", 4),  # a second writer
    ("hst.apps.benchmark", "BenchmarkError", 4),  # failed cells
    ("builtins", "FloatingPointError", 3),  # a non-finite loss: the message names the step and the checkpoint kept
)


class _TopParser(argparse.ArgumentParser):
    """The ``hst`` parser; its epilog lists the data specs, read only when that help is printed."""

    def format_help(self) -> str:
        from hst.data.spec import DATA_SPEC_HELP  # brings numpy: only ``hst --help`` needs it

        self.epilog = "Data specs:\n" + DATA_SPEC_HELP
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _TopParser(
        prog="hst",
        description="Multi-label image recognition with partial labels: HST and baselines.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=argparse.ArgumentParser)
    verbs.required = True
    groups: dict[str, argparse._SubParsersAction] = {}
    for name, module_path in COMMANDS.items():
        *group, verb = name.split()
        parent = verbs
        if group:
            if group[0] not in groups:
                help_text = GROUPS[group[0]]
                holder = verbs.add_parser(group[0], help=help_text, description=help_text.capitalize() + ".")
                groups[group[0]] = holder.add_subparsers(dest=f"{group[0]}_verb", metavar=f"{group[0].upper()}_VERB")
                groups[group[0]].required = True
            parent = groups[group[0]]
        command = importlib.import_module(module_path)
        sub = parent.add_parser(
            verb, help=command.HELP, description=command.HELP, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        command.add_arguments(sub)
        sub.set_defaults(run=command.run, options_schema=getattr(command, "Options", None))
    return parser


def resolve_options(schema: type, args: argparse.Namespace) -> object:
    """A command's ``Options``: its flags given on the command line, then the free ``key=value`` overrides."""
    from hst.config import resolve_config

    positional = getattr(args, "data", None)
    if isinstance(positional, str) and "=" in positional.split(":", 1)[0]:
        # A lone key=value lands in the optional positional slot; treat it as an override.
        args.overrides = [positional, *args.overrides]
        args.data = None
    names = [field.name for field in dataclasses.fields(schema)]
    flags = [f"{name}={json.dumps(getattr(args, name))}" for name in names if getattr(args, name) is not None]
    return resolve_config(schema, getattr(args, "config", None), [*flags, *args.overrides])


def exit_code(error: BaseException) -> int | None:
    """The exit code of an error the user can act on; None for a bug, which keeps its traceback."""
    for module_name, class_name, code in EXIT_CODES:
        module = sys.modules.get(module_name)  # an error class whose module was never imported was not raised
        if module is not None and isinstance(error, getattr(module, class_name)):
            return code
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.options_schema is not None:
            args.options = resolve_options(args.options_schema, args)
        return int(args.run(args))
    except Exception as error:
        code = exit_code(error)
        if code is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
