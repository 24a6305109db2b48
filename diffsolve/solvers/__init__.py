"""Solvers by name: ``diffsolve.solvers.SOLVERS`` maps each name to its class.

Every module of this package defines solver classes and registers them with :func:`register`;
all modules are imported here, so a new module needs no edit of this file. The loop that runs
them is :func:`diffsolve.loop.integrate`.
"""
import importlib as _importlib
import pkgutil as _pkgutil

from .base import Solver, StepContext
from .registry import SOLVERS, default_eta, get_solver, list_solvers, parse_solver_spec, register, solver_spec

for _m in _pkgutil.iter_modules(__path__):
    if not _m.name.startswith("_"):
        _importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["SOLVERS", "Solver", "StepContext", "default_eta", "get_solver", "list_solvers", "parse_solver_spec",
           "register", "solver_spec"]
