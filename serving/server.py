"""The process `mtlops serve` becomes (PID 1 in a container): BentoML's arbiter, which starts and
respawns the workers, plus what a server start owns and a watchdog over its workers.

A server start owns a run folder, `<tmp>/mtlops-serve-<random>`: the workers' control folder
(serving/worker.py), Prometheus' multiprocess folder and the process manager's control sockets.
A new start never reuses a name, so nothing a dead server left behind is ever read (a container
restarts as PID 1 with the same /tmp: state keyed on a PID would be). The folder is locked while
this process lives and removed on exit; a folder whose lock is free was left by a server that was
killed, and the next start removes it.

The watchdog reads each worker's heartbeat (written by its event loop): a worker silent for
`stall_seconds` makes the server report not ready (/readyz 503 from every worker, so a load
balancer stops sending), one silent for `stall_seconds + restart_after_seconds` is killed and
BentoML starts another. Every worker exit is logged with its cause and counted in /metrics
(`mtlops_worker_exits_total{cause}`); the workers running and those beating in time are gauges
there too (`mtlops_workers`, `mtlops_workers_ready`). A worker that cannot serve the champion writes why and stops
the server: the process exits non-zero with that reason instead of respawning workers forever
behind a socket that accepts connections and never answers.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("bentoml.mtlops")  # a child of the logger BentoML configures, in the server and its workers

RUN_PREFIX = "mtlops-serve-"
LOCK_FILE = "server.lock"
# what the workers write into the control folder and this process reads (serving/worker.py)
FATAL_FILE = "fatal.txt"
HEARTBEAT_FOLDER = "heartbeat"
STALLED_FILE = "stalled"
EXITS_FOLDER = "exits"
EXIT_STATUS_FATAL = 3


def sweep_abandoned(tmp: Path, min_age_seconds: float = 60.0) -> list[Path]:
    """Remove run folders whose server is gone (their lock is free); returns what was removed.
    A folder younger than `min_age_seconds` is left alone: its server may not have locked it yet."""
    removed = []
    for folder in tmp.glob(f"{RUN_PREFIX}*"):
        try:
            if time.time() - folder.stat().st_mtime < min_age_seconds:
                continue
        except FileNotFoundError:
            continue
        try:
            with (folder / LOCK_FILE).open("a") as handle:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a live server holds it
        except OSError:
            pass  # no lock file: a start that died before taking it, or not ours to read
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


class RunFolder:
    """This start's folder, locked for as long as the server lives."""

    def __init__(self, tmp: Path | None = None) -> None:
        tmp = Path(tmp or tempfile.gettempdir())
        sweep_abandoned(tmp)
        self.path = Path(tempfile.mkdtemp(prefix=RUN_PREFIX, dir=tmp))
        self._lock = (self.path / LOCK_FILE).open("a")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        self.control = self.path / "control"
        self.prometheus = self.path / "prometheus"
        self.control.mkdir()

    @property
    def fatal_reason(self) -> str | None:
        path = self.control / FATAL_FILE
        return path.read_text() if path.exists() else None

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()


class WatchdogMetrics:
    """This process' series in /metrics, beside the workers' (Prometheus' multiprocess folder)."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.exits = Counter("mtlops_worker_exits", "Worker processes that exited, by cause "
                             "(stalled: killed by the watchdog; crashed: no clean shutdown; stopped)", ["cause"])
        self.workers = Gauge("mtlops_workers", "Worker processes running", multiprocess_mode="mostrecent")
        self.ready = Gauge("mtlops_workers_ready", "Worker processes whose event loop beat within the stall "
                           "limit (a stalled or starting worker is not ready)", multiprocess_mode="mostrecent")


class Watchdog(threading.Thread):
    """Heartbeats in `<control>/heartbeat/<pid>` (mtime), the stalled workers' pids in `<control>/stalled`."""

    def __init__(self, control: Path, stall_seconds: float, restart_after_seconds: float,
                 interval: float = 0.25) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.heartbeats = control / HEARTBEAT_FOLDER
        self.stalled_file = control / STALLED_FILE
        self.exits_folder = control / EXITS_FOLDER
        self.stall_seconds = stall_seconds
        self.restart_after_seconds = restart_after_seconds
        self.interval = interval
        self.known: set[int] = set()  # the workers seen alive
        self.stalled: set[int] = set()
        self.killed: dict[int, str] = {}
        self._metrics: WatchdogMetrics | None = None

    def run(self) -> None:
        self.heartbeats.mkdir(parents=True, exist_ok=True)
        while True:
            time.sleep(self.interval)
            try:
                self.look()
            except Exception:  # the watchdog must outlive anything it reads
                log.exception("watchdog: check failed")

    def look(self) -> None:
        now = time.time()
        workers = set(worker_pids())
        for pid in self.known - workers:
            self._exited(pid)
        for pid in sorted(workers - self.known):
            self.known.add(pid)
            log.info("worker %d started", pid)
        for pid in sorted(workers):
            try:  # no heartbeat yet: still starting (it accepts no connection before it beats)
                age = now - (self.heartbeats / str(pid)).stat().st_mtime
            except FileNotFoundError:
                continue
            if age > self.stall_seconds + self.restart_after_seconds and pid not in self.killed:
                self.killed[pid] = f"stalled: no heartbeat for {age:.1f} s"
                log.error("watchdog: worker %d's event loop stalled for %.1f s: killing it (BentoML starts another)",
                          pid, age)
                os.kill(pid, signal.SIGKILL)
            elif age > self.stall_seconds and pid not in self.stalled:
                self.stalled.add(pid)
                log.warning("watchdog: worker %d's event loop stalled for %.1f s: the server reports not ready",
                            pid, age)
            elif age <= self.stall_seconds and pid in self.stalled:
                self.stalled.discard(pid)
                log.warning("watchdog: worker %d recovered", pid)
        self._publish_stalled()
        if workers:  # BentoML has emptied the multiprocess folder before it started them
            ready = [pid for pid in workers if self._beating(pid, now)]
            self.metrics().workers.set(len(workers))
            self.metrics().ready.set(len(ready))

    def _beating(self, pid: int, now: float) -> bool:
        """Started (it beats from the moment it accepts connections) and not stalled."""
        try:
            return now - (self.heartbeats / str(pid)).stat().st_mtime <= self.stall_seconds
        except FileNotFoundError:
            return False

    def _exited(self, pid: int) -> None:
        reason_file = self.exits_folder / str(pid)
        if pid in self.killed:
            cause, why = "stalled", self.killed.pop(pid)
        elif reason_file.exists():
            cause, why = "stopped", reason_file.read_text()
        else:
            cause, why = "crashed", "exited without a clean shutdown (killed by a signal, out of memory, or a crash)"
        level = logging.INFO if cause == "stopped" else logging.ERROR
        log.log(level, "worker %d exited (%s): %s", pid, cause, why)
        self.metrics().exits.labels(cause=cause).inc()
        self.known.discard(pid)
        self.stalled.discard(pid)
        for f in (self.heartbeats / str(pid), reason_file):
            f.unlink(missing_ok=True)

    def metrics(self) -> WatchdogMetrics:
        # created on first use: BentoML empties the multiprocess folder while it starts the workers
        if self._metrics is None:
            self._metrics = WatchdogMetrics()
        return self._metrics

    def _publish_stalled(self) -> None:
        text = " ".join(map(str, sorted(self.stalled)))
        current = self.stalled_file.read_text() if self.stalled_file.exists() else ""
        if text != current:
            tmp = self.stalled_file.with_suffix(".tmp")
            tmp.write_text(text)
            tmp.replace(self.stalled_file)


def worker_pids(server: int | None = None) -> list[int]:
    """The BentoML workers (each holds its own model) under a server process (default: this one,
    where BentoML's arbiter starts them as its children)."""
    import psutil

    pids = []
    for child in psutil.Process(server).children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(child.cmdline()):
                pids.append(child.pid)
        except psutil.Error:  # exited between the listing and the look
            continue
    return pids


def control_sockets_in(folder: Path) -> None:
    """BentoML's process manager (circus) talks to itself over two ZeroMQ sockets, by default on TCP
    ports it picks free and binds a moment later: another process can take one in between (seen with
    many servers starting on one machine; the start fails), and any local user can connect to them.
    Unix sockets in this start's run folder have neither problem."""
    from bentoml._internal.utils import circus

    def create_standalone_arbiter(watchers: list[Any], *, threaded: bool = False, **kwargs: Any) -> Any:
        arbiter_cls = circus.ThreadedArbiter if threaded else circus.Arbiter
        return arbiter_cls(watchers, endpoint=f"ipc://{folder / 'circus.sock'}",
                           pubsub_endpoint=f"ipc://{folder / 'circus-pubsub.sock'}",
                           check_delay=kwargs.pop("check_delay", 10), **kwargs)

    circus.create_standalone_arbiter = create_standalone_arbiter


def main(argv: list[str]) -> int:
    """`python -m serving.server <bentoml serve arguments>`: settings come from the environment
    (serving.runtime.ServingSettings), as they do in the workers."""
    run = RunFolder()
    os.environ["MTLOPS_CONTROL_DIR"] = str(run.control)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(run.prometheus)  # before prometheus_client is imported
    try:
        from bentoml._internal.configuration.containers import BentoMLContainer
        from bentoml_cli.cli import cli

        from serving.runtime import ServingSettings

        settings = ServingSettings.from_env()
        BentoMLContainer.prometheus_multiproc_dir.set(str(run.prometheus))
        Watchdog(run.control, settings.stall_seconds, settings.restart_after_seconds).start()
        control_sockets_in(run.path)
        try:
            cli.main(args=["serve", *argv], prog_name="bentoml", standalone_mode=False)
        except SystemExit as exc:
            if exc.code not in (0, None):
                return int(exc.code) if isinstance(exc.code, int) else 1
        if reason := run.fatal_reason:
            print(f"mtlops serve: stopped: {reason}", file=sys.stderr)
            return EXIT_STATUS_FATAL
        return 0
    finally:
        run.remove()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
