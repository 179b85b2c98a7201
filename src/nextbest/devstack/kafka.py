"""A single-node Apache Kafka 3.9 (KRaft, broker + controller) from Maven Central jars."""

from __future__ import annotations

import os
import shutil
import subprocess
from importlib import resources
from pathlib import Path
from typing import Any

from nextbest.devstack.probes import kafka_problem
from nextbest.devstack.processes import (
    DevStackError,
    Service,
    last_line,
    refuse_busy,
    require,
    say,
)

KAFKA_VERSION = "3.9.1"
MARKER = "kafka.Kafka"
READY_WITHIN = 90.0
STARTED = "Kafka Server started"


def cache_dir() -> Path:
    """Where the jars live, outside any repository: shared by every checkout."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nextbest" / f"kafka-{KAFKA_VERSION}"


def server_properties(data_dir: Path, port: int, controller_port: int) -> str:
    """The broker's configuration: one node, plain text on loopback, single-replica internals."""
    return "\n".join(
        [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.voters=1@127.0.0.1:{controller_port}",
            f"listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{port}",
            "inter.broker.listener.name=PLAINTEXT",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            f"log.dirs={data_dir.resolve()}",
            "num.partitions=8",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=1",
            # without these three, transactions (exactly_once) hang on one broker
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=1",
            "group.initial.rebalance.delay.ms=0",
            "group.min.session.timeout.ms=1000",
            # the 128 MiB default is taken from a small heap
            "log.cleaner.dedupe.buffer.size=16777216",
            "",
        ]
    )


def fetch_jars() -> Path:
    """The broker's jars, copied once from Maven Central into the cache.

    A marker file written after a complete copy records how many jars there
    are; a cache without it, or with fewer jars, is fetched again.
    """
    libs = cache_dir() / "libs"
    marker = cache_dir() / ".complete"
    if _complete(libs, marker):
        return libs
    mvn = require("mvn", "maven")
    say(f"fetching Apache Kafka {KAFKA_VERSION} from Maven Central into {libs} (once)")
    marker.unlink(missing_ok=True)
    shutil.rmtree(libs, ignore_errors=True)
    libs.mkdir(parents=True)
    pom = cache_dir() / "pom.xml"
    pom.write_text(_packaged("pom.xml"))
    done = subprocess.run(
        [mvn, "-B", "-q", "-f", str(pom), "dependency:copy-dependencies",
         "-DincludeScope=runtime", f"-DoutputDirectory={libs}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise DevStackError(
            f"Maven could not fetch Kafka {KAFKA_VERSION} (exit {done.returncode}): "
            + last_line(done.stdout + done.stderr)
        )
    jars = len(list(libs.glob("*.jar")))
    if not any(libs.glob("kafka_2.13-*.jar")):
        raise DevStackError(f"Maven finished but {libs} has no kafka_2.13 jar")
    marker.write_text(f"{KAFKA_VERSION} {jars}\n")
    say(f"fetched {jars} jars")
    return libs


def write_config(path: Path, text: str) -> None:
    """Write a server's configuration readable by this user only: it may hold passwords."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(text)


def _complete(libs: Path, marker: Path) -> bool:
    try:
        version, count = [*marker.read_text().split(), "1"][:2]
    except (OSError, ValueError):
        return False
    jars = list(libs.glob("*.jar"))
    return (
        version == KAFKA_VERSION
        and count.isdigit()
        and len(jars) >= int(count)
        and any(jar.name.startswith("kafka_2.13-") for jar in jars)
    )


def _packaged(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text()


class Kafka:
    def __init__(self, root: Path, port: int, controller_port: int) -> None:
        self.root = root / "kafka"
        self.port = port
        self.controller_port = controller_port
        self.server_log = self.root / "logs" / "server.log"
        self.service = Service(
            "Kafka",
            port,
            self.root / "kafka.pid",
            self.root / "logs" / "stdout.log",
            MARKER,
            detail_log=self.server_log,
        )

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> bool:
        """Start the broker unless ours runs; True when this call started it."""
        pid = self.service.pid()
        if pid is not None:
            say(f"Kafka already running at {self.bootstrap} (pid {pid})")
            return False
        self.check_ports()
        java = require("java", "openjdk-17-jre-headless")
        libs = fetch_jars()
        for folder in ("data", "logs", "tmp"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        config = self.root / "server.properties"
        self.prepare()
        write_config(config, self.properties())
        log4j = self.root / "log4j.properties"
        log4j.write_text(_packaged("log4j.properties"))
        classpath = f"{libs}/*"
        logging = [f"-Dlog4j.configuration=file:{log4j}", f"-Dkafka.logs.dir={self.root / 'logs'}"]
        self._format(java, classpath, logging, config)
        started_before = _count_started(self.server_log)
        say(f"starting Kafka {KAFKA_VERSION} on {self.bootstrap} (log: {self.server_log})")
        process = self.service.start(
            [java, "-Xms256m", "-Xmx1g", "-XX:+UseG1GC",
             f"-Djava.io.tmpdir={self.root / 'tmp'}", *logging,
             "-cp", classpath, MARKER, str(config)],
        )  # fmt: skip
        self.service.wait_until(
            process,
            lambda: (
                _count_started(self.server_log) > started_before
                and kafka_problem(self.bootstrap, within=3, **self.client_options()) is None
            ),
            within=READY_WITHIN,
            what=f"ready ('{STARTED}' logged and a metadata request answered)",
        )
        try:
            self.after_start()
        except BaseException:
            self.service.stop(within=15)
            raise
        say(f"Kafka {KAFKA_VERSION} ready at {self.bootstrap} (pid {process.pid})")
        return True

    # --- what a differently configured broker changes (see devstack.secure) ---------

    def prepare(self) -> None:
        """Before the configuration is written: make what it refers to."""

    def properties(self) -> str:
        return server_properties(self.root / "data", self.port, self.controller_port)

    def format_arguments(self) -> list[str]:
        """Extra ``kafka-storage format`` arguments (used only on a fresh data dir)."""
        return []

    def client_options(self) -> dict[str, Any]:
        """aiokafka options a client needs to talk to this broker (the readiness probe)."""
        return {}

    def after_start(self) -> None:
        """Once the broker answers: anything it needs before clients use it."""

    def check_ports(self) -> None:
        """Raise when ours is not running and another process holds one of our ports."""
        if self.service.pid() is None:
            refuse_busy(
                (self.port, self.controller_port),
                "Kafka",
                "NEXTBEST_DEV_KAFKA_PORT / NEXTBEST_DEV_CONTROLLER_PORT",
            )

    def _format(self, java: str, classpath: str, logging: list[str], config: Path) -> None:
        """Give the data dir a cluster id once; formatting again is a no-op (``-g``)."""
        cluster = self.root / "cluster.id"
        if not cluster.exists():
            made = _java_tool(java, classpath, logging, ["random-uuid"])
            cluster.write_text(made.strip() + "\n")
        _java_tool(
            java,
            classpath,
            logging,
            ["format", "-t", cluster.read_text().strip(), "-c", str(config), "-g",
             *self.format_arguments()],
        )  # fmt: skip

    def down(self) -> bool:
        """Stop the broker if ours runs; True when it was running."""
        return self.service.halt(within=60)

    def status(self) -> bool:
        return self.service.report(self.bootstrap)


def _java_tool(java: str, classpath: str, logging: list[str], arguments: list[str]) -> str:
    done = subprocess.run(
        [java, "-cp", classpath, *logging, "kafka.tools.StorageTool", *arguments],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DevStackError(
            f"kafka-storage {arguments[0]} failed ({done.returncode}): "
            + last_line(done.stderr or done.stdout)
        )
    return done.stdout


def _count_started(server_log: Path) -> int:
    try:
        return server_log.read_text(errors="replace").count(STARTED)
    except OSError:
        return 0
