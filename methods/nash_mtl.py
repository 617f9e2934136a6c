"""Nash-MTL — "Multi-Task Learning as a Bargaining Game".

Navon, Shamsian, Achituve, Maron, Kawaguchi, Chechik, Fetaya, ICML 2022,
https://arxiv.org/abs/2202.01017. Official code: AvivNavon/nash-mtl,
``methods/weight_methods.py::NashMTL`` (followed here; LibMTL ``Nash_MTL`` is the same).

The update is the Nash bargaining solution among tasks: weights α > 0 with

    K α = 1/α  (element-wise),   K = G Gᵀ,    d = Gᵀα = Σ_t α_t g_t,

i.e. every task gets the same "utility" α_t g_tᵀd = 1. The reference solves it with a
sequence of convex programs (cvxpy/ECOS, ``optim_niter`` CCP iterations) on K/‖K‖_F; here
it is solved by damped Newton on the equivalent strictly convex φ(α) = ½αᵀKα − Σ log α
(:func:`methods.solvers.nash_weights`): same fixed point, no cvxpy/ECOS dependency, and a
checked stopping rule max_t |α_t (Kα)_t − 1| < 1e-6. Started from the previous α (as the
reference warm-starts) and, if that does not converge, from α_t = 1/‖g_t‖ (exact for
orthogonal gradients): on random, near-collinear and ill-conditioned K (task norms 10⁻⁴…10³
apart, cond(K) up to 1e12) for T = 2..10 it converges in ≤ 17 iterations
(tests/test_methods_solver_fidelity.py; timing: ``bench/engine_speed.py --solvers``).
``optim_niter`` caps the Newton iterations per start (reference: CCP iterations, each one
ECOS solve). At the solution ‖d‖² = αᵀKα = Σ_t α_t (Kα)_t = T, so the default clipping to
``max_norm`` 1 always rescales d by 1/√T (as in the reference).

When the solve fails (non-finite values, or no solution because K has a null direction
inside the positive orthant, e.g. a zero task gradient), the previous α is kept — the
reference keeps it when ECOS raises — ``info["solver_failed"]`` is 1 (the trainer counts
it in the diagnostics and the runs table) and a warning is issued once per method object,
never silently.

Hyperparameters (defaults from the reference): ``update_weights_every`` 1 — with n > 1 the
weights are recomputed on every n-th step (steps 0, n, 2n, ...; the paper's MT10
Nash-MTL-50/-100); in between :meth:`needs_grads` is False and the previous α weights the
losses without computing per-task gradients. ``optim_niter`` 100 (a bound that a
converging solve never reaches). ``max_norm`` 1.0: the shared gradient is clipped to this
norm after it is written, on every step (:meth:`max_grad_norm`, read by the engine; 0
disables).

Heads: the reference back-propagates Σ α_t L_t, so the heads get α-weighted gradients
(``default_head_update = "weighted"``). Weights depend on the gradients only through K, so
parameter-level distributed training is exact (the engine all-reduces the Jacobian, every
rank evolves the same α). Representation-level gradients (``level="rep"``) are offered as
an option, as for every Gramian method (the clipping applies there too); the reference uses
shared-parameter gradients, which is the default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from methods.base import Aggregation, GramianMethod, StepContext, check_int, check_range
from methods.registry import register
from methods.solvers import nash_weights
from methods.space import IntUniform, Uniform


@dataclass(frozen=True)
class NashMTLConfig:
    """``update_weights_every``: solve for α every n steps; ``optim_niter``: Newton
    iteration cap; ``max_norm``: clip the shared gradient to this norm (0 disables)."""

    update_weights_every: int = 1
    optim_niter: int = 100
    max_norm: float = 1.0

    def __post_init__(self) -> None:
        check_int("update_weights_every", self.update_weights_every, 1)
        check_int("optim_niter", self.optim_niter, 1)
        check_range("max_norm", self.max_norm, 0.0)


@register("nash_mtl")
class NashMTL(GramianMethod):
    """Nash-MTL: α with Kα = 1/α (Nash bargaining), d = Σ α_t g_t, clipped to max_norm."""

    Config = NashMTLConfig
    stateful = True
    default_head_update = "weighted"
    search_space = {"update_weights_every": IntUniform(1, 10), "max_norm": Uniform(0.1, 5.0)}

    def __init__(self, num_tasks: int, config: Any = None, seed: int = 0) -> None:
        super().__init__(num_tasks, config, seed)
        self.register_buffer("alpha", torch.ones(num_tasks, dtype=torch.float64))

    def needs_grads(self) -> bool:
        return self.step_count % self.config.update_weights_every == 0

    def max_grad_norm(self) -> float | None:
        return self.config.max_norm if self.config.max_norm > 0 else None

    def _aggregate(
        self, grads: Tensor | None, losses: Tensor, context: StepContext | None
    ) -> Aggregation:
        if self.needs_grads():
            return super()._aggregate(grads, losses, context)
        # Between updates: reuse α as loss weights (no per-task gradients needed).
        return Aggregation(
            direction=None,
            weights=self.alpha.to(losses),
            info={"solver_failed": 0.0, "iterations": 0.0, "updated": 0.0},
        )

    def gramian_weights(self, gramian: Tensor, losses: Tensor) -> tuple[Tensor, dict[str, float]]:
        K = gramian.cpu().numpy()
        previous = self.alpha.cpu().numpy() if self.step_count > 0 else None  # warm start
        alpha, iters, ok = nash_weights(K, alpha0=previous, max_iter=self.config.optim_niter)
        if ok:
            self.alpha.copy_(torch.from_numpy(alpha))
        else:
            self.warn_once(
                "solver_failed",
                f"nash_mtl: no bargaining solution K α = 1/α at step {self.step_count} (a zero or "
                "non-finite task gradient?); the previous weights are kept and the failure is "
                "counted in diagnostics as solver_failed",
            )
        info = {"solver_failed": float(not ok), "iterations": float(iters), "updated": 1.0}
        return self.alpha.clone().to(gramian.device), info

    def reset(self) -> None:
        super().reset()
        self.alpha.fill_(1.0)
