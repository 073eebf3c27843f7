"""Does every seed method's wiring have a test that fails when it is cut? Hand-written mutants, each run against
the tests meant to catch it (issue 36).

Each mutant replaces one piece of source text (the line that wires a method in) with a cut version, runs the named
tests, and restores the file whatever happens. A mutant is *killed* when at least one of its tests fails. The
report (`--out`) lists every mutant, its tests and the outcome. It edits the working tree while it runs: run it on
a clean checkout, and not while something else imports the components.

    .venv/bin/python -m benchmarks.wiring_mutations --out benchmarks/results/wiring_mutations
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    what: str  # the wiring that is cut, in words
    path: str
    original: str
    mutated: str
    tests: tuple[str, ...]


STEP = "tests/test_strategies.py::"
ARCH = "tests/test_architectures.py::"
MUTANTS = [
    Mutant("γ not applied in the step", "components/training/train.py",
           "plan.strategy.backward({name: loss * scale[name] for name, loss in losses.items()} if scale else losses)",
           "plan.strategy.backward(losses)",
           (STEP + "test_gamma_scales_each_auxiliary_loss_in_the_step",
            STEP + "test_diminish_reaches_the_trainers_loss")),
    Mutant("γ not passed from the epoch loop to the step", "components/training/train.py",
           "plan.loss_weights(s / len(batches)) if plan.loss_weights else None", "None",
           (STEP + "test_diminish_reaches_the_trainers_loss",)),
    Mutant("Switch: the step computes every head", "components/training/train.py",
           "out = forward(data.numeric[idx], data.categorical[idx], tasks=plan.active)",
           "out = forward(data.numeric[idx], data.categorical[idx], tasks=None)",
           (STEP + "test_switch_drops_auxiliary_heads_from_forward_and_backward",
            ARCH + "test_switched_step_computes_nothing_of_the_auxiliary_tasks")),
    Mutant("Switch: the run's epoch plan does not pass the active heads", "components/training/train.py",
           "return EpochPlan(self.state.strategy, schedule.active_tasks(epoch),",
           "return EpochPlan(self.state.strategy, None,",
           (STEP + "test_switch_drops_auxiliary_heads_from_forward_and_backward",)),
    Mutant("Switch: shared_private computes every private encoder",
           "components/training/architectures/shared_private.py",
           "        z = self.shared(x)\n",
           "        z = self.shared(x)\n        _ = [encoder(x) for encoder in self.private.values()]\n",
           (ARCH + "test_switched_step_computes_nothing_of_the_auxiliary_tasks",)),
    Mutant("Switch: MMoE computes every gate", "components/training/architectures/mmoe.py",
           "        out = {}\n", "        out = {}\n        _ = [gate(x) for gate in self.gates.values()]\n",
           (ARCH + "test_switched_step_computes_nothing_of_the_auxiliary_tasks",)),
    Mutant("shared_private: penalty not added", "components/training/train.py",
           "        penalty.backward()\n", "        pass\n",
           (ARCH + "test_shared_private_penalty_is_added_to_the_step",)),
    Mutant("shared_private: the alternation does not alternate", "components/training/train.py",
           "if i != step % len(groups):", "if i != 0:",
           (ARCH + "test_shared_private_penalty_and_alternating_steps",)),
    Mutant("Rep-MTL: regulariser not added in the step", "components/training/train.py",
           "for term in plan.loss_terms:", "for term in ():",
           (STEP + "test_rep_mtl_regulariser_is_finite_and_moves_the_trunk_in_the_trainer",)),
    Mutant("Rep-MTL: TSR normalised per sample (the residual divided out, main before issue 36)",
           "components/training/rep_mtl.py", "magnitude / (magnitude.mean(dim=(1, 2), keepdim=True) + EPS)",
           "magnitude / (magnitude.sum(dim=2, keepdim=True) + EPS)",
           ("tests/test_rep_mtl.py::test_regulariser_reaches_the_shared_representation_and_trunk",)),
    Mutant("PBT exploit: model weights not copied", "components/training/weight_search.py",
           "        dst.model.load_state_dict(src.model.state_dict())\n", "",
           ("tests/test_weight_search.py::test_pbt_replaces_bottom_members_with_perturbed_copies_of_top_members",)),
    Mutant("PBT exploit: optimizer state not copied", "components/training/weight_search.py",
           "        dst.optimizer.load_state_dict(copy.deepcopy(src.optimizer.state_dict()))\n", "",
           ("tests/test_weight_search.py::test_pbt_replaces_bottom_members_with_perturbed_copies_of_top_members",)),
    Mutant("sweep: trials train with equal weights", "components/training/weight_search.py",
           'raw["training"]["strategy"] = {"name": "static", "weights": weights}',
           'raw["training"]["strategy"] = {"name": "static", "weights": dict.fromkeys(weights, 1.0)}',
           ("tests/test_weight_search.py::test_static_weight_sweep_ranks_trials_on_the_small_model",)),
    Mutant("static strategy: weights not applied", "components/training/strategies/static.py",
           "torch.tensor(len(task_names) * w / total)", "torch.tensor(1.0)",
           (STEP + "test_static_weights_reach_each_tasks_gradient",)),
]


def run_mutant(m: Mutant) -> tuple[str, float]:
    path = ROOT / m.path
    source = path.read_text()
    if source.count(m.original) != 1:
        return "NOT APPLIED (the original text is not there once)", 0.0
    t0 = time.perf_counter()
    try:
        path.write_text(source.replace(m.original, m.mutated))
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *m.tests],
                              cwd=ROOT, capture_output=True, text=True)
    finally:
        path.write_text(source)
    failed = [line.split(" - ")[0] for line in done.stdout.splitlines() if line.startswith("FAILED")]
    if done.returncode == 1:
        return "killed by " + ", ".join(f.removeprefix("FAILED ").split("::")[-1] for f in failed), \
            time.perf_counter() - t0
    if done.returncode == 0:
        return "SURVIVED", time.perf_counter() - t0
    return f"error (pytest exit {done.returncode})", time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="also write the report to <out>.md")
    args = parser.parse_args()
    lines = ["| wiring cut | file | tests run | outcome | s |", "|---|---|---|---|---|"]
    for m in MUTANTS:
        outcome, seconds = run_mutant(m)
        tests = "<br>".join(t.split("::")[-1] for t in m.tests)
        lines.append(f"| {m.what} | `{m.path}` | {tests} | {outcome} | {seconds:.0f} |")
        print(lines[-1], flush=True)
    if args.out:
        args.out.with_suffix(".md").write_text(
            "Hand-written mutants of the seed methods' wiring (`benchmarks/wiring_mutations.py`): each cuts one "
            "line, runs the tests meant to catch it, restores the file.\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
