"""Array helpers shared by models and plots, with no dependency beyond NumPy and SciPy."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def dense(X: np.ndarray | sp.spmatrix) -> np.ndarray:
    """``X`` as a dense float32 array (for the few cells a model or a plot handles at once)."""
    return np.asarray(X.toarray() if sp.issparse(X) else X, dtype=np.float32)
