"""The soak's processes: its own Kafka and Redis, and the workers, each one we can break."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from nextbest.devstack import DevStack, stack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_bytes(pid: int) -> int | None:
    """The process's resident set size now (VmRSS), or None once it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


@dataclass
class Worker:
    """One ``nextbest worker``; every start is a new incarnation with its own log."""

    name: str
    workdir: Path
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    incarnation: int = 0
    restarts: int = 0  # by wait_ready, after exiting while starting
    started_at: float = 0.0  # time.time() of the last start

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}-{self.incarnation}.log"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        self.incarnation += 1
        env = {**os.environ, **self.env, "NEXTBEST_WORKER_PORT": str(self.port)}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "nextbest.cli", "worker"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=True,
            )
        self.started_at = time.time()

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self) -> bool:
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as answer:
                return bool(answer.status == 200)
        return False

    def wait_ready(self, within: float) -> float:
        """Seconds until /readyz says ready; raises when it is not, within ``within``.

        A worker that exits while starting (say, the broker is still restarting:
        it refuses to start without one) is started again after a second, as a
        supervisor (Kubernetes, systemd) would.
        """
        start = time.monotonic()
        while time.monotonic() - start < within:
            if not self.alive():
                self.restarts += 1
                time.sleep(1.0)
                self.start()
                continue
            if self.ready():
                return time.monotonic() - start
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready within {within:.0f} s; see {self.log}")

    def signal(self, sig: int) -> None:
        if self.alive():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self, within: float = 60.0) -> tuple[float, int | None]:
        """SIGTERM; (seconds until it exited, exit status) — status None if it had to be killed."""
        if not self.alive():
            return 0.0, self.process.returncode if self.process else None
        assert self.process is not None
        self.signal(signal.SIGCONT)  # a paused worker cannot stop
        start = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            status: int | None = self.process.wait(within)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
            status = None
        return time.monotonic() - start, status

    def kill(self) -> None:
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)


@dataclass
class Services:
    """The soak's own Kafka and Redis (Redis keeps its data across a restart)."""

    dev: DevStack

    @classmethod
    def make(cls, root: Path, kafka_port: int, controller_port: int, redis_port: int) -> Services:
        os.environ.update(
            {
                "NEXTBEST_DEV_DIR": str(root),
                "NEXTBEST_DEV_KAFKA_PORT": str(kafka_port),
                "NEXTBEST_DEV_CONTROLLER_PORT": str(controller_port),
                "NEXTBEST_DEV_REDIS_PORT": str(redis_port),
            }
        )
        dev = stack()
        dev.redis.persistent = True
        return cls(dev)

    @property
    def bootstrap(self) -> str:
        return self.dev.kafka.bootstrap

    @property
    def redis_url(self) -> str:
        return self.dev.redis.url

    def up(self) -> None:
        self.dev.up()

    def down(self) -> None:
        self.dev.down()

    def kill_broker(self) -> None:
        pid = self.dev.kafka.service.pid()
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while self.dev.kafka.service.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.1)

    def start_broker(self) -> None:
        self.dev.kafka.up()

    def stop_redis(self) -> None:
        self.dev.redis.down()

    def start_redis(self) -> None:
        self.dev.redis.up()
