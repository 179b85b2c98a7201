"""Background services we start ourselves: pid files, ownership, ports, readiness."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Handles of the children this process started: kept so that they are reaped
# when stopped and are not reported as leaked while they run on purpose.
_STARTED: dict[int, subprocess.Popen[bytes]] = {}


class DevStackError(Exception):
    """Something the dev stack needs is missing or in the way; one line says what."""


@contextmanager
def exclusive(lock_file: Path) -> Iterator[None]:
    """Hold an exclusive lock: one ``up`` or ``down`` at a time per dev dir."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def say(message: str) -> None:
    print(f"nextbest dev: {message}", flush=True)


def port_answers(port: int, host: str = "127.0.0.1", within: float = 0.5) -> bool:
    """Does anything accept TCP connections on ``host:port``?"""
    try:
        with socket.create_connection((host, port), timeout=within):
            return True
    except OSError:
        return False


def refuse_busy(ports: Sequence[int], what: str, override: str) -> None:
    """Raise naming the first port someone else's process listens on."""
    for port in ports:
        if port_answers(port):
            raise DevStackError(
                f"port {port} is in use by a process nextbest dev did not start (wanted for "
                f"{what}): stop it or set {override}"
            )


def require(command: str, debian_package: str) -> str:
    """The path of ``command``; installs Debian's package first when missing and root."""
    found = shutil.which(command)
    if found:
        return found
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise DevStackError(
            f"`{command}` is not on PATH: install it (Debian: apt-get install -y {debian_package})"
        )
    say(f"`{command}` is missing: installing Debian's {debian_package}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for step in (
        ["apt-get", "update", "-qq"],
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", debian_package],
    ):
        done = subprocess.run(step, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise DevStackError(
                f"`{' '.join(step)}` failed ({done.returncode}): {last_line(done.stderr)}"
            )
    found = shutil.which(command)
    if not found:
        raise DevStackError(f"installed {debian_package} but `{command}` is still not on PATH")
    return found


@dataclass(frozen=True)
class Service:
    """A process we start in the background and stop by its pid file.

    ``marker`` must appear in the process's command line for the pid file to
    count as ours: a recycled pid of someone else's process is never signalled.
    """

    name: str
    port: int
    pid_file: Path
    log_file: Path
    marker: str
    detail_log: Path | None = None  # where the service logs what went wrong, if not log_file

    def pid(self) -> int | None:
        """Our running process's pid, or None (removes a stale pid file)."""
        pid = read_pid(self.pid_file)
        if pid is not None and owns(pid, self.marker):
            return pid
        self.pid_file.unlink(missing_ok=True)
        return None

    def start(self, command: Sequence[str]) -> subprocess.Popen[bytes]:
        """Start ``command`` in its own session, output appended to the log file."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log:
            process = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal is not for it
            )
        self.pid_file.write_text(f"{process.pid}\n")
        _STARTED[process.pid] = process
        return process

    def wait_until(
        self,
        process: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        within: float,
        what: str,
    ) -> None:
        """Wait for ``ready``; on failure stop the process and say why, with its log.

        Interrupted (Ctrl-C), it stops the process too: nothing half-started is left.
        """
        deadline = time.monotonic() + within
        try:
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    self._forget(process)
                    raise DevStackError(
                        f"{self.name} exited ({process.returncode}) while starting; "
                        f"its logs end:\n{self.tail()}"
                    )
                if ready():
                    return
                time.sleep(0.2)
        except BaseException:
            self.stop(within=15)
            self._forget(process)
            raise
        self.stop(within=15)
        self._forget(process)
        raise DevStackError(
            f"{self.name} not {what} within {within:.0f}s; its logs end:\n{self.tail()}"
        )

    def halt(self, within: float) -> bool:
        """Stop ours and say so; True when it was running."""
        if self.stop(within=within):
            say(f"{self.name} stopped")
            return True
        say(f"{self.name} was not running (none started by nextbest dev)")
        return False

    def report(self, address: str) -> bool:
        """Say whether ours runs at ``address``; True when it does."""
        pid = self.pid()
        if pid is not None:
            say(f"{self.name}: running at {address} (pid {pid})")
            return True
        if port_answers(self.port):
            say(
                f"{self.name}: stopped; port {self.port} is busy: "
                "not a process nextbest dev started"
            )
            return False
        say(f"{self.name}: stopped")
        return False

    def stop(self, within: float = 30.0) -> bool:
        """Stop our process (SIGTERM, then SIGKILL); False if none was running."""
        pid = self.pid()
        if pid is None:
            return False
        os.kill(pid, signal.SIGTERM)
        if not _gone(pid, self.marker, within):
            say(f"{self.name} (pid {pid}) ignored SIGTERM for {within:.0f}s: SIGKILL")
            os.kill(pid, signal.SIGKILL)
            _gone(pid, self.marker, 10)
        child = _STARTED.pop(pid, None)
        if child is not None:
            child.wait()
        self.pid_file.unlink(missing_ok=True)
        return True

    def _forget(self, process: subprocess.Popen[bytes]) -> None:
        _STARTED.pop(process.pid, None)
        if read_pid(self.pid_file) == process.pid:
            self.pid_file.unlink(missing_ok=True)

    def tail(self) -> str:
        """The last lines of its logs, to say why it failed."""
        logs = [self.log_file] + ([self.detail_log] if self.detail_log else [])
        return "\n".join(f"--- {log}:\n{tail(log)}" for log in logs if log.exists())


def _gone(pid: int, marker: str, within: float) -> bool:
    deadline = time.monotonic() + within
    while owns(pid, marker):
        child = _STARTED.get(pid)
        if child is not None:
            child.poll()  # reap it if it exited
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def read_pid(pid_file: Path) -> int | None:
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def owns(pid: int, marker: str) -> bool:
    """Is ``pid`` alive (not a zombie) and running a command line containing ``marker``?"""
    for _ in range(50):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        if stat.rsplit(")", 1)[-1].split()[0] == "Z":
            return False
        if cmdline:
            return marker.encode() in cmdline
        # Empty while the process is between fork and the end of exec: look again.
        time.sleep(0.01)
    return False


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"
