"""``python -m diffsolve.cli …``: the same as ``python -m diffsolve …``."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
