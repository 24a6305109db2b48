r"""The solver registry: names, specs ``"name:key=value:..."`` and instances.

Every solver class registers itself with :func:`register` under its ``name``; :func:`get_solver`
turns a name, a spec, a class or an instance into an instance, and is the one place where solver
options given as text are parsed (:func:`parse_solver_spec`), so the library, the command line and
benchmark rows spell a configured solver the same way (:func:`solver_spec`).
"""
from __future__ import annotations

import inspect
import json

from .base import Solver

__all__ = ["SOLVERS", "register", "get_solver", "list_solvers", "parse_solver_spec", "solver_spec",
           "solver_options_help", "stochastic_solver_names", "default_eta"]

SOLVERS: dict[str, type[Solver]] = {}


def register(cls: type[Solver]) -> type[Solver]:
    """Class decorator: add a solver to :data:`SOLVERS` under ``cls.name``."""
    if cls.name in SOLVERS and SOLVERS[cls.name] is not cls:
        raise ValueError(f"solver name {cls.name!r} registered twice")
    SOLVERS[cls.name] = cls
    return cls


def parse_solver_spec(spec: str) -> tuple[str, dict]:
    """``"name:key=value:key=value"`` → ``(name, {key: value})``, the command line's way to configure a
    solver (``"unipc:order=3:predict_x0=false"``). Values are read as JSON (``3``, ``1e-3``, ``true``,
    ``null``), Python's ``True``/``False``/``None``, or else kept as strings (``variant=bh1``)."""
    if not isinstance(spec, str):
        raise TypeError(f"a solver spec is a string 'name:key=value:...', got {type(spec).__name__}")
    name, *parts = spec.strip().split(":")
    options: dict = {}
    for part in parts:
        key, eq, text = part.partition("=")
        key = key.strip()
        if not eq or not key.isidentifier():
            raise ValueError(f"bad solver spec {spec!r}: {part!r} is not key=value; write e.g. "
                             f"'unipc:order=3:variant=bh1'")
        if key in options:
            raise ValueError(f"bad solver spec {spec!r}: option {key!r} given twice")
        text = text.strip()
        try:
            options[key] = json.loads(text)
        except json.JSONDecodeError:
            options[key] = {"True": True, "False": False, "None": None}.get(text, text)
    return name.strip(), options


def solver_spec(name: str, options: dict | None = None) -> str:
    """The canonical spec string of a solver name and options (keys sorted): inverse of
    :func:`parse_solver_spec`, used as the solver's label in benchmark rows."""
    def fmt(v):
        return v if isinstance(v, str) else json.dumps(v)

    return name + "".join(f":{k}={fmt(v)}" for k, v in sorted((options or {}).items()))


def _constructor_options(cls: type[Solver]) -> list[inspect.Parameter]:
    """Every constructor option of a solver class, including those a constructor passes on to its base
    class through ``**options``."""
    seen, out = set(), []
    for klass in cls.__mro__:
        if "__init__" not in vars(klass) or klass is object:
            continue
        params = list(inspect.signature(klass.__init__).parameters.values())[1:]
        for p in params:
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in seen:
                seen.add(p.name)
                out.append(p)
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return out


def solver_options_help(cls: type[Solver]) -> str:
    """``key=default`` for every constructor option of a solver class (:func:`_constructor_options`)."""
    return ", ".join(f"{p.name}={p.default!r}" if p.default is not p.empty else p.name
                     for p in _constructor_options(cls))


def _check_option_types(cls: type[Solver], options: dict):
    """Text given for an option whose default is a bool, an int or a float (a spec keeps what JSON does not
    read as text): for a bool it is refused (``adaptive=no`` is the string "no", which ``bool()`` reads as
    True); for a number, text that is no number is refused (``steps=abc`` failed with a bare int() message;
    ``S_tmax=inf`` passes). Other values go to the constructor as they are."""
    defaults = {p.name: p.default for p in _constructor_options(cls)}
    for key, value in options.items():
        d = defaults.get(key)
        if not isinstance(value, str) or not isinstance(d, (bool, int, float)):
            continue
        if isinstance(d, bool):
            want = "true or false"
        else:
            want = "a number" if isinstance(d, float) else "an integer"
            try:
                (float if isinstance(d, float) else int)(value)
                continue
            except ValueError:
                pass
        raise TypeError(f"solver {cls.name!r}: option {key}={value!r} must be {want} (default {d!r})")


def default_eta(solver) -> float:
    """The noise level η a run of ``solver`` (an instance, a class, a name or a spec; None: the library's
    default run, which integrates the ODE) takes when the call names none (:attr:`Solver.default_eta`);
    0 for a name that is not registered (get_solver then says so)."""
    if isinstance(solver, str):
        solver = SOLVERS.get(parse_solver_spec(solver)[0])
    return float(getattr(solver, "default_eta", 0.0)) if solver is not None else 0.0


def get_solver(solver, **options) -> Solver:
    """A solver instance from an instance, a class, a registered name or a ``"name:key=value"`` spec
    (:func:`parse_solver_spec`); ``options`` go to the constructor."""
    if isinstance(solver, Solver):
        if options:
            raise ValueError("solver options go to the constructor when passing a name; got an instance and options")
        return solver
    if isinstance(solver, type) and issubclass(solver, Solver):
        _check_option_types(solver, options)
        return solver(**options)
    if isinstance(solver, str):
        name, spec_options = parse_solver_spec(solver)
        if name in SOLVERS:
            clash = sorted(set(spec_options) & set(options))
            if clash:
                raise ValueError(f"solver option{'s' if len(clash) > 1 else ''} {', '.join(clash)} given both in "
                                 f"the spec {solver!r} and as keyword arguments; give each once")
            _check_option_types(SOLVERS[name], {**spec_options, **options})
            try:
                return SOLVERS[name](**spec_options, **options)
            except TypeError as e:
                known = solver_options_help(SOLVERS[name])
                level = sorted({"eta", "noise"} & {*spec_options, *options})
                raise TypeError(f"bad options for solver {name!r}: {e}; "
                                + (f"its options are {known}" if known else "it takes no options")
                                + (f" ({' and '.join(level)} is the run's noise level, not a solver option: pass "
                                   f"{level[0]}= to sample, --eta on the command line)" if level else "")) from None
        solver = name
    raise ValueError(f"unknown solver {solver!r}; valid solvers: {', '.join(sorted(SOLVERS))}")


def list_solvers() -> list[dict]:
    """Name, order, stochasticity, first docstring line and constructor options of every registered
    solver; order and evaluations per step are those of its default options."""
    out = []
    for name, cls in sorted(SOLVERS.items()):
        doc = (cls.__doc__ or "").strip().splitlines()
        default = cls()  # order and nfe_per_step may depend on the options (unipc's order, pc's corrector steps)
        out.append({"name": name, "order": default.declared_order, "stochastic": cls.stochastic, "adaptive": cls.adaptive,
                    "nfe_per_step": default.nfe_per_step or None, "summary": doc[0] if doc else "",
                    "options": solver_options_help(cls)})
    return out


def stochastic_solver_names() -> list[str]:
    """Registered solvers that integrate members of the ν_t family with ν > 0."""
    return sorted(n for n, c in SOLVERS.items() if c.stochastic)
