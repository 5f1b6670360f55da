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
    "demo", "run", "ingest", "extract", "graph", "routes", "qa", "pack", "train", "predict", "eval",
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
    """Run one command; returns its exit status: 0 done, 1 some inputs failed (error rows), 2 refused (a wrong
    argument, path, root or configuration: a message, never a traceback)."""
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
    args.argv = [command, *rest]
    return _run(command, module, args)


def _run(command: str, module, args: argparse.Namespace) -> int:
    from pipeline.config import ConfigError
    from pipeline.core.errors import InputError
    from pipeline.core.layout import DatasetRootError
    from pipeline.core.lock import LockError
    from pipeline.stages.contract import BookkeepingFailed, StageRefused

    try:
        return int(module.run(args) or 0)
    except (StageRefused, LockError, DatasetRootError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InputError as exc:             # an input of the whole command is unusable (a file named in the message)
        print(f"error: {command}: {exc}", file=sys.stderr)
        return 2
    except BookkeepingFailed:             # already said in one line
        return 1
    except OSError as exc:                # a read-only root, a full disk, a path that is not a folder, ...
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"error: {command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2 if isinstance(exc, (PermissionError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                     FileExistsError)) else 1
    except KeyboardInterrupt:
        print(f"\n{command}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
