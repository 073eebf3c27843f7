"""Canary: a share of live requests answered by the challenger (the registry's shadow version), rolled back
to champion-only by the service itself when the challenger breaks its budget.

Each worker keeps the outcomes and inference times of its last `min_requests` canary requests and the
champion's inference times over the same stretch; once it has `min_requests` of them it checks the budget
after every canary request. A canary request whose inference fails (an exception or a non-finite output)
is answered by the champion instead, so a broken challenger costs no request, and counts as an error.
Over the error ratio, or slower than `max_latency_ratio` times the champion (median inference time,
the micro-batcher's wait included), the canary stops: the worker publishes the rollback for the other
workers of the server, logs why and counts it in /metrics.
"""

from __future__ import annotations

import random
import statistics
from collections import deque

from components.config.schema import CanarySpec


class CanaryGuard:
    """One worker's view of its canary: which requests it answers, and whether it is within budget."""

    def __init__(self, budget: CanarySpec) -> None:
        self.budget = budget
        self._canary: deque[tuple[bool, float]] = deque(maxlen=budget.min_requests)
        self._champion: deque[float] = deque(maxlen=budget.min_requests)

    def wants(self) -> bool:
        return self.budget.share > 0 and random.random() < self.budget.share

    def champion_answered(self, seconds: float) -> None:
        self._champion.append(seconds)

    def canary_answered(self, ok: bool, seconds: float) -> str | None:
        """Record one canary request; the reason to roll back, if the budget is now broken."""
        self._canary.append((ok, seconds))
        if len(self._canary) < self.budget.min_requests:
            return None
        errors = sum(not ok for ok, _ in self._canary) / len(self._canary)
        if errors > self.budget.max_error_ratio:
            return (f"error ratio {errors:.1%} over the last {len(self._canary)} canary requests (budget "
                    f"{self.budget.max_error_ratio:.1%})")
        times = [s for ok, s in self._canary if ok]
        if times and self._champion:
            ratio = statistics.median(times) / max(statistics.median(self._champion), 1e-9)
            if ratio > self.budget.max_latency_ratio:
                return (f"median inference {ratio:.1f}x the champion's over the last {len(self._canary)} canary "
                        f"requests (budget {self.budget.max_latency_ratio:g}x)")
        return None
