"""CellFlow peer runner (``cellflow-tools`` 0.0.9, JAX on CPU), run under the peer's own venv.

CellFlow (Klein et al. 2025) learns a conditional flow-matching model (``solver="otfm"``) that
pushes control cells to perturbed cells in a PCA space, conditioned on a learnt embedding of the
set of perturbation covariates (up to 2 here) pooled together with the sample covariate.

Settings follow CellFlow's own tutorials (docs/notebooks of theislab/CellFlow):

* data without combinations (e.g. Kang IFN-b) -> ``100_pbmc.ipynb`` ("Predicting donor-specific
  cytokine effects on PBMCs"): PCA with 100 components on the training cells;
  ``layers_before_pool`` perturbation MLP [1024, 1024] (dropout 0.5) and sample-covariate MLP
  [256, 256]; ``pooling="attention_token"``; ``layers_after_pool`` MLP [1024, 1024];
  ``condition_embedding_dim=256``; ``cond_output_dropout=0.9``; ``time_encoder_dims`` [1024]*3;
  ``hidden_dims`` [2048]*3; ``decoder_dims`` [4096]*3; concatenation conditioning;
  ``probability_path={"constant_noise": 0.5}``; ``match_linear(epsilon=0.5, tau_a=tau_b=1)``;
  ``optax.MultiSteps(optax.adam(5e-5), 20)``; ``num_iterations=500_000``; ``batch_size=1024``.
* data with combinations (e.g. Norman) -> ``500_combosciplex.ipynb`` ("Predicting the effect of
  combinatorial drug treatments"): PCA with 100 components; ``max_combination_length=2`` with a
  zero "control" token padding singles; ``layers_before_pool`` MLP [256, 256];
  ``pooling="mean"`` (DeepSets); ``layers_after_pool`` MLP [256, 256];
  ``condition_embedding_dim=64``; ``cond_output_dropout=0.9``; ``hidden_dims`` [2048]*3;
  ``decoder_dims`` [4096]*3; ``time_encoder_dims`` (2048,)*3 (the ``prepare_model`` default);
  ``probability_path={"constant_noise": 1.5}``; ``match_linear(epsilon=1.0, tau_a=tau_b=1)``;
  ``linear_projection_before_concatenation=True``; ``MultiSteps(adam(5e-5), 20)`` (default);
  ``num_iterations=300_000``; ``batch_size=1024``.

Deviations forced by the offline setting and the contract:

* Perturbations are one-hot encoded (``cellflow.preprocessing.encode_onehot``), as
  ``perturbation_covariate_reps``; the tutorials use ESM2 embeddings / molecular fingerprints,
  which need downloads. One-hot means a single never seen in training cannot be predicted.
* The context (``keys["cell_type"]``) is a one-hot sample covariate and a split covariate (the
  tutorial's ``donor``), so each context's controls are mapped to its own perturbed cells.
  Controls of a context without any perturbed training cells (the held-out context) take part
  in the PCA but not in the flow (CellFlow requires a target for every control split); their
  one-hot column is then never trained.
* ``split == "val"`` cells are ignored (CellFlow has no early stopping; the tutorials only log
  metrics on validation data).
* Predicted PCA coordinates are decoded to genes with ``reconstruct_pca`` and the training PCA
  loadings + mean, as the tutorials do; values are not clipped, so they can be slightly < 0.
* CellFlow trains by iterations, not epochs: ``info["epochs"]`` reports the iterations.

The tutorial networks are sized for an A100: on CPU one iteration at batch 1024 takes seconds,
so every value above can be overridden through ``settings["params"]`` (keys of ``_defaults``,
e.g. ``{"num_iterations": 2000, "hidden_dims": [256, 256], "grad_accumulation": 1}``).
"""

from __future__ import annotations

import os
from typing import Any

import anndata as ad
import numpy as np

_PERT = "perturbation"  # CellFlow perturbation-covariate group
_P1, _P2, _CTX, _IS_CTRL, _COND = "pert_1", "pert_2", "context", "is_control", "condition"
_NULL = "__cellflow_null__"  # zero token padding singles (the tutorials' "control" token)


def _defaults(combinations: bool) -> dict[str, Any]:
    common = {
        "n_comps": 100,
        "cond_output_dropout": 0.9,
        "hidden_dims": [2048, 2048, 2048],
        "decoder_dims": [4096, 4096, 4096],
        "learning_rate": 5e-5,
        "grad_accumulation": 20,  # optax.MultiSteps(optax.adam(5e-5), 20)
        "batch_size": 1024,
        "match_tau": 1.0,
        "ode_tol": 1e-5,  # rtol = atol of the solver's default diffrax.PIDController (Tsit5)
    }
    if combinations:  # 500_combosciplex.ipynb
        return common | {
            "pooling": "mean",
            "pert_layers": [256, 256],
            "pert_dropout": 0.0,
            # 500_combosciplex has no sample covariate: 100_pbmc's donor MLP
            "context_layers": [256, 256],
            "after_pool_layers": [256, 256],
            "condition_embedding_dim": 64,
            "time_encoder_dims": [2048, 2048, 2048],
            "noise": 1.5,
            "match_epsilon": 1.0,
            "linear_projection_before_concatenation": True,
            "num_iterations": 300_000,
        }
    return common | {  # 100_pbmc.ipynb
        "pooling": "attention_token",
        "pert_layers": [1024, 1024],
        "pert_dropout": 0.5,
        "context_layers": [256, 256],
        "after_pool_layers": [1024, 1024],
        "condition_embedding_dim": 256,
        "time_encoder_dims": [1024, 1024, 1024],
        "noise": 0.5,
        "match_epsilon": 0.5,
        "linear_projection_before_concatenation": False,
        "num_iterations": 500_000,
    }


def _limit_threads(threads: int) -> None:
    """Cap XLA (must run before jax is first imported) and the BLAS used by numpy/scanpy."""
    flags = f"--xla_cpu_multi_thread_eigen={'true' if threads > 1 else 'false'} "
    os.environ["XLA_FLAGS"] = flags + f"intra_op_parallelism_threads={threads}"
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def _parts(label: str, keys: dict[str, Any]) -> list[str]:
    sep = keys.get("separator")
    return [label] if label == keys["control"] or not sep else label.split(sep)


def _flow_obs(obs: Any, keys: dict[str, Any], n_parts: int) -> Any:
    """obs in CellFlow's layout: one column per combination slot, null-padded, plus context."""
    import pandas as pd

    labels = obs[keys["condition"]].astype(str)
    parts = [_parts(label, keys) for label in labels]
    if any(len(p) > n_parts for p in parts):
        raise ValueError(
            f"CellFlow runner supports combinations of at most {n_parts} perturbations"
        )
    is_ctrl = (labels == keys["control"]).to_numpy()
    cols = {
        f"pert_{i + 1}": [_NULL if c or len(p) <= i else p[i] for p, c in zip(parts, is_ctrl)]
        for i in range(n_parts)
    }
    return pd.DataFrame(
        {
            **cols,
            _CTX: obs[keys["cell_type"]].astype(str).to_numpy(),
            _IS_CTRL: is_ctrl,
            _COND: labels.to_numpy(),
        },
        index=obs.index,
    )


def train(cells: ad.AnnData, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    _limit_threads(int(settings.get("threads", 1)))
    import functools

    import optax
    from cellflow.model import CellFlow
    from cellflow.preprocessing import centered_pca, encode_onehot
    from cellflow.utils import match_linear

    keys, seed = settings["keys"], int(settings.get("seed", 0))
    n_parts = 2 if keys.get("separator") else 1
    cfg = _defaults(n_parts == 2)
    unknown = set(settings.get("params", {})) - set(cfg)
    if unknown:
        raise ValueError(f"Unknown CellFlow params {sorted(unknown)}; known: {sorted(cfg)}")
    cfg |= settings.get("params", {})

    cells = cells[cells.obs["split"].astype(str) != "val"] if "split" in cells.obs else cells
    adata = ad.AnnData(_dense(cells.X), obs=_flow_obs(cells.obs, keys, n_parts))
    adata.var_names = cells.var_names

    # PCA on the training cells (tutorials: centered_pca(adata_train, n_comps=100)).
    n_comps = int(min(cfg["n_comps"], adata.n_obs - 1, adata.n_vars - 1))
    centered_pca(adata, n_comps=n_comps, keep_centered_data=False, random_state=seed)
    pca_mean, pca_pcs = np.asarray(adata.varm["X_mean"]), np.asarray(adata.varm["PCs"])

    # One-hot representations; the null token is all zeros so CellFlow masks it in pooling.
    pert_cols = [f"pert_{i + 1}" for i in range(n_parts)]
    encode_onehot(
        adata, covariate_keys=pert_cols, uns_key_added="pert_onehot", exclude_values=_NULL
    )
    adata.uns["pert_onehot"][_NULL] = np.zeros_like(next(iter(adata.uns["pert_onehot"].values())))
    encode_onehot(adata, covariate_keys=_CTX, uns_key_added="context_onehot")
    reps = {k: dict(adata.uns[k]) for k in ("pert_onehot", "context_onehot")}

    # Controls of contexts without perturbed cells cannot be a flow source (no target split).
    has_target = set(adata.obs.loc[~adata.obs[_IS_CTRL], _CTX])
    flow = adata[adata.obs[_CTX].isin(has_target).to_numpy()].copy()

    cf = CellFlow(flow, solver="otfm")
    cf.prepare_data(
        sample_rep="X_pca",
        control_key=_IS_CTRL,
        perturbation_covariates={_PERT: tuple(pert_cols)},
        perturbation_covariate_reps={_PERT: "pert_onehot"},
        sample_covariates=[_CTX],
        sample_covariate_reps={_CTX: "context_onehot"},
        split_covariates=[_CTX],
        max_combination_length=n_parts,
        null_value=0.0,
    )
    optimizer = optax.adam(cfg["learning_rate"])
    if cfg["grad_accumulation"] > 1:
        optimizer = optax.MultiSteps(optimizer, cfg["grad_accumulation"])
    cf.prepare_model(
        condition_mode="deterministic",
        regularization=0.0,
        pooling=cfg["pooling"],
        layers_before_pool={
            _PERT: {
                "layer_type": "mlp",
                "dims": list(cfg["pert_layers"]),
                "dropout_rate": cfg["pert_dropout"],
            },
            _CTX: {"layer_type": "mlp", "dims": list(cfg["context_layers"]), "dropout_rate": 0.0},
        },
        layers_after_pool={
            "layer_type": "mlp",
            "dims": list(cfg["after_pool_layers"]),
            "dropout_rate": 0.0,
        },
        condition_embedding_dim=cfg["condition_embedding_dim"],
        cond_output_dropout=cfg["cond_output_dropout"],
        time_encoder_dims=list(cfg["time_encoder_dims"]),
        hidden_dims=list(cfg["hidden_dims"]),
        decoder_dims=list(cfg["decoder_dims"]),
        conditioning="concatenation",
        probability_path={"constant_noise": cfg["noise"]},
        match_fn=functools.partial(
            match_linear,
            epsilon=cfg["match_epsilon"],
            tau_a=cfg["match_tau"],
            tau_b=cfg["match_tau"],
        ),
        optimizer=optimizer,
        linear_projection_before_concatenation=cfg["linear_projection_before_concatenation"],
        seed=seed,
    )
    cf.train(
        num_iterations=int(cfg["num_iterations"]),
        batch_size=int(cfg["batch_size"]),
        valid_freq=max(int(cfg["num_iterations"]), 1) + 1,
    )

    losses = cf.trainer.training_logs["loss"]
    state = {
        "cf": cf,
        "cfg": cfg,
        "reps": reps,
        "pca_mean": pca_mean,
        "pca_pcs": pca_pcs,
        "keys": keys,
        "n_parts": n_parts,
    }
    info = {
        "epochs": int(cfg["num_iterations"]),  # CellFlow counts iterations, not epochs
        "iterations": int(cfg["num_iterations"]),
        "final_loss": float(np.mean(losses[-100:])) if losses else None,
        "n_comps": n_comps,
        "settings": cfg,
    }
    return state, info


def predict(
    state: dict[str, Any], control: ad.AnnData, condition: str, dose: float | None
) -> np.ndarray:
    import diffrax
    import pandas as pd
    from cellflow.preprocessing import project_pca, reconstruct_pca

    if dose is not None:
        raise ValueError("CellFlow runner: doses are not supported")
    keys, reps = state["keys"], state["reps"]
    parts = _parts(condition, keys)
    if len(parts) > state["n_parts"]:
        raise ValueError(
            f"CellFlow runner: {condition!r} has more than {state['n_parts']} perturbations"
        )
    unseen = [p for p in parts if p not in reps["pert_onehot"] or p == _NULL]
    if unseen:
        raise ValueError(
            f"CellFlow (one-hot embeddings) cannot predict perturbations unseen in training: {unseen}"
        )
    row = {f"pert_{i + 1}": parts[i] if i < len(parts) else _NULL for i in range(state["n_parts"])}

    obs = _flow_obs(control.obs, keys, state["n_parts"])
    obs[_IS_CTRL] = True
    x = _dense(control.X)
    out = np.empty_like(x)
    tol = state["cfg"]["ode_tol"]
    ode = {"stepsize_controller": diffrax.PIDController(rtol=tol, atol=tol)}
    for context in pd.unique(obs[_CTX]):
        if context not in reps["context_onehot"]:
            raise ValueError(
                f"CellFlow runner: context {context!r} was not among the training cells"
            )
        rows = (obs[_CTX] == context).to_numpy()
        src = ad.AnnData(x[rows], obs=obs[rows].copy(), uns={k: dict(v) for k, v in reps.items()})
        project_pca(src, ref_means=state["pca_mean"], ref_pcs=state["pca_pcs"])
        covariates = pd.DataFrame([{**row, _CTX: context, _IS_CTRL: False, _COND: condition}])
        pred = state["cf"].predict(
            adata=src, covariate_data=covariates, sample_rep="X_pca", condition_id_key=_COND, **ode
        )
        decoded = ad.AnnData(np.empty((int(rows.sum()), x.shape[1]), np.float32))
        decoded.obsm["X_pca"] = np.asarray(pred[condition]).reshape(decoded.n_obs, -1)
        reconstruct_pca(
            decoded, use_rep="X_pca", ref_means=state["pca_mean"], ref_pcs=state["pca_pcs"]
        )
        out[rows] = decoded.layers["X_recon"]
    return out


if __name__ == "__main__":
    from mtpert_peer import serve

    serve(train, predict)
