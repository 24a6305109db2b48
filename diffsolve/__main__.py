"""``python -m diffsolve …`` (also under ``torchrun -m diffsolve …``): the command line of :mod:`diffsolve.cli`."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
