"""CPU threads of a command: torch's intra-op pool and the BLAS pools of numpy and scipy.

``torch.set_num_threads`` bounds torch alone; numpy's and scipy's OpenBLAS keep one thread per core
(the feature metrics' linear algebra), so ``--threads 1`` could still run on every core.
:func:`set_threads` bounds the pools already loaded (threadpoolctl) and sets ``OPENBLAS_NUM_THREADS`` /
``MKL_NUM_THREADS`` for BLAS libraries loaded later (scipy's, when the metrics import it). An OpenMP
library loaded later (scikit-learn's own) is not covered.
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
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # read by a BLAS library when it loads
        os.environ[var] = str(threads)
    threadpool_limits(limits=threads)  # the pools loaded already (numpy's BLAS, torch's OpenMP)
