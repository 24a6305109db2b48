"""What the commands share: option types, the options several commands declare (device and dtype,
model or problem, seeds, a budget), the checks of the command line itself (names, paths) and
:func:`run_command`, which turns a user error into one ``error: …`` line and an exit status.

The rules of sampling (default solver, budgets, adaptive solvers, tuned grids) are not here: the
commands pass what the user gave to the library and report the library's message.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path

from ..runfiles import WriteFailed

EXIT_USAGE = 2
DTYPES = ("float64", "float32")


class CLIError(ValueError):
    """A user error detected by the command line itself."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose own errors have the same ``error:`` style and exit status 2: the
    message and where the options are listed, not the whole usage block above it."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (options: {self.prog} --help)\n")
        sys.exit(EXIT_USAGE)


def choices_msg(kind, value, valid):
    return f"unknown {kind} {value!r}; valid {kind}s: {', '.join(valid)}"


# --- option types ---------------------------------------------------------------------------------
def csv(kind=str, what="value", distinct: bool = True):
    """A comma-separated list of ``kind``: no empty item (``5,,10``), and with ``distinct`` no value listed
    twice (a list of choices; a pair such as LO,HI is not one)."""
    def parse(text):
        items = [s.strip() for s in str(text).split(",")]
        if not any(items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}")
        if not all(items):
            raise argparse.ArgumentTypeError(f"an empty item in {text!r}: list {what}s separated by single commas")
        try:
            values = [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {what}s, got {text!r}") from None
        twice = [s for i, (s, v) in enumerate(zip(items, values)) if distinct and v in values[:i]]
        if twice:
            raise argparse.ArgumentTypeError(f"{twice[0]} is listed twice in {text!r}: list each {what} once")
        return values
    return parse


def positive_int(text):
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def nonneg_float(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return v


def seeds(text):
    """A seed spec such as ``0-63`` (kept as text; each seed once)."""
    from ..noise import parse_seeds

    try:
        parsed = parse_seeds(text, distinct=True)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not parsed:
        raise argparse.ArgumentTypeError(f"no seeds in {text!r}; use e.g. 0-63")
    return text


# --- options several commands declare --------------------------------------------------------------
def add_device_options(p, dtype_default="float64", dtype: bool = True):
    """``--device``, ``--dtype`` (``dtype_default=None``: the library's, float32 for a float32 or half
    network and float64 otherwise; not declared with ``dtype=False``, for a command whose state dtype
    is fixed) and ``--quiet``."""
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    if dtype:
        shown = dtype_default or ("float32 for a float32 or half network, float64 for a float64 one, "
                                  "torch's default dtype for a network of unknown dtype")
        p.add_argument("--dtype", default=dtype_default, help="solver state dtype: float64 or float32 "
                       f"(default {shown}; the network runs in its own dtype)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress or notes on stderr")


def add_schedule_option(p):
    p.add_argument("--schedule", help="schedule of the analytic problems (default ddpm; see `diffsolve list "
                                      "schedules`)")


def add_model_options(p):
    """``--problem`` or ``--model``, and ``--schedule``: read by :func:`problem_from_args`."""
    g = p.add_mutually_exclusive_group()
    g.add_argument("--problem", help="built-in problem with exact ground truth (see `diffsolve list problems`)")
    g.add_argument("--model", help="a bundled model (see `diffsolve list models`), package.module:factory or "
                   "file.py:factory")
    add_schedule_option(p)


def add_threads_option(p):
    p.add_argument("--threads", type=positive_int, help="CPU threads per process (default 1 on CPU unless "
                   "OMP_NUM_THREADS is set: the batches of these commands are small, and on busy cores extra "
                   "threads mostly wait for each other)")


def apply_threads(args, device):
    """``--threads``, else one thread on CPU unless ``OMP_NUM_THREADS`` says otherwise (as ``diffsolve bench``;
    :func:`diffsolve.threads.set_threads`)."""
    from ..threads import set_threads

    set_threads(getattr(args, "threads", None), device is not None and device.type == "cpu")


def one_process_only(command: str, instead: str):
    """Refuse a command that runs in one process when torchrun started several (``WORLD_SIZE`` > 1): each would
    do the whole job and write the same file."""
    world = os.environ.get("WORLD_SIZE", "1")
    if world.strip().isdigit() and int(world) > 1:
        raise CLIError(f"{command} runs in one process; under torchrun (WORLD_SIZE={world}) every process would do "
                       f"the whole job and write the same file: {instead}")


def add_seeds_option(p, help, default=None):
    p.add_argument("--seeds", type=seeds, default=default, help=help)


def add_nfe_option(p, required=False):
    p.add_argument("--nfe", type=positive_int, required=required,
                   help="budget of network evaluations (final denoise included)")


# --- checks of the command line itself --------------------------------------------------------------
def check_device_dtype(args):
    """The torch device and dtype named by ``--device`` and ``--dtype`` (:mod:`diffsolve.checks`)."""
    import torch

    from ..checks import check_device

    if getattr(args, "dtype", None) is None:  # the library's default, or a command without --dtype
        return check_device(args.device, "--device"), None
    if args.dtype not in DTYPES:
        named = getattr(torch, str(args.dtype), None)
        half = isinstance(named, torch.dtype) and named.is_floating_point and named.itemsize < 4
        raise CLIError(choices_msg("dtype", args.dtype, DTYPES) + (
            f" (--dtype is the solver state's, which loses its accuracy in {args.dtype}; the network runs in its "
            f"own dtype, half precision included)" if half else ""))
    return check_device(args.device, "--device"), getattr(torch, args.dtype)


def check_schedule(name):
    from ..schedules import SCHEDULES

    if name is not None and name not in SCHEDULES:
        raise CLIError(choices_msg("schedule", name, list(SCHEDULES)))


def check_solver(spec) -> str:
    """The name in a solver name or ``name:key=value:...`` spec, checked by building it (the library
    names what is wrong)."""
    from ..solvers import get_solver, parse_solver_spec

    get_solver(spec)
    return parse_solver_spec(spec)[0]


def is_grid_file(name) -> bool:
    """Whether a ``--grid``/``--init`` value names a tuned-grid file rather than a grid kind."""
    return name is not None and name.endswith(".json")


def check_grid(name):
    """A grid kind, or a tuned-grid file from `diffsolve tune` (read now, so a bad file stops us early)."""
    from ..grids import GRIDS

    if is_grid_file(name):
        from ..tune import TunedGrid

        TunedGrid.load(name)
    elif name not in GRIDS:
        raise CLIError(choices_msg("grid", name, GRIDS) + ", or a tuned-grid .json file from `diffsolve tune`")


def note_grid_model(grid, problem) -> None:
    """A warning line on stderr when the tuned-grid file ``grid`` was tuned on a model other than ``problem``."""
    if is_grid_file(grid):
        from ..tune import TunedGrid

        note = TunedGrid.load(grid).other_model(problem.name)
        if note:
            print(f"warning: {note}", file=sys.stderr)


def problem_from_args(args, device):
    """The problem named by ``--problem`` or ``--model`` (see :func:`add_model_options`)."""
    from ..bench import get_problem
    from ..bench.problems import get_model

    if args.problem is None and args.model is None:
        raise CLIError("give --problem NAME (exact ground truth) or --model NAME; see `diffsolve list`")
    check_schedule(args.schedule)
    if args.model is not None and args.schedule is not None:
        raise CLIError("--schedule applies to analytic problems; a model keeps the schedule it was trained with")
    if args.model is not None:
        return get_model(args.model, device=device)
    return get_problem(args.problem, schedule=args.schedule, device=device)


def check_writable(path, suffixes) -> Path:
    """Refuse an output file we could not write, before any work (its directory is created): every
    command that writes calls this first (:func:`diffsolve.files.check_writable`)."""
    from ..files import check_writable as check

    return check(path, suffixes)


def checked_denoiser(problem, device):
    """The problem's denoiser, checked once (:func:`diffsolve.checks.check_denoiser`): a factory's result is
    a Denoiser with a valid shape and dtype whose network has weights."""
    from ..checks import check_denoiser

    return check_denoiser(problem.denoiser(), device)


# --- errors to exit statuses --------------------------------------------------------------------------
def _what_is_kept(args) -> str:
    """What an interrupted command leaves for ``--resume``: only the commands that write as they go have it."""
    command = getattr(args, "command", None)
    if command == "bench":
        return " (rows finished so far are in the results file; rerun with --resume)"
    folder = getattr(args, "outdir", None) if command == "sample" else getattr(args, "out", None) \
        if command == "likelihood" else None
    return f" (what is finished is kept in {folder}; rerun with --resume)" if folder else ""


def _notes(e: BaseException) -> str:
    """An exception's notes (where in the run it was raised, the likely fix), one line each."""
    return "".join(f"\n{n}" for n in getattr(e, "__notes__", ()))


def _warning_line(message, category, filename, lineno, file=None, line=None):
    kind = "" if category is UserWarning else f"{category.__name__}: "
    print(f"warning: {kind}{message}", file=sys.stderr)


def run_command(command, args) -> int:
    """Run ``command(args)``; a user error (ours or the library's) is one ``error: …`` line, status 2."""
    debug = bool(os.environ.get("DIFFSOLVE_DEBUG"))
    try:
        with warnings.catch_warnings():
            if not debug:  # the library's warnings as one line each, like its errors
                warnings.showwarning = _warning_line
            return command(args)
    except (ValueError, TypeError, ImportError, FloatingPointError) as e:
        # CLIError, the library's validation errors, a missing optional package, a network returning NaN
        if debug:
            raise
        print(f"error: {e}{_notes(e)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # the reader of stdout stopped (`diffsolve list solvers | head`): not an error
        try:  # the interpreter's last flush must not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):  # stdout without a file descriptor (captured)
            pass
        return 0
    except WriteFailed as e:  # an output could not be written (disk full, ...): the input was good, status 1
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"error: {e.strerror or e}{where}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, SyntaxError) as e:  # raised by the user's network or factory file, e.g. out of memory
        if debug:
            raise
        print(f"error: {type(e).__name__}: {e}{_notes(e)}\n(set DIFFSOLVE_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted{_what_is_kept(args)}", file=sys.stderr)
        return 130
