"""The dev stack's pure parts: broker configuration, pid ownership, busy ports."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from nextbest import devstack
from nextbest.devstack import kafka
from nextbest.devstack.__main__ import main as devstack_main
from nextbest.devstack.kafka import Kafka, server_properties
from nextbest.devstack.processes import DevStackError, Service, owns, port_answers
from nextbest.devstack.redis import Redis
from tests.integration.harness import free_port


def test_server_properties_are_a_single_kraft_node(tmp_path: Path) -> None:
    text = server_properties(tmp_path / "data", 19092, 19093)
    lines = dict(line.split("=", 1) for line in text.splitlines() if line)
    assert lines["process.roles"] == "broker,controller"
    assert lines["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert lines["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert lines["log.dirs"] == str((tmp_path / "data").resolve())
    for name in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    ):
        assert lines[name] == "1"


def test_a_pid_file_counts_only_for_our_own_command(tmp_path: Path) -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert owns(child.pid, "time.sleep(30)")
        assert not owns(child.pid, "kafka.Kafka")  # a recycled pid is not ours
        service = Service("x", 1, tmp_path / "x.pid", tmp_path / "x.log", "kafka.Kafka")
        service.pid_file.write_text(f"{child.pid}\n")
        assert service.pid() is None
        assert not service.pid_file.exists()  # a stale pid file is removed
        assert not service.stop()
        assert child.poll() is None  # and the foreign process was left alone
    finally:
        child.kill()
        child.wait()


def test_a_busy_port_is_refused_with_its_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_answers(port)
        with pytest.raises(DevStackError, match=f"port {port} is in use"):
            Redis(tmp_path, port).up()
        with pytest.raises(DevStackError, match=f"port {port} is in use"):
            Kafka(tmp_path, port, port).up()


def test_ports_come_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEXTBEST_DEV_DIR", str(tmp_path))
    monkeypatch.setenv("NEXTBEST_DEV_KAFKA_PORT", "19092")
    monkeypatch.setenv("NEXTBEST_DEV_REDIS_PORT", "16379")
    stack = devstack.stack()
    assert stack.kafka.bootstrap == "127.0.0.1:19092"
    assert stack.redis.url == "redis://127.0.0.1:16379/0"
    assert stack.kafka.root == tmp_path / "kafka"
    monkeypatch.setenv("NEXTBEST_DEV_REDIS_PORT", "lots")
    assert devstack.run("status") == 1


def test_status_of_a_stopped_stack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("NEXTBEST_DEV_DIR", str(tmp_path))
    for name, port in (("KAFKA", 1), ("CONTROLLER", 2), ("REDIS", 3)):
        monkeypatch.setenv(f"NEXTBEST_DEV_{name}_PORT", str(port))
    assert devstack.run("status") == 3
    out = capsys.readouterr().out
    assert "Kafka: stopped" in out
    assert "Redis: stopped" in out
    assert os.environ["NEXTBEST_DEV_DIR"] == str(tmp_path)


def test_the_jar_cache_counts_only_when_complete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = kafka.cache_dir()
    assert cache == tmp_path / "nextbest" / f"kafka-{kafka.KAFKA_VERSION}"
    libs, marker = cache / "libs", cache / ".complete"
    libs.mkdir(parents=True)
    for name in ("kafka_2.13-3.9.1.jar", "kafka-clients-3.9.1.jar", "zstd-jni.jar"):
        (libs / name).write_bytes(b"")
    assert not kafka._complete(libs, marker)  # no marker: Maven did not finish
    marker.write_text(f"{kafka.KAFKA_VERSION} 3\n")
    assert kafka._complete(libs, marker)
    (libs / "zstd-jni.jar").unlink()
    assert not kafka._complete(libs, marker)  # a jar went missing
    marker.write_text("3.8.0 2\n")
    assert not kafka._complete(libs, marker)  # another version


def test_a_record_of_nothing_started_stops_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "started"
    record.write_text("\n")
    assert devstack_main(["down", "--recorded", str(record)]) == 0
    assert "nothing to stop" in capsys.readouterr().out


def test_a_ctrl_c_between_a_start_and_its_return_leaves_nothing_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`make run` with Ctrl-C right after "Redis ready": the up() that was cut stops
    the server it had started, though it never returned to say so."""
    started: list[subprocess.Popen[bytes]] = []

    def cut_up(self: Redis) -> bool:
        # a stand-in for redis-server (its marker in the command line), then Ctrl-C
        command = [sys.executable, "-c", "import time; time.sleep(60)", "redis-server"]
        started.append(self.service.start(command))
        raise KeyboardInterrupt

    monkeypatch.setattr(Kafka, "up", lambda self: False)  # (already running: not ours)
    monkeypatch.setattr(Redis, "up", cut_up)
    ports = [free_port() for _ in range(3)]
    stack = devstack.DevStack(
        tmp_path, Kafka(tmp_path, ports[0], ports[1]), Redis(tmp_path, ports[2])
    )
    with pytest.raises(KeyboardInterrupt):
        stack.up()
    assert len(started) == 1
    assert started[0].poll() is not None  # stopped
    assert stack.redis.service.pid() is None
