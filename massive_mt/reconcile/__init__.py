"""Multi-task gradient reconciliation (sum, PCGrad, GradVac) from per-group Gram matrices."""
from .methods import (
    METHODS,
    Corrections,
    GradVacState,
    NoState,
    ReconcileConfig,
    cosines,
    gradvac,
    make_state,
    pcgrad,
    reconcile,
    sum_method,
    update_norm_sq,
)

__all__ = ["METHODS", "Corrections", "GradVacState", "NoState", "ReconcileConfig", "cosines", "gradvac",
           "make_state", "pcgrad", "reconcile", "sum_method", "update_norm_sq"]
