"""What `mtlops run` shows while kfp.local runs: a line per finished step (status, seconds; for a failed step
its cause: the exception it raised, else why its runner failed it), a line per retry with its reason, and a rich
spinner for the running step; kfp.local's own output (every step's executor input and output JSON and its log
lines) goes to a log file in the run folder, and to the terminal as well with `verbose`."""

from __future__ import annotations

import contextlib
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from rich.console import Console
from rich.markup import escape
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn

from pipelines.steprun import NOTE_PREFIX

LOG_FILE = "kfp.log"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
# kfp.local logs "Executing task 'ingest-op'" and "Task 'ingest-op' finished with status SUCCESS" (to stdout)
STARTED = re.compile(r"Executing task '(?P<task>[^']+)'")
FINISHED = re.compile(r"Task '(?P<task>[^']+)' finished with status (?P<status>\w+)")
# the last line of a Python traceback: `RuntimeError: dvc pull failed: ...`
EXCEPTION = re.compile(r"^(?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception|Exit)\b(?::.*)?$")
# pipelines.steprun's notes: `mtlops: <task>: retrying in 30 s ...: <cause>` / `mtlops: <task>: failed: <cause>`
NOTE = re.compile(re.escape(NOTE_PREFIX) + r"(?P<task>[^:\s]+): (?P<message>.*)$")


class StepLog:
    """The text stream kfp.local prints to while a pipeline runs: every line into the log (and the terminal with
    `verbose`); its task start / finish lines drive the step lines and the spinner."""

    def __init__(self, log: IO[str], progress: Progress, terminal: IO[str] | None) -> None:
        self.log, self.progress, self.terminal = log, progress, terminal
        self.running: dict[str, tuple[float, TaskID]] = {}
        self.steps: list[tuple[str, str, float]] = []  # (step, status, seconds), in finishing order
        self.causes: dict[str, list[str]] = {}  # step -> its last exception line and the runner's verdict
        self._partial = ""

    @property
    def failed(self) -> str | None:
        """The step that failed: one that finished without success, else one still running."""
        return next((step for step, status, _ in self.steps if status != "SUCCESS"), next(iter(self.running), None))

    def write(self, text: str) -> int:
        self.log.write(text)
        if self.terminal is not None:
            self.terminal.write(text)
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            self._line(ANSI.sub("", line))
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.terminal is not None:
            self.terminal.flush()

    def _line(self, line: str) -> None:
        text = line.strip()
        if m := STARTED.search(text):
            self.running[m["task"]] = (time.perf_counter(), self.progress.add_task(m["task"], total=None))
            self.causes[m["task"]] = []
        elif m := NOTE.match(text):
            if m["message"].startswith("retrying"):
                self._print("yellow", "RETRY", m["task"], m["message"])
            else:
                self.causes.setdefault(m["task"], []).append(m["message"])
        elif EXCEPTION.match(text) and len(self.running) == 1:
            step = next(iter(self.running))
            self.causes[step] = [c for c in self.causes[step] if not EXCEPTION.match(c)] + [text]
        elif (m := FINISHED.search(text)) and m["task"] in self.running:
            t0, job = self.running.pop(m["task"])
            self.progress.remove_task(job)
            seconds = time.perf_counter() - t0
            self.steps.append((m["task"], m["status"], seconds))
            ok = m["status"] == "SUCCESS"
            self._print("green" if ok else "red", m["status"], m["task"],
                        f"{seconds:6.1f} s" + ("" if ok else "  " + "; ".join(self.causes.get(m["task"], []))))

    def _print(self, color: str, status: str, step: str, message: str) -> None:
        # one line whatever the width (a cause can be long): the terminal wraps it, a log file keeps it whole
        self.progress.console.print(f"[{color}]{status:<8}[/{color}] {escape(step):<24} {escape(message)}",
                                    soft_wrap=True)


@contextlib.contextmanager
def step_lines(log_path: Path, verbose: bool = False) -> Iterator[StepLog]:
    """Everything printed inside goes to `log_path`; the terminal gets a line per finished step."""
    terminal = sys.stdout
    console = Console(file=terminal)
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), console=console,
                        transient=True, disable=verbose)
    with open(log_path, "w") as log, progress:
        stream = StepLog(log, progress, terminal if verbose else None)
        with contextlib.redirect_stdout(stream):  # type: ignore[type-var]
            yield stream


def failed_step_output(log_path: Path, step: str | None) -> str:
    """The failed step's part of the log: from its start line to the end."""
    text = ANSI.sub("", log_path.read_text(errors="replace")) if log_path.exists() else ""
    start = text.rfind(f"Executing task '{step}'") if step else -1
    return text[text.rfind("\n", 0, start) + 1:] if start >= 0 else text
