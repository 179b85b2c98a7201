"""The ``nextbest`` command: ``worker``, ``api``, ``dev up|down|status``, ``demo``."""

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
    commands.add_parser(
        "api", help="serve live context over HTTP and Server-Sent Events (reads Redis)"
    )
    dev = commands.add_parser(
        "dev", help="local Kafka and Redis for development and tests, without Docker"
    )
    dev.add_argument("action", choices=("up", "down", "status"))
    commands.add_parser(
        "demo", help="send a demo journey to events.<channel> and print triggers as they come"
    )
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
    if args.command == "api":
        from nextbest.bootstrap import run_api

        return run_api(settings)
    if args.command == "demo":
        import asyncio
        import contextlib

        from nextbest.devstack.demo import show

        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the demo ends
            asyncio.run(show(settings.kafka_bootstrap, settings.channels))
        return 0
    raise AssertionError(f"unhandled command {args.command}")


if __name__ == "__main__":
    sys.exit(main())
