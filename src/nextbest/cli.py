"""The ``nextbest`` command: ``worker``, ``api``, ``simulate``, ``dev``, ``demo``, ``token``,
and the tools of :mod:`nextbest.tools`: ``validate``, ``send``, ``tail``, ``context``,
``erase``, ``deadletter replay``."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nextbest.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:
    from nextbest.adapters.access import KafkaNeeds

# command -> (module of nextbest.tools, help); each has add_arguments(parser), run(args, settings)
TOOLS = {
    "validate": ("validate", "check events (a file, or - for stdin) exactly as the worker would"),
    "send": ("send", "send one well-formed event to events.<channel>, keyed by the customer id"),
    "tail": ("tail", "follow triggers (or, with --deadletter, rejected records) as they come"),
    "context": ("lookup", "print a customer's live context from Redis"),
    "erase": ("erase", "erase a person by any of their identifiers (customer.erased, v0.2)"),
}


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
    dev.add_argument(
        "--secure",
        action="store_true",
        help="the secured stack: Kafka SASL_SSL + mutual TLS + ACLs, Redis TLS + ACL users",
    )
    demo = commands.add_parser(
        "demo", help="send a demo journey to events.<channel> and print triggers as they come"
    )
    demo.add_argument("--customer", default=None, help="the demo customer's id")
    token = commands.add_parser(
        "token",
        help="mint a widget token for one customer's context (printed alone on stdout)",
    )
    token.add_argument("--customer", help="the customer id the token opens")
    token.add_argument(
        "--ttl", default="15m", help="how long it is valid, e.g. 15m (at most the API's max)"
    )
    token.add_argument(
        "--key",
        type=Path,
        default=None,
        help="Ed25519 private key, PEM (default: NEXTBEST_WIDGET_TOKEN_PRIVATE_KEY_FILE)",
    )
    token.add_argument(
        "--new-key",
        type=Path,
        default=None,
        metavar="PATH",
        help="instead: write a new private key to PATH (mode 0600) and its public key to PATH.pub",
    )
    simulate = commands.add_parser(
        "simulate", help="send realistic omnichannel journeys to events.<channel> at a fixed rate"
    )
    simulate.add_argument("--rate", type=float, default=100.0, help="events per second")
    simulate.add_argument("--customers", type=int, default=10_000)
    simulate.add_argument("--seed", type=int, default=1)
    simulate.add_argument(
        "--duration", type=float, default=None, help="seconds (default: run until Ctrl-C)"
    )
    simulate.add_argument("--count", type=int, default=None, help="stop after this many events")
    simulate.add_argument(
        "--malformed", type=float, default=0.0, help="fraction of records to break on purpose"
    )
    simulate.add_argument(
        "--identities", action="store_true",
        help="channels know customers by cookies, app installs, phones, loyalty cards and "
        "shared tablets, and link them as people log in (contract v0.2)",
    )  # fmt: skip
    simulate.add_argument(
        "--think",
        type=_think,
        default=None,
        metavar="LOW-HIGH",
        help="seconds between a customer's own events, e.g. 1-6 (default: back to back)",
    )
    simulate.add_argument(
        "--skew",
        type=_skew,
        action="append",
        default=[],
        metavar="CHANNEL=SECONDS",
        help="deliver a channel's events that many seconds late, their time unchanged",
    )
    for command, (module, text) in TOOLS.items():
        _tool(module).add_arguments(commands.add_parser(command, help=text, description=text))
    deadletter = commands.add_parser("deadletter", help="work with events.deadletter")
    actions = deadletter.add_subparsers(dest="action", required=True, metavar="ACTION")
    replay = actions.add_parser(
        "replay",
        help="re-drive dead letters to their original topic",
        description="Re-drive dead letters to their original topic (see the README's rule).",
    )
    _tool("deadletter").add_arguments(replay)
    return parser


def _tool(module: str) -> Any:
    return importlib.import_module(f"nextbest.tools.{module}")


def _run_tool(module: str, args: argparse.Namespace, settings: Settings) -> int:
    """Ctrl-C ends a tool with status 0; a reader that goes away (``| head``) too."""
    try:
        status: int = _tool(module).run(args, settings)
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # stdout is gone: point it at /dev/null so that the exit flush stays silent
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    return status


def _think(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LOW-HIGH seconds") from None
    if not 0 < pair[0] <= pair[1]:
        raise argparse.ArgumentTypeError(f"{text!r}: need 0 < LOW <= HIGH")
    return pair


def _skew(text: str) -> tuple[str, float]:
    channel, _, seconds = text.partition("=")
    try:
        delay = float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not CHANNEL=SECONDS") from None
    if not channel or delay < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not CHANNEL=SECONDS")
    return channel, delay


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "dev":
        from nextbest.devstack import run as run_devstack

        return run_devstack(args.action, secure=args.secure)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    if args.command in TOOLS:
        return _run_tool(TOOLS[args.command][0], args, settings)
    if args.command == "deadletter":
        return _run_tool("deadletter", args, settings)
    if args.command == "worker":
        from nextbest.bootstrap import run_worker

        return run_worker(settings)
    if args.command == "api":
        from nextbest.bootstrap import run_api

        return run_api(settings)
    if args.command == "simulate":
        import asyncio
        import contextlib

        from nextbest.adapters.access import producer_needs
        from nextbest.adapters.clients import kafka_client_options
        from nextbest.simulator.journeys import Journeys
        from nextbest.simulator.sender import simulate

        if args.rate <= 0 or args.customers < 1 or not 0 <= args.malformed <= 1:
            print("nextbest: --rate and --customers must be positive, --malformed in 0..1",
                  file=sys.stderr)  # fmt: skip
            return 2
        unknown = [channel for channel, _ in args.skew if channel not in settings.channels]
        if unknown:
            print(f"nextbest: --skew names an unknown channel: {unknown[0]}", file=sys.stderr)
            return 2
        refused = _kafka_refuses(settings, producer_needs(settings))
        if refused is not None:
            return refused
        journeys = Journeys(
            customers=args.customers,
            seed=args.seed,
            channels=settings.channels,
            malformed=args.malformed,
            identities=args.identities,
        )
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(
                simulate(
                    journeys,
                    bootstrap=settings.kafka_bootstrap,
                    rate=args.rate,
                    duration=args.duration,
                    count=args.count,
                    client_options=kafka_client_options(settings),
                    think=args.think,
                    skew=dict(args.skew),
                )
            )
        return 0
    if args.command == "token":
        from nextbest.api.token_command import mint_command, new_key_command

        if args.new_key is not None:
            return new_key_command(args.new_key)
        return mint_command(settings, args.customer, args.ttl, args.key)
    if args.command == "demo":
        import asyncio
        import contextlib

        from nextbest.adapters.access import demo_needs
        from nextbest.adapters.clients import kafka_client_options
        from nextbest.devstack.demo import show

        refused = _kafka_refuses(settings, demo_needs(settings))
        if refused is not None:
            return refused
        options = kafka_client_options(settings)
        with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how the demo ends
            asyncio.run(show(settings.kafka_bootstrap, settings.channels, args.customer, options))
        return 0
    raise AssertionError(f"unhandled command {args.command}")


def _kafka_refuses(settings: Settings, needs: KafkaNeeds) -> int | None:
    """None when Kafka lets this command do its work, else the exit status (said on stderr)."""
    import asyncio

    from nextbest.adapters.access import AccessError, check_kafka
    from nextbest.adapters.clients import ClientConfigError

    try:
        asyncio.run(check_kafka(settings, needs))
    except ClientConfigError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 2
    except AccessError as error:
        print(f"nextbest: {error}", file=sys.stderr)
        return 1
    return None


if __name__ == "__main__":
    sys.exit(main())
