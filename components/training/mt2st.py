"""MT2ST (docs/methods.md): multi-task first, single-task last, on top of any weighting strategy.

    L(t) = L₀ + Σ_k γ_k(t)·L_k

Diminish: γ_k(t) = γ0·exp(−η·t^ν) with t the fractional epoch. Switch: γ_k = 0 from epoch T_switch on (fixed,
or the first epoch after the primary validation metric plateaued for `patience` evaluations, never before
`min_epoch`); from then on the trainer computes the primary head only, so the auxiliary heads cost nothing.
"""

from __future__ import annotations

import math

from components.config.schema import DiminishParams, Mt2stSpec


class Mt2stSchedule:
    def __init__(self, spec: Mt2stSpec | None, task_names: list[str], primary: str) -> None:
        self.spec = spec
        self.task_names = task_names
        self.primary = primary
        self.switch_epoch: int | None = spec.switch.epoch if spec and spec.switch else None
        self._plateau = 0

    def _params(self, task: str) -> tuple[float, float, float]:
        d = self.spec.diminish  # type: ignore[union-attr]
        own = d.per_task.get(task, DiminishParams())  # type: ignore[union-attr]
        return (own.gamma0 if own.gamma0 is not None else d.gamma0,  # type: ignore[union-attr]
                own.eta if own.eta is not None else d.eta,  # type: ignore[union-attr]
                own.nu if own.nu is not None else d.nu)  # type: ignore[union-attr]

    def switched(self, epoch: int) -> bool:
        return self.switch_epoch is not None and epoch >= self.switch_epoch

    def switch_pending(self, epoch: int) -> bool:
        """A switch is configured and has not happened by `epoch`: early stopping waits for it, so a run trains the
        single-task phase its config asks for instead of ending in the multi-task one."""
        return self.spec is not None and self.spec.switch is not None and not self.switched(epoch)

    def reached(self, epochs_run: int) -> bool:
        """Whether a run that trained `epochs_run` epochs trained any of them after the switch."""
        return self.switch_epoch is not None and self.switch_epoch < epochs_run

    def active_tasks(self, epoch: int) -> list[str]:
        """The heads trained in `epoch` (0-based): all of them, or the primary alone after the switch."""
        return [self.primary] if self.switched(epoch) else list(self.task_names)

    def loss_weights(self, t: float) -> dict[str, float]:
        """γ per task at progress t (epochs, fractional); the primary task always has 1."""
        if self.switched(math.floor(t)):
            return {self.primary: 1.0}
        weights = dict.fromkeys(self.task_names, 1.0)
        if self.spec and self.spec.diminish:
            for name in self.task_names:
                if name != self.primary:
                    gamma0, eta, nu = self._params(name)
                    weights[name] = gamma0 * math.exp(-eta * t**nu)
        return weights

    def observe(self, epoch: int, improved: bool) -> bool:
        """After validating `epoch` (0-based): True when the plateau trigger fires, switching from the next one."""
        sw = self.spec.switch if self.spec else None
        if sw is None or sw.patience is None or self.switched(epoch + 1):
            return False
        self._plateau = 0 if improved else self._plateau + 1
        if self._plateau >= sw.patience and epoch + 1 >= sw.min_epoch:
            self.switch_epoch = epoch + 1
            return True
        return False

    def state_dict(self) -> dict:
        return {"switch_epoch": self.switch_epoch, "plateau": self._plateau}

    def load_state_dict(self, state: dict) -> None:
        self.switch_epoch, self._plateau = state["switch_epoch"], state["plateau"]
