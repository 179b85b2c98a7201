"""Redis 7 from Debian's redis-server, on loopback; without persistence unless asked."""

from __future__ import annotations

from pathlib import Path

from nextbest.devstack.probes import redis_pings
from nextbest.devstack.processes import (
    Service,
    refuse_busy,
    require,
    say,
)

MARKER = "redis-server"
READY_WITHIN = 20.0


class Redis:
    """``persistent``: keep the data across a restart (an append-only file), as the
    soak needs when it stops Redis and starts it again; the dev stack does not."""

    def __init__(self, root: Path, port: int, *, persistent: bool = False) -> None:
        self.root = root / "redis"
        self.port = port
        self.persistent = persistent
        self.service = Service(
            "Redis", port, self.root / "redis.pid", self.root / "redis.log", MARKER
        )

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def up(self) -> bool:
        """Start the server unless ours runs; True when this call started it."""
        pid = self.service.pid()
        if pid is not None:
            say(f"Redis already running at {self.url} (pid {pid})")
            return False
        self.check_ports()
        server = require("redis-server", "redis-server")
        self.root.mkdir(parents=True, exist_ok=True)
        say(f"starting Redis on {self.url} (log: {self.service.log_file})")
        process = self.service.start([server, *self.arguments()])
        self.service.wait_until(process, self.answers, within=READY_WITHIN, what="answering PING")
        say(f"Redis ready at {self.url} (pid {process.pid})")
        return True

    def arguments(self) -> list[str]:
        """redis-server's command line after the program."""
        appendonly = "yes" if self.persistent else "no"
        return [
            *("--port", str(self.port), "--bind", "127.0.0.1", "--save", ""),
            *("--appendonly", appendonly, "--daemonize", "no", "--dir", str(self.root)),
        ]

    def answers(self) -> bool:
        return redis_pings(self.port)

    def check_ports(self) -> None:
        """Raise when ours is not running and another process holds our port."""
        if self.service.pid() is None:
            refuse_busy((self.port,), "Redis", "NEXTBEST_DEV_REDIS_PORT")

    def down(self) -> bool:
        """Stop the server if ours runs; True when it was running."""
        return self.service.halt(within=15)

    def status(self) -> bool:
        return self.service.report(self.url)
