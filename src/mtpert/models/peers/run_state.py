"""mtpert peer runner: Arc Institute's State transition model ("ST", arc-state 0.11.1).

Runs under State's own venv (python3.11, torch 2.13.0 CPU, arc-state 0.11.1); never imports mtpert.

Training goes through State's own entry point, ``state tx train`` (Hydra config ``model=state``),
from scratch: the fold's cells are written to a temporary directory as one cell-load h5ad file
plus a TOML split file, cells are represented by their log-normalized HVG expression
(``obsm["X_hvg"]``, ``data.kwargs.embed_key=X_hvg``, ``output_space=gene``: the model reads and
writes gene space directly, no pretrained SE embedding, no decoder), perturbations are one-hot
(cell-load's default without a perturbation features file), and cell-load builds the cell sets:
each set holds cells of one (cell type, perturbation) group, paired with control cells of the
same cell type drawn at random (``basal_mapping_strategy=random``); control cells also form sets
of their own (``should_yield_control_cells``, ``map_controls``), so a held-out cell type's
controls are seen in training while its perturbed cells are not. ST has no cell-type input: the
context is carried by the control set itself.

Settings: the Replogle-Nadig HVG tutorial of State (README "State Transition Model" / Colab
"Train an ST model for genetic perturbation prediction using the Replogle-Nadig dataset"):
``model=state``, ``model.kwargs.cell_set_len=64``, ``model.kwargs.hidden_dim=328``,
``training.batch_size=8``, ``training.lr=1e-4``, ``training.max_steps=40000``, energy distance
loss (``loss=energy``, ``blur=0.05``), 8-layer bidirectional Llama backbone (model config
``state.yaml``). Scaled down for CPU only: ``max_steps`` defaults to 1000 instead of 40000
(about 25 min on one CPU thread; the step cost does not depend on the data size), data loading
runs in-process (``num_workers=0`` instead of 12), no wandb, no validation (State's tutorial
predicts with ``final.ckpt`` anyway; mtpert's "val" cells are left out). Needs
``transformers<5``: transformers 5 refuses the tutorial's hidden size 328 with 12 heads.
Every value is overridable via ``settings["params"]`` (keys of ``TUTORIAL_PARAMS``).

Prediction mirrors ``state tx infer`` (``predict_step(..., padded=False)`` on windows of at most
``cell_set_len`` cells sharing one perturbation, then clipping to [0, 14]), except that the
given control cells themselves form the sets, so each output row is the prediction for that
control cell. ST knows only the perturbations it has a one-hot column for (a combination seen
in training is a label of its own): an unseen label, in particular an unseen combination "A+B"
of seen singles, raises ValueError.
"""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

# State's Replogle HVG tutorial values, except the ones marked CPU (scaled down for CPU).
TUTORIAL_PARAMS: dict[str, Any] = {
    "model": "state",  # Hydra model config (state.yaml: Llama, 8 layers, energy loss)
    "cell_set_len": 64,
    "hidden_dim": 328,
    "batch_size": 8,  # sets per step
    "lr": 1e-4,
    "max_steps": 1000,  # CPU: tutorial trains 40000 steps (~1.5 s per step on one CPU thread)
    "num_workers": 0,  # CPU: tutorial uses 12 loader workers
}
_PERT, _CELL_TYPE, _BATCH, _CONTROL = "pert", "cell_type", "batch", "ctrl"


def _dense(x: Any) -> np.ndarray:
    x = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def train(cells: ad.AnnData, settings: dict) -> tuple[dict, dict]:
    import contextlib
    import os
    import subprocess
    import sys
    import tempfile

    import pandas as pd
    import torch
    from mtpert_peer import die_with_parent
    from state.tx.models.state_transition import StateTransitionPerturbationModel

    keys, seed, threads = settings["keys"], int(settings["seed"]), int(settings["threads"])
    params = {**TUTORIAL_PARAMS, **settings.get("params", {})}
    torch.set_num_threads(threads)
    cells = cells[cells.obs["split"] != "val"] if "split" in cells.obs else cells

    # Opaque labels become safe codes (they go through Hydra overrides and h5 categories).
    condition = cells.obs[keys["condition"]].astype(str)
    perts = sorted(set(condition) - {str(keys["control"])})
    code_of = {p: f"p{i}" for i, p in enumerate(perts)} | {str(keys["control"]): _CONTROL}
    cell_type = cells.obs[keys["cell_type"]].astype(str)
    ct_code = {c: f"c{i}" for i, c in enumerate(sorted(set(cell_type)))}
    obs = pd.DataFrame(
        {
            _PERT: pd.Categorical(condition.map(code_of)),
            _CELL_TYPE: pd.Categorical(cell_type.map(ct_code)),
            _BATCH: pd.Categorical(cell_type.map(ct_code)),  # no batch covariate here
        },
        index=[f"cell{i}" for i in range(cells.n_obs)],
    )
    x = _dense(cells.X)
    genes = list(cells.var_names.astype(str))
    var = pd.DataFrame({"gene_name": genes}, index=pd.Index(genes, name="gene"))  # cell-load's key
    data = ad.AnnData(X=x, obs=obs, var=var)
    data.obsm["X_hvg"] = x

    # in the peer's folder (the working directory), which mtpert removes even if this is killed
    with tempfile.TemporaryDirectory(prefix="state_", dir=os.getcwd()) as tmp:
        os.makedirs(f"{tmp}/data")
        data.write_h5ad(f"{tmp}/data/fold.h5ad")
        with open(f"{tmp}/split.toml", "w") as f:
            f.write(f'[datasets]\nfold = "{tmp}/data"\n\n[training]\nfold = "train"\n')
        overrides = [
            f"data.kwargs.toml_config_path={tmp}/split.toml",
            "data.kwargs.embed_key=X_hvg",
            "data.kwargs.output_space=gene",
            f"data.kwargs.pert_col={_PERT}",
            f"data.kwargs.cell_type_key={_CELL_TYPE}",
            f"data.kwargs.batch_col={_BATCH}",
            f"data.kwargs.control_pert={_CONTROL}",
            f"data.kwargs.num_workers={params['num_workers']}",
            "data.kwargs.pin_memory=false",
            f"++data.kwargs.random_seed={seed}",
            f"model={params['model']}",
            f"model.kwargs.cell_set_len={params['cell_set_len']}",
            f"model.kwargs.hidden_dim={params['hidden_dim']}",
            "++model.kwargs.gene_decoder_bool=false",  # gene space in and out: no decoder
            f"training.batch_size={params['batch_size']}",
            f"training.lr={params['lr']}",
            f"training.max_steps={params['max_steps']}",
            f"training.val_freq={params['max_steps']}",
            f"training.ckpt_every_n_steps={params['max_steps']}",
            f"training.train_seed={seed}",
            "use_wandb=false",
            f"output_dir={tmp}",
            "name=run",
        ]
        env = os.environ | {
            "OMP_NUM_THREADS": str(threads),
            "MKL_NUM_THREADS": str(threads),
            "WANDB_MODE": "disabled",
            "CUDA_VISIBLE_DEVICES": "",
        }
        with open(f"{tmp}/train.log", "w") as log:
            done = subprocess.run(
                [sys.executable, "-m", "state", "tx", "train", *overrides],
                preexec_fn=die_with_parent,  # ends with this runner, as this runner ends with mtpert
                check=False,
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if done.returncode != 0:
            with open(f"{tmp}/train.log") as log:
                tail = log.read()[-4000:]
            raise RuntimeError(f"state tx train failed (exit {done.returncode}):\n{tail}")
        ckpt = f"{tmp}/run/checkpoints/final.ckpt"
        meta = torch.load(ckpt, map_location="cpu", weights_only=False)
        with contextlib.redirect_stdout(sys.stderr):  # the model prints itself when built
            model = StateTransitionPerturbationModel.load_from_checkpoint(ckpt, map_location="cpu")
        pert_onehot = torch.load(f"{tmp}/run/pert_onehot_map.pt", weights_only=False)
    model.eval()

    state = {
        "model": model,
        "onehot": {p: pert_onehot[code].float() for p, code in code_of.items()},
        "genes": genes,
        "keys": keys,
        "seed": seed,
        "threads": threads,
    }
    info = {
        "epochs": int(meta["epoch"]) + 1,
        "steps": int(meta["global_step"]),
        "settings": params,
        "n_perturbations": len(perts),
    }
    return state, info


def predict(state: dict, control: ad.AnnData, condition: str, dose: float | None) -> np.ndarray:
    import math

    import torch

    keys, model = state["keys"], state["model"]
    if dose is not None:
        raise ValueError("the State runner has no dose input (one-hot perturbations only)")
    if condition not in state["onehot"]:
        sep = keys.get("separator")
        kind = "combination" if sep and sep in condition else "perturbation"
        raise ValueError(
            f"State ST cannot predict the unseen {kind} {condition!r}: it encodes perturbations "
            "one-hot, one column per perturbation seen in training, and has no way to compose them."
        )
    torch.set_num_threads(state["threads"])
    x = _dense(control[:, state["genes"]].X)
    # Sets of at most cell_set_len random control cells, of near-equal sizes.
    n_sets = math.ceil(len(x) / int(model.cell_sentence_len))
    order = np.random.default_rng(state["seed"]).permutation(len(x))
    out = np.zeros_like(x)
    with torch.no_grad():
        for rows in np.array_split(order, n_sets) if n_sets else []:
            batch = {
                "ctrl_cell_emb": torch.from_numpy(x[rows]),
                "pert_emb": state["onehot"][condition].expand(len(rows), -1),
                "pert_name": [condition] * len(rows),
            }
            out[rows] = model.predict_step(batch, batch_idx=0, padded=False)["preds"].numpy()
    return np.clip(out, 0.0, 14.0)  # as `state tx infer` does for gene-space outputs


if __name__ == "__main__":
    from mtpert_peer import serve

    serve(train, predict)
