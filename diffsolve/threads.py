"""CPU threads of a command: torch's intra-op pool and the BLAS / OpenMP pools numpy and scipy load.

``torch.set_num_threads`` bounds torch alone; numpy's and scipy's OpenBLAS keep one thread per core
(the feature metrics' linear algebra, scikit-learn), so ``--threads 1`` could still run on every
core. :func:`set_threads` bounds all of them, through threadpoolctl.
"""
from __future__ import annotations

import os


def set_threads(threads: int | None, on_cpu: bool) -> None:
    """``threads`` CPU threads for torch and for the BLAS / OpenMP libraries numpy and scipy load; with
    ``threads=None``, one thread when the work runs on the CPU and ``OMP_NUM_THREADS`` is not set (the
    commands' batches are small, and on busy cores extra threads mostly wait for each other), else
    nothing is changed."""
    if threads is None:
        if not on_cpu or "OMP_NUM_THREADS" in os.environ:
            return
        threads = 1
    import numpy  # noqa: F401  (load the BLAS libraries first: the limit reaches only loaded ones)
    import scipy.linalg  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    threadpool_limits(limits=threads)
