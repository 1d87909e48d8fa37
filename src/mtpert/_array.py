"""Array helpers shared by models, metrics and plots (NumPy, SciPy and threadpoolctl only)."""

from __future__ import annotations

from contextlib import AbstractContextManager
from functools import cache

import numpy as np
import scipy.sparse as sp
from threadpoolctl import ThreadpoolController


def dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``X`` as a dense float32 array (for the few cells a model or a plot handles at once)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def one_blas_thread() -> AbstractContextManager[object]:
    """A context in which BLAS runs on one thread. ``threadpool_limits`` looks the libraries up
    anew on every call (milliseconds each, which adds up over the thousands of targets of a
    screen); the controller found here on first use is reused."""
    return _blas().limit(limits=1, user_api="blas")
