"""Run the original scButterfly (PyPI scButterfly 0.0.9) perturbation pipeline on one prepared split.

Called by scbutterfly_vs_original.py with the interpreter of .peers/scbutterfly; not part of mtpert.
Input: an h5ad of log-normalized cells whose obs['parity_role'] is 'pool' (cells the model may
train on), 'target_control' or 'target_truth', with 'condition' (control/stimulated) and
'cell_type'. Steps as in the authors' perturbation tutorial (Perturb_unpaired_scButterfly-T):
unpaired_split_dataset_perturb (per-cell-type PCA + exact OT pairing, 80/20 train/validation),
Model and Model.train with the tutorial's settings, prediction of the held-out type's control
cells with Model.test(return_predict=True). Writes the predicted matrix and the training seconds.

The original calls .cuda() unconditionally in its discriminator step; on a machine without CUDA
Tensor.cuda is made a no-op here, which changes nothing else.
"""

import json
import sys
import tempfile
import time

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

if not torch.cuda.is_available():
    torch.Tensor.cuda = lambda self, *args, **kwargs: self

from scButterfly.split_datasets import unpaired_split_dataset_perturb
from scButterfly.train_model_perturb import Model


def main(path: str, out: str, seed: int) -> None:
    torch.set_num_threads(1)
    data = ad.read_h5ad(path)
    data.X = sp.csr_matrix(data.X)
    target = (
        data.obs.loc[data.obs["parity_role"] == "target_control", "cell_type"].astype(str).iloc[0]
    )
    control = data[data.obs["condition"] == "control"].copy()
    stimulated = data[data.obs["condition"] == "stimulated"].copy()
    for part in (control, stimulated):
        part.obs["cell_type"] = part.obs["cell_type"].astype(str).astype("category")
        part.obs.index = [str(i) for i in range(part.n_obs)]
    rotations = unpaired_split_dataset_perturb(control, stimulated, seed=seed)
    for ids in rotations:  # one rotation per held-out cell type: take the target's
        if set(control.obs["cell_type"].iloc[ids[4]]) == {target}:
            train_r, train_a, val_r, val_a, test_r, test_a = ids
            break
    else:
        sys.exit(f"no rotation holds out {target}")
    assert target not in set(control.obs["cell_type"].iloc[train_r]) | set(
        stimulated.obs["cell_type"].iloc[train_a]
    )

    n_genes = control.n_vars
    kl = 1 / n_genes * 20
    model = Model(
        R_encoder_nlayer=2,
        A_encoder_nlayer=2,
        R_decoder_nlayer=2,
        A_decoder_nlayer=2,
        R_encoder_dim_list=[n_genes, 256, 128],
        A_encoder_dim_list=[n_genes, 128, 128],
        R_decoder_dim_list=[128, 256, n_genes],
        A_decoder_dim_list=[128, 128, n_genes],
        R_encoder_act_list=[nn.LeakyReLU(), nn.LeakyReLU()],
        A_encoder_act_list=[nn.LeakyReLU(), nn.LeakyReLU()],
        R_decoder_act_list=[nn.LeakyReLU(), nn.LeakyReLU()],
        A_decoder_act_list=[nn.LeakyReLU(), nn.LeakyReLU()],
        translator_embed_dim=128,
        translator_input_dim_r=128,
        translator_input_dim_a=128,
        translator_embed_act_list=[nn.LeakyReLU(), nn.LeakyReLU(), nn.LeakyReLU()],
        discriminator_nlayer=1,
        discriminator_dim_list_R=[128],
        discriminator_dim_list_A=[128],
        discriminator_act_list=[nn.Sigmoid()],
        dropout_rate=0.1,
        R_noise_rate=0.5,
        A_noise_rate=0.5,
        chrom_list=[],
        logging_path=None,
        RNA_data=control,
        ATAC_data=stimulated,
    )
    model.num_workers = 0
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model.train(
            R_encoder_lr=0.001,
            A_encoder_lr=0.001,
            R_decoder_lr=0.001,
            A_decoder_lr=0.001,
            R_translator_lr=0.001,
            A_translator_lr=0.001,
            translator_lr=0.001,
            discriminator_lr=0.005,
            R2R_pretrain_epoch=100,
            A2A_pretrain_epoch=100,
            lock_encoder_and_decoder=False,
            translator_epoch=200,
            patience=50,
            batch_size=64,
            r_loss=nn.MSELoss(size_average=True),
            a_loss=nn.MSELoss(size_average=True),
            d_loss=nn.BCELoss(size_average=True),
            loss_weight=[1, 1, 1, kl, kl, 2 * kl],
            train_id_r=train_r,
            train_id_a=train_a,
            validation_id_r=val_r,
            validation_id_a=val_a,
            output_path=tmp,
            seed=seed,
            kl_mean=True,
            R_pretrain_kl_warmup=50,
            A_pretrain_kl_warmup=50,
            translation_kl_warmup=50,
            load_model=None,
            logging_path=None,
        )
        seconds = time.perf_counter() - start
        _, predicted = model.test(
            test_id_r=test_r,
            test_id_a=test_a,
            model_path=None,
            load_model=False,
            output_path=tmp,
            test_pca=False,
            test_DEGs=False,
            test_R2=False,
            test_dotplot=False,
            output_data=False,
            return_predict=True,
        )
    X = np.asarray(
        predicted.X.toarray() if sp.issparse(predicted.X) else predicted.X, dtype=np.float32
    )
    np.save(out, X)
    with open(out + ".json", "w") as f:
        json.dump(
            {"train_seconds": seconds, "n_train_pairs": len(train_r), "n_val_pairs": len(val_r)}, f
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
