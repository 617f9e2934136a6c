"""POMSI-static — PCGrad projection, then every projected gradient rescaled to one norm.

Jiang, Gou, Zhang, Wang, Zhang, Yang; "Mitigating Scale Imbalance and Conflicting Gradients in
Deep Multi-Task Learning", Frontiers of Computer Science 2024,
https://doi.org/10.1007/s11704-024-40632-2

**This is a documented reconstruction, not a transcription**: the paper names POMSI-static in
its NYUv2 table (poster) but its definition is not available (docs/methods.md §MSI and POMSI). mtlx
implements it as POMSI (``pomsi.py``) with the adaptive exponent replaced by 1:

    g^PC = PCGrad projection of the g_t           (random order per task, seeded)
    g_t' = g_t^PC · n_ref / ‖g_t^PC‖               (every projected gradient gets norm n_ref)
    d    = Σ_t g_t'

with n_ref the mean (default), max or geometric mean of the projected norms (``reference``).
"Static" is read as: the rescaling ignores the magnitude similarities. Projected gradients that
are (numerically) zero are left at zero, as in POMSI. A Gramian method (effective weights =
column sums of diag(n_ref/‖g^PC‖) C); heads ``"own"``.
"""

from __future__ import annotations

from methods.pomsi import POMSI
from methods.registry import register


@register("pomsi_static")
class POMSIStatic(POMSI):
    """POMSI-static (reconstruction): PCGrad projection, then every projected gradient to n_ref."""

    static = True
