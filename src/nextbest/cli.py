"""The ``nextbest`` command: ``worker``, ``dev up|down|status`` and more as they land."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from nextbest.settings import SettingsError, load_settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nextbest", description="Streaming real-time customer context engine."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "worker", help="consume events.<channel>, keep context, emit triggers (settings: env)"
    )
    dev = commands.add_parser(
        "dev", help="local Kafka and Redis for development and tests, without Docker"
    )
    dev.add_argument("action", choices=("up", "down", "status"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev":
        from nextbest.devstack import run as run_devstack

        return run_devstack(args.action)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    if args.command == "worker":
        from nextbest.bootstrap import run_worker

        return run_worker(settings)
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
