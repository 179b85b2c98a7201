"""``python -m nextbest.devstack up --record FILE`` / ``down --recorded FILE``: for scripts.

Like ``nextbest dev``, plus a record of what one ``up`` started, so that a
script (``make test``, the demo) stops exactly that and leaves alone a stack
that was already running before it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from nextbest.devstack import SERVICES, DevStackError, down, run, up
from nextbest.devstack.processes import say


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nextbest.devstack")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("--record", type=Path, help="up: write the services it started here")
    parser.add_argument("--recorded", type=Path, help="down: stop only those named in this file")
    parser.add_argument("--secure", action="store_true", help="the secured stack (TLS, SASL, ACLs)")
    args = parser.parse_args(argv)
    if args.action == "up" and args.record:
        started: tuple[str, ...] = ()
        try:
            started = up(secure=args.secure).started
            args.record.write_text(" ".join(started) + "\n")
        except DevStackError as error:
            say(f"error: {error}")
            return 1
        except BaseException:  # Ctrl-C once they run, before the record says so
            if started:
                down(started, secure=args.secure)
            raise
        return 0
    if args.action == "down" and args.recorded:
        try:
            names = args.recorded.read_text().split()
        except OSError:
            names = []
        only = [name for name in names if name in SERVICES]
        if not only:
            say("nothing to stop (this run started nothing)")
            return 0
        try:
            down(only, secure=args.secure)
        except DevStackError as error:
            say(f"error: {error}")
            return 1
        args.recorded.unlink(missing_ok=True)
        return 0
    return run(args.action, secure=args.secure)


if __name__ == "__main__":
    sys.exit(main())
