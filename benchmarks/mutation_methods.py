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

    nohup nice -n 15 .venv/bin/python -m benchmarks.mutation_methods --minutes 60 \\
        --out benchmarks/results/mutation_methods &
"""

from __future__ import annotations

import argparse
import json
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
SHARED_PRIVATE = "components.training.architectures.shared_private.xǁSharedPrivateModelǁ"
DWA = "components.training.strategies.dwa.xǁDynamicWeightAverageǁ"
UW = "components.training.strategies.uw.xǁUncertaintyWeightingǁ"
STATIC = "components.training.strategies.static.xǁStaticWeightingǁ"
PENALTY_TEST = "killed by `test_shared_private_penalty_by_hand_and_alternating_groups_partition_the_model[4]` (added)"
DWA_TEST = "killed by `test_dwa_weights_are_equal_for_two_epochs_then_k_times_a_softmax_of_the_loss_ratios` (added)"
UW_DEVICE_TEST = "killed by `test_uw_log_variances_follow_the_model_to_its_device` (added)"
BY_HAND = ("; run by hand on mutmut's copy (`MUTANT_UNDER_TEST=<name> pytest <test>` in mutants/): fails; the "
           "third run did not record it")
REP_MTL_TEST = "`test_regulariser_is_lambda_weighted_tsr_plus_csa_from_two_tasks_on` added" + BY_HAND
MT2ST = "components.training.mt2st.xǁMt2stScheduleǁ"
JACOBIAN = "components.training.strategies.jacobian.xǁJacobianWeightingǁ"


def added_after_the_run(test: str) -> str:
    return f"`{test}` added after this run (fails on this mutant); not yet rerun"


UNREAD = "equivalent: the base class keeps it for strategies that read it; this one reads its own argument or none"
VERDICTS: dict[str, str] = {
    SHARED_PRIVATE + "coefficients__mutmut_3": PENALTY_TEST,
    SHARED_PRIVATE + "coefficients__mutmut_4": PENALTY_TEST,
    SHARED_PRIVATE + "penalty__mutmut_19": "equivalent: the diagonal pairs a task with itself, whose distance "
                                            "‖β_k − β_k‖² is 0, so whatever the affinity there it adds nothing",
    **{DWA + f"current_weights__mutmut_{i}": DWA_TEST for i in (6, 7, 8, 15, 20, 24)},
    **{DWA + f"backward__mutmut_{i}": DWA_TEST for i in (3, 7, 10, 14, 15, 24)},
    DWA + "epoch_end__mutmut_2": DWA_TEST,
    DWA + "load_state_dict__mutmut_5": DWA_TEST,
    UW + "__init____mutmut_2": UNREAD + " (UW has no setting)",
    UW + "attach__mutmut_1": UW_DEVICE_TEST,
    UW + "attach__mutmut_5": UW_DEVICE_TEST,
    **{UW + f"backward__mutmut_{i}": "equivalent: a 0-dim CPU tensor adds to losses on any device as a scalar, so the "
                               "total lands on the losses' device either way" for i in (3, 5)},
    **{f"components.training.rep_mtl.x_rep_mtl_loss__mutmut_{i}": REP_MTL_TEST for i in (1, 2, 3, 10, 12)},
    "components.training.rep_mtl.x_saliencies__mutmut_13": "`test_saliency_is_each_samples_loss_gradient_on_z` "
                                                  "(a [batch, positions, channels] Z) added" + BY_HAND,
    "components.training.rep_mtl.x_csa_loss__mutmut_9": "`test_csa_is_infonce_over_two_tasks_and_two_samples` (one "
                                               "position) added" + BY_HAND,
    "components.training.rep_mtl.x_csa_loss__mutmut_75":
        "`test_csa_stays_finite_when_tasks_oppose_at_the_smallest_tau_searched` added" + BY_HAND,
    **{f"components.training.rep_mtl.x_tsr_loss__mutmut_{i}": "equivalent: EPS guards a zero denominator, where the "
                                                      "numerator is zero too; ±1e-12 elsewhere is below float "
                                                      "resolution" for i in (7, 17)},
    **{f"components.training.rep_mtl.x_tsr_loss__mutmut_{i}": "equivalent: the [B, P] sum broadcasts over the task "
                                                      "axis exactly as the kept [1, B, P] one" for i in (21, 23)},
    **{MT2ST + f"_params__mutmut_{i}": added_after_the_run("test_diminish_per_task_overrides_and_switch_pending")
       for i in (7, 13)},
    **{MT2ST + f"switch_pending__mutmut_{i}": added_after_the_run("test_diminish_per_task_overrides_and_switch_pending")
       for i in (1, 2)},
    **{JACOBIAN + f"backward__mutmut_{i}": added_after_the_run(
        "test_jacobian_method_with_one_task_left_is_its_plain_gradient") for i in (5, 6, 7, 8)},
    **{UW + f"backward__mutmut_{i}": added_after_the_run(
        "test_uw_weighs_each_loss_by_half_its_precision_plus_half_its_log_variance") for i in (11, 20)},
    **{JACOBIAN + f"backward__mutmut_{i}": "equivalent: torchjd's default inputs are the graph's leaves that "
                                          "require a gradient, the parameters `used` holds" for i in (11, 13)},
    **{JACOBIAN + f"backward__mutmut_{i}": "the several-ranks path (`_average` is set under DDP only): "
                                          "tests/test_distributed.py runs it, outside this selection; not run "
                                          "against it here" for i in range(15, 24)},
    JACOBIAN + "backward__mutmut_29": added_after_the_run("test_jacobian_aggregator_departs_from_the_sum_under_"
                                                          "conflict (the reported weights)"),
    JACOBIAN + "backward__mutmut_30": "equivalent for the four aggregators configured: each returns its weights, "
                                      "so this branch is not reached",
    STATIC + "__init____mutmut_1": UNREAD,
    STATIC + "__init____mutmut_2": UNREAD,
}


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
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.mutation_methods", "--as-mutmut", *names], cwd=ROOT,
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


def report(found: dict[str, dict[str, str]], runs: list[dict]) -> str:
    import mutmut

    lines = ["# Mutation testing of the methods' modules", "",
             f"mutmut {mutmut.__version__} over `[tool.mutmut]` of pyproject.toml, one mutant at a time, each against "
             "the selected tests that call the mutated function, on 2 shared CPU cores. *not checked*: left when the "
             "time ran out (mutmut takes the mutants whose tests are quickest first). The runs:", ""]
    for run in runs:
        names = run["names"] if len(run["names"]) <= 4 else [f"<{len(run['names'])} mutant names>"]
        command = " ".join(["python -m benchmarks.mutation_methods", f"--minutes {run['minutes']:g}", *names])
        lines.append(f"- `{command}`: {run['wall_s'] / 60:.0f} min")
    lines += ["", "| module | mutants | " + " | ".join(STATUSES) + " |", "|---|---|" + "---|" * len(STATUSES)]
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
    log = ROOT / "mutants" / "mutation_methods_runs.jsonl"  # one line per run, for the report
    if not args.report_only:
        wall_s = run_mutmut(args.minutes, args.names)
        with log.open("a") as f:
            f.write(json.dumps({"minutes": args.minutes, "names": args.names, "wall_s": wall_s}) + "\n")
    runs = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    args.out.with_suffix(".md").write_text(report(outcomes(), runs))
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
