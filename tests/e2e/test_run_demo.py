"""``make run | tee run.log``, then Ctrl-C: the clean-up stops Kafka and Redis anyway.

Ctrl-C reaches the whole foreground job, ``tee`` included, so the script's
clean-up runs with its output going to a pipe nobody reads any more. It used to
die there (SIGPIPE on its first ``echo``) and leave Kafka and Redis running.
Here the script runs on its own dev stack (fresh ports and directory), its
stdout and stderr in a pipe; once Kafka and Redis are up, the reader goes away
and the process group gets SIGINT, as from a terminal.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nextbest.devstack.processes import port_answers, tail
from tests.integration.harness import free_port

pytestmark = pytest.mark.timeout(300)
REPO = Path(__file__).resolve().parents[2]
READY = b"Redis ready at "


def read_until(fd: int, marker: bytes, within: float) -> bytes:
    seen = b""
    deadline = time.monotonic() + within
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{marker!r} not seen within {within}s; output:\n{seen.decode()}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"the script ended before {marker!r}:\n{seen.decode()}")
            seen += chunk
    return seen


def test_ctrl_c_with_the_pipe_reader_gone_still_stops_kafka_and_redis(tmp_path: Path) -> None:
    dev = tmp_path / "dev"
    ports = {name: free_port() for name in ("kafka", "controller", "redis", "worker", "api")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("NEXTBEST_KAFKA_BOOTSTRAP", "NEXTBEST_REDIS_URL")}  # fmt: skip
    env.update(
        NEXTBEST_DEV_DIR=str(dev),
        NEXTBEST_DEV_KAFKA_PORT=str(ports["kafka"]),
        NEXTBEST_DEV_CONTROLLER_PORT=str(ports["controller"]),
        NEXTBEST_DEV_REDIS_PORT=str(ports["redis"]),
        NEXTBEST_WORKER_PORT=str(ports["worker"]),
        NEXTBEST_API_PORT=str(ports["api"]),
        NEXTBEST_DATA_DIR=str(tmp_path / "data"),
    )
    reader, writer = os.pipe()
    script = subprocess.Popen(
        ["bash", str(REPO / "deploy/local/run-demo.sh")],
        stdin=subprocess.DEVNULL,
        stdout=writer,
        stderr=writer,
        env=env,
        start_new_session=True,  # its own process group: the terminal's foreground job
    )
    os.close(writer)
    try:
        read_until(reader, READY, within=180)
        assert port_answers(ports["kafka"])
        assert port_answers(ports["redis"])
        os.close(reader)  # tee is gone ...
        reader = -1
        os.killpg(script.pid, signal.SIGINT)  # ... and Ctrl-C reaches the whole job
        status = script.wait(timeout=90)
        assert status == 130
        assert not port_answers(ports["kafka"]), "Kafka still runs after Ctrl-C"
        assert not port_answers(ports["redis"]), "Redis still runs after Ctrl-C:\n" + tail(
            dev / "redis" / "redis.log"
        )
        assert sorted(p.name for p in dev.rglob("*.pid")) == []
    finally:
        if reader >= 0:
            os.close(reader)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(script.pid, signal.SIGKILL)
        script.wait(timeout=30)
        # whatever happened above, stop this test's own stack (never anyone else's)
        subprocess.run(
            [sys.executable, "-m", "nextbest.devstack", "down"],
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
