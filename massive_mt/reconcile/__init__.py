"""Multi-task gradient reconciliation (sum, PCGrad, GradVac; CATS on top) from per-group Gram matrices."""
from massive_mt.reconcile.methods import (
    METHODS,
    Corrections,
    GradVacState,
    Method,
    MethodOptions,
    NoState,
    cosines,
    make_state,
    reconcile,
    register,
    step_generator,
    update_norm_sq,
)

__all__ = ["METHODS", "Corrections", "GradVacState", "Method", "MethodOptions", "NoState", "cosines", "make_state",
           "reconcile", "register", "step_generator", "update_norm_sq"]
