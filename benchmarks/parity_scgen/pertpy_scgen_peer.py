"""pertpy's scGen on one prepared split; run by the peer venv's interpreter, never by mtpert's.

Usage: python pertpy_scgen_peer.py IN.h5ad OUT.h5ad --epochs N --seed S [--patience P]
IN holds the cells the model may fit (log-normalized X) with obs columns ``cell_type``,
``condition``, ``split`` (``train``/``val``: the same division mtpert uses) and ``target`` (True for
the held-out type's control cells, the cells to predict); its ``uns`` names the control and
perturbed labels. OUT holds one predicted cell per target cell; its ``uns`` holds
``train_seconds`` and ``predict_seconds`` (wall times of ``train`` and ``predict``), ``epochs``
(epochs run), ``best_epoch`` (lowest validation ELBO) and ``peak_rss_mb`` (this process's peak
resident memory). ``--patience P`` turns on scvi-tools' early stopping on the validation ELBO
(the scGen tutorial's setting is 25); without it every epoch runs.
"""

from __future__ import annotations

import argparse
import resource
import time

import anndata as ad
import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("inp")
    parser.add_argument("out")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--patience", type=int, default=0, help="early-stopping patience; 0: none")
    args = parser.parse_args()

    import pertpy as pt
    import scvi

    scvi.settings.seed = args.seed
    adata = ad.read_h5ad(args.inp)
    keys = adata.uns["keys"]
    pt.tl.Scgen.setup_anndata(adata, batch_key=keys["condition"], labels_key=keys["cell_type"])
    model = pt.tl.Scgen(adata)  # the published defaults: 800 x 2 hidden, latent 100, dropout 0.2
    split = adata.obs["split"].to_numpy()
    start = time.perf_counter()
    model.train(
        max_epochs=args.epochs,
        batch_size=32,
        early_stopping=args.patience > 0,
        **({"early_stopping_patience": args.patience} if args.patience > 0 else {}),
        datasplitter_kwargs={
            "external_indexing": [
                np.flatnonzero(split == "train"),
                np.flatnonzero(split == "val"),
                np.array([], dtype=int),
            ]
        },
        enable_progress_bar=False,
    )
    seconds = time.perf_counter() - start
    target = adata[adata.obs["target"].to_numpy()].copy()
    start = time.perf_counter()
    pred, _ = model.predict(
        ctrl_key=keys["control"], stim_key=keys["perturbed"], adata_to_predict=target
    )
    predict_seconds = time.perf_counter() - start
    out = ad.AnnData(
        np.asarray(pred.X, dtype=np.float32), obs=target.obs[[]].copy(), var=target.var[[]].copy()
    )
    val_elbo = np.asarray(model.history["elbo_validation"]).ravel()
    out.uns["train_seconds"] = seconds
    out.uns["predict_seconds"] = predict_seconds
    out.uns["epochs"] = len(val_elbo)
    out.uns["best_epoch"] = int(np.argmin(val_elbo)) + 1
    out.uns["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out.write_h5ad(args.out)


if __name__ == "__main__":
    main()
