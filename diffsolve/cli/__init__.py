r"""The ``diffsolve`` command line: ``bench``, ``sample``, ``likelihood``, ``tune``, ``list``.

    diffsolve bench                                   # default: key solvers × NFE 5,10,20,50
    diffsolve bench --problems mix64 --solvers ddim,dpmpp_2m --nfe 10,20 --seeds 0-499
    torchrun --nproc-per-node 4 -m diffsolve bench --device cuda   # seeds sharded over processes
    diffsolve sample --problem ring2d --solver dpmpp_2m --nfe 20 --seeds 0-63 --out x.npy
    diffsolve sample --model digits --solver unipc --nfe 10 --seeds 0-15 --out digits.pt
    diffsolve likelihood --problem ring2d --n 64       # vs the exact log p
    diffsolve tune --problem mix64 --solver unipc --nfe 10 --out grid.json
    diffsolve sample --problem mix64 --solver unipc --grid grid.json --seeds 0-63 --out x.npy
    diffsolve list solvers --json

Bad input (unknown names, impossible budgets, unwritable paths) prints ``error: …`` and exits
with status 2, never a traceback (set ``DIFFSOLVE_DEBUG=1`` to see one).

One module per command, each with its options (``add_parser``) beside the function that runs it
(``run``); :mod:`._common` holds what they share.
"""
from __future__ import annotations

import argparse
import sys

from . import bench, likelihood, listing, sample, tune
from ._common import EXIT_USAGE, CLIError, Parser, run_command

__all__ = ["main", "build_parser", "CLIError", "EXIT_USAGE"]

COMMANDS = (bench, sample, likelihood, tune, listing)  # in the order `diffsolve --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="diffsolve", description="Numerical ODE/SDE solvers for diffusion models.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=Parser, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``diffsolve`` console script (and ``python -m diffsolve``)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # named by the command they were given to, whose --help lists what it takes
        command = getattr(args, "command", None)
        Parser(prog=f"diffsolve {command}" if command else "diffsolve").error(
            f"unrecognized arguments: {' '.join(extra)}")
    if args.version:
        from .._version import __version__

        print(f"diffsolve {__version__}")
        return 0
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    return run_command(args.run, args)
