"""Solvers by name: ``diffsolve.solvers.SOLVERS`` maps each name to its class.

Each module defines solver classes and registers them with :func:`register`.
"""
from .base import SOLVERS, Solver, StepContext, get_solver, integrate, list_solvers, register
from . import euler, ddim  # noqa: F401  (registration)

__all__ = ["SOLVERS", "Solver", "StepContext", "get_solver", "integrate", "list_solvers", "register"]
