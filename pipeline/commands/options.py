"""Command-line pieces shared by the stage commands: how a run goes (Ray or in-process, rebuild, stale inputs)."""
from __future__ import annotations

import argparse
import contextlib
from typing import Iterator, Sequence

from pipeline.stages.contract import RunOptions


def positive(kind: type = int):
    """An argparse ``type`` for a number > 0 (a bad value is a usage error, exit 2, before anything runs)."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_ray_options(parser: argparse.ArgumentParser, workers_help: str = "Ray workers (local Ray cluster size)",
                    default_workers: int = 2) -> None:
    parser.add_argument("--local", action="store_true", help="run in-process instead of on Ray (debugging)")
    parser.add_argument("--workers", type=positive(int), default=default_workers, help=workers_help)
    parser.add_argument("--ray-address", default=None, help="join an existing Ray cluster (e.g. auto)")


def add_rebuild(parser: argparse.ArgumentParser, alias: str | None = None, what: str = "units") -> None:
    names = ["--rebuild"] + ([alias] if alias else [])
    parser.add_argument(*names, dest="rebuild", action="store_true",
                        help=f"redo the selected {what} even when up to date, or after their configuration or inputs "
                             "changed; what downstream stages made from them becomes stale"
                             + (f" ({alias} is the former name)" if alias else ""))


def add_allow_stale(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-stale", action="store_true",
                        help="use inputs made from outputs that were rebuilt since (refused by default)")


def without_options(argv: Sequence[str], options: Sequence[str]) -> tuple[str, ...]:
    """``argv`` with the given options and their values removed (the command that covers every unit)."""
    out: list[str] = []
    skipping = False
    for arg in argv:
        name = arg.split("=", 1)[0]
        if name in options:
            skipping = "=" not in arg
            continue
        if skipping and not arg.startswith("--"):
            continue
        skipping = False
        out.append(arg)
    return tuple(out)


def run_options(args: argparse.Namespace, *, subset: bool = False, selection: Sequence[str] = ()) -> RunOptions:
    """RunOptions from parsed arguments; ``selection`` names the options that choose a subset of the units."""
    argv = tuple(getattr(args, "argv", ()) or ())
    return RunOptions(local=getattr(args, "local", False), workers=max(1, getattr(args, "workers", 2) or 1),
                      ray_address=getattr(args, "ray_address", None), rebuild=getattr(args, "rebuild", False),
                      allow_stale=getattr(args, "allow_stale", False), subset=subset,
                      progress=not getattr(args, "no_progress", False), command=argv,
                      rebuild_command=without_options(argv, selection))


def split_list(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]`` (options that take space- or comma-separated names)."""
    if not values:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


@contextlib.contextmanager
def config_errors(stage: str) -> Iterator[None]:
    """Turn the ValueError of an invalid setting (a config dataclass refusing a value) into a refusal (exit 2)."""
    from pipeline.stages.contract import StageRefused

    try:
        yield
    except ValueError as exc:
        raise StageRefused(f"{stage}: {exc}") from None
