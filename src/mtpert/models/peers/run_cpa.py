"""Runner for the original CPA (``cpa-tools`` 0.8.8 on scvi-tools 0.20.3, torch), run under the
peer's own venv; mtpert talks to it through ``mtpert_peer.serve``.

CPA (Lotfollahi et al. 2023) encodes a cell into a basal latent state, freed of perturbation and
covariates by adversaries, and adds learnt embeddings of its perturbations (each scaled by a doser
of its dose) and of its covariates (here the cell type) before decoding. Settings are those of
CPA's own tutorials (theislab/cpa, ``docs/tutorials``):

* data without combinations (``keys["separator"]`` None) -> ``Kang.ipynb`` ("Predicting
  perturbation responses for unseen cell-types (context transfer)"):
  model ``n_latent=64, recon_loss="nb", doser_type="linear", n_hidden_encoder=128,
  n_layers_encoder=2, n_hidden_decoder=512, n_layers_decoder=2, use_batch_norm_encoder=True,
  use_layer_norm_encoder=False, use_batch_norm_decoder=False, use_layer_norm_decoder=True,
  dropout_rate_encoder=0.0, dropout_rate_decoder=0.1, variational=False``;
  training plan ``n_epochs_kl_warmup=None, n_epochs_pretrain_ae=30, n_epochs_adv_warmup=50,
  n_epochs_mixup_warmup=0, mixup_alpha=0.0, adv_steps=None, n_hidden_adv=64, n_layers_adv=3,
  use_batch_norm_adv=True, use_layer_norm_adv=False, dropout_rate_adv=0.3, reg_adv=20.0,
  pen_adv=5.0, lr=3e-4, wd=4e-7, adv_lr=3e-4, adv_wd=4e-7, adv_loss="cce", doser_lr=3e-4,
  doser_wd=4e-7, do_clip_grad=True, gradient_clip_value=1.0, step_size_lr=10``;
  ``train(max_epochs=2000, batch_size=512, early_stopping_patience=5, check_val_every_n_epoch=5)``.
* data with combinations -> ``Norman.ipynb`` ("Predicting single-cell response to unseen
  combinatorial CRISPR perturbations"): model ``n_latent=32, recon_loss="nb",
  doser_type="linear", n_hidden_encoder=256, n_layers_encoder=4, n_hidden_decoder=256,
  n_layers_decoder=2, use_batch_norm_encoder=True, use_layer_norm_encoder=False,
  use_batch_norm_decoder=False, use_layer_norm_decoder=False, dropout_rate_encoder=0.2,
  dropout_rate_decoder=0.0, variational=False``; training plan ``n_epochs_kl_warmup=None,
  n_epochs_adv_warmup=50, n_epochs_mixup_warmup=10, n_epochs_pretrain_ae=10, mixup_alpha=0.1,
  lr=1e-4, wd=3.2170178270865573e-06, adv_steps=3, reg_adv=10.0, pen_adv=20.0, adv_lr=1e-4,
  adv_wd=7.051355554517135e-06, n_layers_adv=2, n_hidden_adv=128, use_batch_norm_adv=True,
  use_layer_norm_adv=False, dropout_rate_adv=0.3, step_size_lr=25, do_clip_grad=False,
  adv_loss="cce", gradient_clip_value=5.0``; ``train(max_epochs=2000, batch_size=2048,
  early_stopping_patience=5, check_val_every_n_epoch=5)``, ``max_comb_len=2``.

Both tutorials train on raw counts with the NB likelihood (``adata.X = adata.layers["counts"]``,
``is_count_data=True``), one dummy dose "1.0" per part ("1.0+1.0" for a pair) and the cell type
as the only categorical covariate. Here likewise on ``layers["counts"]``; without counts CPA's
Gaussian likelihood (``recon_loss="gauss"``) is trained on X instead. Deviations:

* ``seed`` is ``settings["seed"]`` (the tutorials fix 6977 and 8206).
* CPA's split column is mtpert's: ``split == "val"`` cells are CPA's "valid" set, used for its
  early stopping and best-state selection on ``cpa_metric``; there is no "ood" set. The
  tutorials' per-group DEG masks (``deg_uns_key``, precomputed in their data) are not used, so
  that metric's R2 runs over all genes.
* ``check_val_every_n_epoch`` is capped at ``max_epochs``: CPA restores its best validated state
  at the end, which would be the untrained one if validation never ran.
* Labels are opaque: they are mapped to tokens, since CPA splits perturbations on "+" and joins
  covariate and perturbation names with "_".

Every value above can be overridden through ``settings["params"]`` (any key of the model or
training-plan dicts, or ``max_epochs``, ``batch_size``, ``early_stopping_patience``,
``check_val_every_n_epoch``, ``sample_counts``).

Prediction (as the Norman tutorial's counterfactuals): the control cells are encoded, and their
perturbation input (``obsm["perts"]``, ``obsm["perts_doses"]``) is set to the target's parts at
dose 1.0 each (or ``dose``); ``CPA.predict`` decodes them into ``obsm["CPA_pred"]``. With NB that
is the decoder's mean count at the cell's own library size (as the tutorials evaluate it),
returned normalized to 1e4 and log1p'd; ``sample_counts=True`` (not in the tutorials) draws counts
from that NB instead, so the predicted cells are as sparse as X and their log1p mean is
comparable with X's (the log of a mean lies above the mean of logs for sparse genes). With
``gauss`` it is the decoder's mean on X's scale (not clipped at 0). CPA predicts any
trained perturbation (or, with combinations, any pair of trained singles) in any cell type whose
controls it saw; it cannot predict a perturbation it never saw (ValueError).
"""

from __future__ import annotations

import os
from typing import Any

import anndata as ad
import numpy as np

_PERT, _DOSE, _CELL, _SPLIT = "cpa_perturbation", "cpa_dose", "cpa_cell_type", "cpa_split"
_CTRL = "ctrl"  # CPA's control token; perturbation parts become "p0", "p1", ...

_KANG_MODEL: dict[str, Any] = {
    "n_latent": 64,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 128,
    "n_layers_encoder": 2,
    "n_hidden_decoder": 512,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": True,
    "dropout_rate_encoder": 0.0,
    "dropout_rate_decoder": 0.1,
    "variational": False,
}
_KANG_PLAN: dict[str, Any] = {
    "n_epochs_kl_warmup": None,
    "n_epochs_pretrain_ae": 30,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 0,
    "mixup_alpha": 0.0,
    "adv_steps": None,
    "n_hidden_adv": 64,
    "n_layers_adv": 3,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "reg_adv": 20.0,
    "pen_adv": 5.0,
    "lr": 0.0003,
    "wd": 4e-07,
    "adv_lr": 0.0003,
    "adv_wd": 4e-07,
    "adv_loss": "cce",
    "doser_lr": 0.0003,
    "doser_wd": 4e-07,
    "do_clip_grad": True,
    "gradient_clip_value": 1.0,
    "step_size_lr": 10,
}
_NORMAN_MODEL: dict[str, Any] = {
    "n_latent": 32,
    "recon_loss": "nb",
    "doser_type": "linear",
    "n_hidden_encoder": 256,
    "n_layers_encoder": 4,
    "n_hidden_decoder": 256,
    "n_layers_decoder": 2,
    "use_batch_norm_encoder": True,
    "use_layer_norm_encoder": False,
    "use_batch_norm_decoder": False,
    "use_layer_norm_decoder": False,
    "dropout_rate_encoder": 0.2,
    "dropout_rate_decoder": 0.0,
    "variational": False,
}
_NORMAN_PLAN: dict[str, Any] = {
    "n_epochs_kl_warmup": None,
    "n_epochs_adv_warmup": 50,
    "n_epochs_mixup_warmup": 10,
    "n_epochs_pretrain_ae": 10,
    "mixup_alpha": 0.1,
    "lr": 0.0001,
    "wd": 3.2170178270865573e-06,
    "adv_steps": 3,
    "reg_adv": 10.0,
    "pen_adv": 20.0,
    "adv_lr": 0.0001,
    "adv_wd": 7.051355554517135e-06,
    "n_layers_adv": 2,
    "n_hidden_adv": 128,
    "use_batch_norm_adv": True,
    "use_layer_norm_adv": False,
    "dropout_rate_adv": 0.3,
    "step_size_lr": 25,
    "do_clip_grad": False,
    "adv_loss": "cce",
    "gradient_clip_value": 5.0,
}
_FIT: dict[str, Any] = {
    "max_epochs": 2000,
    "early_stopping_patience": 5,
    "check_val_every_n_epoch": 5,
}
_PREDICT: dict[str, Any] = {"sample_counts": False}  # not a tutorial setting: see the docstring


def _settings(combinations: bool, params: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The tutorial's model / training-plan / train() settings, with the user's overrides."""
    if combinations:
        chosen = {
            "model": dict(_NORMAN_MODEL),
            "plan": dict(_NORMAN_PLAN),
            "fit": {**_FIT, "batch_size": 2048},
        }
    else:
        chosen = {
            "model": dict(_KANG_MODEL),
            "plan": dict(_KANG_PLAN),
            "fit": {**_FIT, "batch_size": 512},
        }
    chosen["predict"] = dict(_PREDICT)
    for name, value in params.items():
        group = next((g for g in chosen.values() if name in g), None)
        if group is None:
            known = sorted(k for g in chosen.values() for k in g)
            raise ValueError(f"cpa: unknown param {name!r}; known: {known}")
        group[name] = value
    fit = chosen["fit"]
    fit["check_val_every_n_epoch"] = min(
        int(fit["check_val_every_n_epoch"]), int(fit["max_epochs"])
    )
    return chosen


def _limit_threads(threads: int) -> None:
    """Cap BLAS/OpenMP (read when torch starts) and torch's own pools."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if hasattr(x, "toarray") else x, dtype=np.float32)


def _parts(label: str, keys: dict[str, Any]) -> list[str]:
    separator = keys.get("separator")
    return label.split(separator) if separator and label != keys["control"] else [label]


def _cpa_input(cells: ad.AnnData, counts: bool, obs: dict[str, Any]) -> ad.AnnData:
    """A fresh AnnData for CPA: counts (NB) or log-normalized X (gauss) in X, and CPA's obs columns."""
    x = cells.layers["counts"] if counts else cells.X
    adata = ad.AnnData(X=_dense(x), obs=dict(obs), var=cells.var[[]].copy())
    adata.obs_names = cells.obs_names
    return adata


def train(cells: ad.AnnData, settings: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    keys = settings["keys"]
    combinations = keys.get("separator") is not None
    chosen = _settings(combinations, dict(settings.get("params") or {}))
    model_kw, plan_kw, fit_kw = chosen["model"], chosen["plan"], chosen["fit"]
    counts = model_kw["recon_loss"] in ("nb", "zinb")
    if counts and "counts" not in cells.layers:
        model_kw["recon_loss"], counts = "gauss", False  # no counts: CPA's Gaussian likelihood on X
    seed = int(settings["seed"])
    _limit_threads(int(settings["threads"]))

    import cpa
    import scvi
    import torch

    scvi.settings.seed = seed
    labels = cells.obs[keys["condition"]].astype(str)
    names = sorted(
        {p for label in set(labels) if label != keys["control"] for p in _parts(label, keys)}
    )
    tokens = {name: f"p{i}" for i, name in enumerate(names)}
    encoded = [
        _CTRL if label == keys["control"] else "+".join(tokens[p] for p in _parts(label, keys))
        for label in labels
    ]
    split = cells.obs["split"].astype(str).to_numpy()
    if not (split == "val").any():  # CPA selects its best state on validation cells: draw 10%
        split = np.where(np.random.default_rng(seed).random(len(split)) < 0.1, "val", "train")
    adata = _cpa_input(
        cells,
        counts,
        {
            _PERT: encoded,
            _DOSE: [
                "+".join("1.0" for _ in e.split("+")) for e in encoded
            ],  # the tutorials' dummy dose
            _CELL: cells.obs[keys["cell_type"]].astype(str).to_numpy(),
            _SPLIT: split,
        },
    )

    # setup_anndata reuses encoders cached on the class by an earlier setup: start afresh.
    cpa.CPA.pert_encoder = cpa.CPA.covars_encoder = None
    cpa.CPA.setup_anndata(
        adata,
        perturbation_key=_PERT,
        control_group=_CTRL,
        dosage_key=_DOSE,
        categorical_covariate_keys=[_CELL],
        is_count_data=counts,
        max_comb_len=2 if combinations else 1,
    )
    model = cpa.CPA(
        adata,
        split_key=_SPLIT,
        train_split="train",
        valid_split="val",
        test_split="ood",
        **model_kw,
        seed=seed,
    )
    model.train(
        use_gpu=torch.cuda.is_available(),
        plan_kwargs=plan_kw,
        save_path=False,  # else CPA saves the model into the working directory
        enable_progress_bar=False,
        **fit_kw,
    )

    epochs = int((model.epoch_history["mode"] == "train").sum())
    info = {
        "epochs": epochs,
        "stopped_early": epochs
        < int(fit_kw["max_epochs"]),  # then the best validated state is kept
        "recon_loss": model_kw["recon_loss"],
        "tutorial": "Norman.ipynb" if combinations else "Kang.ipynb",
        "settings": chosen,
    }
    state = {
        "model": model,
        "keys": keys,
        "tokens": tokens,
        "encoder": dict(model.pert_encoder),  # token -> CPA index, fixed now (class-level in CPA)
        "max_parts": 2 if combinations else 1,
        "counts": counts,
        "sample_counts": bool(chosen["predict"]["sample_counts"]) and counts,
        "seed": seed,
        "cell_types": set(adata.obs[_CELL]),
    }
    return state, info


def predict(
    state: dict[str, Any], control: ad.AnnData, condition: str, dose: float | None
) -> np.ndarray:
    keys, tokens = state["keys"], state["tokens"]
    parts = [_CTRL] if condition == keys["control"] else _parts(condition, keys)
    unseen = [p for p in parts if p != _CTRL and p not in tokens]
    if unseen:
        raise ValueError(
            f"cpa: {condition!r} has perturbation(s) {unseen} never seen in training; CPA learns one "
            "embedding per perturbation, so it predicts only trained perturbations and, with "
            "combinations, pairs of trained singles"
        )
    if len(parts) > state["max_parts"]:
        raise ValueError(
            f"cpa: {condition!r} has {len(parts)} parts; this model takes at most {state['max_parts']}"
        )
    cell_types = control.obs[keys["cell_type"]].astype(str).to_numpy()
    unknown = set(cell_types) - state["cell_types"]
    if unknown:
        raise ValueError(
            f"cpa: cell type(s) {sorted(unknown)} never seen in training (not even their controls)"
        )

    # The cells are controls (obs says so, as CPA's registered categories require); their
    # perturbation input, which CPA's encoder/decoder consume, is the target's parts and doses.
    n, pad = control.n_obs, state["max_parts"] - len(parts)
    adata = _cpa_input(
        control,
        state["counts"],
        {
            _PERT: [_CTRL] * n,
            _DOSE: ["1.0"] * n,
            _CELL: cell_types,
            _SPLIT: ["ood"] * n,
            "CPA_cat": [
                f"{c}_{_CTRL}" for c in cell_types
            ],  # setup_anndata's "<covariates>_<pert>" column
            f"CPA_{_CTRL}": np.ones(n, dtype=int),  # setup_anndata's control flag
        },
    )
    index = [state["encoder"][p if p == _CTRL else tokens[p]] for p in parts] + [
        0
    ] * pad  # 0: padding
    doses = [1.0 if dose is None else float(dose)] * len(parts) + [0.0] * pad
    adata.obsm["perts"] = np.tile(np.asarray(index, dtype=int), (n, 1))
    adata.obsm["perts_doses"] = np.tile(np.asarray(doses, dtype=float), (n, 1))

    state["model"].predict(adata, batch_size=2048)
    predicted = np.asarray(adata.obsm["CPA_pred"], dtype=np.float64)
    if state["sample_counts"]:  # draw counts from the decoder's NB instead of taking its mean
        import torch
        from scvi.distributions import NegativeBinomial

        torch.manual_seed(state["seed"])
        theta = torch.exp(state["model"].module.px_r.detach().cpu().double())
        predicted = NegativeBinomial(mu=torch.from_numpy(predicted), theta=theta).sample().numpy()
    if state["counts"]:  # counts -> normalize to 1e4 per cell, log1p (like X)
        predicted = np.log1p(
            predicted / np.maximum(predicted.sum(axis=1, keepdims=True), 1e-12) * 1e4
        )
    return predicted.astype(np.float32)


if __name__ == "__main__":
    from mtpert_peer import serve

    serve(train, predict)
