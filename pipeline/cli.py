"""The single command line entry point: ``vlm3r-data <command> [options]``.

Each command is one module in :mod:`pipeline.commands` exposing ``HELP`` (one line), ``add_arguments(parser)``
and ``run(args) -> int`` (the exit status). Modules are imported lazily so ``--help`` stays fast and a command's
heavy dependencies (torch, ray) load only when that command runs.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

# Order = the order of the pipeline; ``--help`` lists them like this.
COMMANDS = (
    "demo", "run", "ingest", "extract", "graph", "routes", "qa", "pack", "train", "eval",
    "stats", "status", "cut3r", "import-meta", "export-meta", "dump-tokens",
)


def _module_name(command: str) -> str:
    return "pipeline.commands." + command.replace("-", "_")


def available_commands() -> list[str]:
    """Commands whose module exists in this build."""
    return [c for c in COMMANDS if importlib.util.find_spec(_module_name(c)) is not None]


def _read_help(command: str) -> str:
    # Read the HELP line without importing the module (imports may pull in torch).
    spec = importlib.util.find_spec(_module_name(command))
    assert spec is not None and spec.origin
    with open(spec.origin, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("HELP = "):
                return line.split("=", 1)[1].strip().strip("\"'")
    return ""


def build_parser() -> argparse.ArgumentParser:
    from pipeline.core.version import __version__

    parser = argparse.ArgumentParser(
        prog="vlm3r-data",
        description="Indoor 3D scans -> CUT3R geometry-token shards, scene graphs, spatial QA, training shards.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vlm3r-data {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", title="stages and commands")
    for command in available_commands():
        sub.add_parser(command, help=_read_help(command), add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = available_commands()
    if not argv or argv[0] not in commands:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return 2
        parser.parse_args(argv)  # prints --help / --version or the "invalid choice" error and exits
        return 2
    command, rest = argv[0], argv[1:]
    module = importlib.import_module(_module_name(command))
    parser = argparse.ArgumentParser(
        prog=f"vlm3r-data {command}", description=module.HELP,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    from pipeline.config import ConfigError
    from pipeline.core.layout import DatasetRootError

    try:
        return int(module.run(args) or 0)
    except (DatasetRootError, ConfigError) as exc:  # a wrong root or config: a message, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
