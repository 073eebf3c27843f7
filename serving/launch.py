"""Start `mtlops serve` as a child process and wait until it is ready (tests, benchmarks, the replay)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

PROJECT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """One `mtlops serve` on 127.0.0.1; `stop()` sends SIGTERM so the prediction log is flushed.
    `prefix` runs it under another command (e.g. `unshare --pid --fork` to make it PID 1)."""

    def __init__(self, config: Path, output: Path, port: int | None = None, prediction_log: Path | None = None,
                 max_rows: int = 1024, env: dict[str, str] | None = None, workers: int | None = None,
                 extra_args: list[str] | None = None, prefix: list[str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.output = output
        # the server runs in the project folder: paths must not depend on our working directory
        cmd = [*(prefix or []), sys.executable, "-m", "pipelines.cli", "serve", "--config", str(Path(config).resolve()),
               "--port", str(self.port), "--max-rows", str(max_rows)]
        if prediction_log:
            cmd += ["--prediction-log", str(Path(prediction_log).resolve())]
        if workers:
            cmd += ["--workers", str(workers)]
        cmd += extra_args or []
        self.proc = subprocess.Popen(cmd, cwd=PROJECT, env={**os.environ, **(env or {})}, stdout=output.open("w"),
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        self.kill()
        raise RuntimeError(f"server not ready in {timeout_s:.0f} s:\n{self.output.read_text()[-3000:]}")

    def stop(self, timeout_s: float = 60) -> int | None:
        """Graceful stop; kills the process group if it does not exit in time."""
        if self.proc.poll() is None:
            os.kill(self.server_pid(), signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def server_pid(self) -> int:
        """The server process (BentoML's arbiter): ours, or the child of the `prefix` command."""
        import psutil

        if self.proc.args[0] == sys.executable:
            return self.proc.pid
        children = psutil.Process(self.proc.pid).children()
        return children[0].pid if children else self.proc.pid

    def worker_pids(self) -> list[int]:
        """The BentoML worker processes (each holds its own model) under the server process."""
        from serving.server import worker_pids

        return worker_pids(self.proc.pid)

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
