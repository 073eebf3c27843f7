"""Mutation testing of the seed methods' modules (issue 36): does a test fail when any line of a method changes?

mutmut (the `bench` extra) mutates the modules named in `[tool.mutmut]` of pyproject.toml (mt2st, rep_mtl,
weight_search, strategies/, architectures/shared_private) in a copy under `mutants/`, and runs each mutant against
those of the selected tests (test_rep_mtl, test_strategies, test_weight_search, test_architectures, without the
export-parity runs and STL) that call the mutated function, one mutant at a time. A mutant is *killed* when one of
its tests fails, *survived* when all pass, *no tests* when no selected test calls its function. mutmut keeps each
mutant's result in `mutants/`, so a run stopped by `--minutes` resumes where it was; `--fresh` starts over.

The report (`--out`.md) counts the outcomes per module and lists every surviving mutant with its diff and a
verdict from `VERDICTS` below: the test that now kills it, or why it is equivalent (no input the product can give
tells it from the original).

    nohup nice -n 15 .venv/bin/python benchmarks/mutation_methods.py --minutes 60 \\
        --out benchmarks/results/mutation_methods &
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUSES = ["killed", "survived", "timeout", "no tests", "suspicious", "segfault", "not checked"]

# Every mutant that survived a run, by mutmut's name: why it is equivalent, or the test added to kill it.
VERDICTS: dict[str, str] = {}


def mutmut_fastest_tests_first(names: list[str]) -> None:
    """`mutmut run` in this process, one mutant at a time, each mutant's tests fastest first. mutmut's fork
    runner orders them so, its fork server (the one torch needs, pyproject.toml) takes them in set order: a
    mutant that the quick unit test kills would first sit through the training runs."""
    from mutmut.__main__ import cli
    from mutmut.state import state
    from mutmut.workers.isolation import ForkServerRunner

    submit = ForkServerRunner.submit

    def fastest_first(self: ForkServerRunner, mutant_name: str, tests: list[str], *limits: float) -> None:
        submit(self, mutant_name, sorted(tests, key=lambda test: state().duration_by_test.get(test, 0.0)),
               *limits)  # type: ignore[arg-type]

    ForkServerRunner.submit = fastest_first  # type: ignore[method-assign]
    cli(["run", "--max-children", "1", *names])


def run_mutmut(minutes: float, names: list[str]) -> float:
    """mutmut over `names` (all mutants when empty), stopped with Ctrl-C after `minutes`; returns the wall
    seconds."""
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, __file__, "--as-mutmut", *names], cwd=ROOT,
                            start_new_session=True)  # its own group: the stop reaches its test workers too
    try:
        proc.wait(timeout=minutes * 60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)  # mutmut stops its workers and keeps the results it has
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return time.monotonic() - start


def outcomes() -> dict[str, dict[str, str]]:
    """Per mutated module: each mutant's name and status, from mutmut's files under mutants/."""
    from mutmut.mutation.data import SourceFileMutationData
    from mutmut.stats import status_by_exit_code
    from mutmut.utils.file_utils import walk_mutatable_files

    found = {}
    for path in sorted(walk_mutatable_files()):
        data = SourceFileMutationData(path=path)
        data.load()
        if data.exit_code_by_key:
            found[str(path)] = {name: status_by_exit_code[code] for name, code in data.exit_code_by_key.items()}
    return found


def diff(name: str, path: str) -> str:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    changed = [line for line in get_diff_for_mutant(name, path=path).splitlines()
               if line[:1] in "+-" and not line.startswith(("+++", "---"))]
    return "<br>".join(f"`{line.strip()}`" for line in changed)


def report(found: dict[str, dict[str, str]], wall_s: float, minutes: float) -> str:
    import mutmut

    lines = ["# Mutation testing of the methods' modules", "",
             f"mutmut {mutmut.__version__} over `[tool.mutmut]` of pyproject.toml, one mutant at a time, each against "
             "the selected tests that call the mutated function. Command: `python benchmarks/mutation_methods.py "
             f"--minutes {minutes:g}`; this run {wall_s / 60:.0f} min of wall time on 2 shared CPU cores. "
             "*not checked*: left when the time ran out (mutmut runs the mutants with the fastest tests first).", "",
             "| module | mutants | " + " | ".join(STATUSES) + " |", "|---|---|" + "---|" * len(STATUSES)]
    total: Counter[str] = Counter()
    for path, statuses in found.items():
        counts = Counter(statuses.values())
        total += counts
        lines.append(f"| `{path}` | {len(statuses)} | " + " | ".join(str(counts[s]) for s in STATUSES) + " |")
    lines.append(f"| all | {sum(total.values())} | " + " | ".join(str(total[s]) for s in STATUSES) + " |")
    lines += ["", "## Surviving mutants", "", "| mutant | change | verdict |", "|---|---|---|"]
    for path, statuses in found.items():
        for name, status in statuses.items():
            if status == "survived" or name in VERDICTS:
                verdict = VERDICTS.get(name, "not yet judged")
                lines.append(f"| `{name}` ({status}) | {diff(name, path)} | {verdict} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=60, help="stop mutmut after this long (it resumes)")
    parser.add_argument("--fresh", action="store_true", help="delete mutants/ (mutmut's copy and results) first")
    parser.add_argument("--report-only", action="store_true", help="write the report from the results so far")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "mutation_methods")
    parser.add_argument("--as-mutmut", action="store_true", help=argparse.SUPPRESS)  # run_mutmut's child
    parser.add_argument("names", nargs="*", help="only these mutants (mutmut names, * globs), e.g. to rerun survivors")
    args = parser.parse_args(argv)
    os.chdir(ROOT)  # mutmut reads pyproject.toml and writes mutants/ in the working directory
    if args.as_mutmut:
        return mutmut_fastest_tests_first(args.names)
    if args.fresh:
        shutil.rmtree(ROOT / "mutants", ignore_errors=True)
    wall_s = 0.0 if args.report_only else run_mutmut(args.minutes, args.names)
    found = outcomes()
    args.out.with_suffix(".md").write_text(report(found, wall_s, args.minutes))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
