"""Train the GSMorph reference code (wulalago/GSMorph, PyTorch) on given pairs, for a like-for-like comparison.

Runs under a Python that has PyTorch (not this project's virtualenv) and a checkout of the reference code;
``benchmarks/reference_training.py`` calls it once per (method, seed) with the study's own data, so that the
reference and the port see the same images, pairs and split. From the reference it takes the network
(``source/model_func.load_model`` with ``cfg/VoxelMorph.yaml``, image size set to the data's), its
training step (``source/model_func.GradientDescent``: MSE and ``Grad()``, two backward passes, the
surgery rule, ``torch.optim.AdamW(lr, weight_decay=0)``) and its loop as in ``scripts/TrainModel.py``::

    torch.manual_seed(seed); model = load_model(cfg)          # initialisation from the seed
    torch.manual_seed(seed)                                   # RegistrationDataSet re-seeds before shuffling
    for epoch: model.train(); for batch in DataLoader(shuffle=True, drop_last=True):
        updater.update_gradient(model(moving, fixed))

Only the loader is replaced (the reference's reads its unreleased PNG lists): the pairs come from ``--data``,
an ``.npz`` with ``train_moving``, ``train_fixed``, ``val_moving``, ``val_fixed``, ``test_moving``,
``test_fixed``, each ``[N, H, W]`` float32 in [0, 1] (ES moving, ED fixed), already scaled and cropped.

Writes ``--out`` (an ``.npz``, via a temporary file and a rename):

- ``test_flow`` ``[N_test, H, W, 2]`` and ``val_flow`` ``[epochs, N_val, H, W, 2]`` (the validation pairs'
  flows after every epoch): displacements in pixels along (row, column), the reference's ``Flow`` output
  moved channel-last (the port's layout), predicted in ``model.eval()`` mode from the last weights (the
  reference tests ``LoadChoice: last``);
- ``sim_loss``, ``reg_loss`` ``[epochs]``: mean MSE and mean ``Grad()`` over each epoch's steps;
- ``conflict_fraction``, ``whole_conflict`` ``[epochs]``: per epoch, the mean over steps of the fraction of
  parameter tensors whose two gradients have a negative inner product (LayerWise's projected groups), and the
  fraction of steps whose whole-network inner product is negative (the steps PCGrad projects);
- ``steps``: optimiser steps taken.

With ``--init_out``, also the network's ``state_dict`` right after ``load_model`` (before any step), an
``.npz`` of float32/int64 numpy arrays keyed by the ``state_dict`` names (PyTorch layout; what
:func:`gsmorph_tf.models.reference_weights.load_reference_weights` reads); with ``--order_out``, an ``.npz``
with ``order``, int64 ``[epochs, steps, batch]``: the training pair indices (positions in ``train_moving``) of
every step, in the order the shuffling ``DataLoader`` gave them. Both are written through a temporary file
and a rename; recording them changes nothing the reference trains (the indices ride along as a third tensor
of the dataset, which draws no random numbers).

Resumes: after every epoch the model, optimiser, RNG state and the arrays so far go to ``--out`` + ``.ckpt``.

Usage: ``python benchmarks/reference_train.py --ref /path/GSMorph --data pairs.npz --out run.npz
--surgery none --lam 0.01 --seed 0 [--epochs 30 --batch 16 --lr 5e-3 --threads 2 --init_out init.npz
--order_out order.npz]``
"""
import argparse
import os
import sys
import time
import warnings

#: The port's surgery modes and the reference's ``GradientSurgery`` values (``none``: the weighted sum).
SURGERY = {"none": None, "layerwise": "LayerWise", "pcgrad": "PCGrad", "agr_sum": "AgrSum", "agr_rand": "AgrRand"}
ARRAYS = ("train_moving", "train_fixed", "val_moving", "val_fixed", "test_moving", "test_fixed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wulalago/GSMorph")
    parser.add_argument("--data", required=True, help=".npz of the pairs (see the module docstring)")
    parser.add_argument("--out", required=True, help=".npz to write the flows and losses to")
    parser.add_argument("--surgery", choices=sorted(SURGERY), required=True, help="none: lam-weighted sum")
    parser.add_argument("--lam", type=float, default=0.01, help="smoothness weight of surgery none")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of initialisation and shuffling")
    parser.add_argument("--epochs", type=int, default=30, help="passes over the training pairs")
    parser.add_argument("--batch", type=int, default=16, help="pairs per step (the last partial batch dropped)")
    parser.add_argument("--lr", type=float, default=5e-3, help="AdamW learning rate (weight decay 0)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    parser.add_argument("--init_out", help=".npz to write the initial state_dict to (before any step)")
    parser.add_argument("--order_out", help=".npz to write the batch order to (order [epochs, steps, batch])")
    return parser.parse_args(argv)


def load_pairs(path):
    """The ``.npz`` arrays as float32 tensors ``[N, 1, H, W]``; exits naming the file and what is wrong."""
    import numpy as np
    import torch

    if not os.path.isfile(path):
        sys.exit("--data=%s: no such file" % path)
    with np.load(path) as data:
        missing = [k for k in ARRAYS if k not in data.files]
        if missing:
            sys.exit("--data=%s: missing arrays %s (expected %s)" % (path, ", ".join(missing), ", ".join(ARRAYS)))
        arrays = {k: torch.from_numpy(np.ascontiguousarray(data[k], dtype=np.float32))[:, None] for k in ARRAYS}
    shapes = {tuple(v.shape[2:]) for v in arrays.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or len(set(next(iter(shapes)))) != 1:
        sys.exit("--data=%s: expected square 2D images of one size, got %s" % (path, sorted(shapes)))
    return arrays


def predict_flows(model, moving, fixed, batch=32):
    """Flows ``[N, H, W, 2]`` (numpy, pixels along row and column) of the model in eval mode."""
    import numpy as np
    import torch

    model.eval()
    with torch.no_grad():
        flows = [model(moving[i:i + batch], fixed[i:i + batch])["Flow"].permute(0, 2, 3, 1).numpy()
                 for i in range(0, len(moving), batch)]
    model.train()
    return np.concatenate(flows).astype(np.float32)


def save_npz(path, **arrays):
    """Write an ``.npz`` through a temporary file and a rename."""
    import numpy as np

    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)


def record_gradients(model):
    """Make ``model.get_gradient`` (called by ``update_gradient``: first for g_sim, then for g_reg) also append
    what it returns to the list this returns, so the step's two gradients can be inspected afterwards."""
    calls, get_gradient = [], model.get_gradient

    def recording():
        gradients = get_gradient()
        calls.append(gradients)
        return gradients
    model.get_gradient = recording
    return calls


def conflict_statistics(sim, reg):
    """``(fraction of parameter tensors whose g_sim . g_reg < 0, 1.0 if the whole network's g_sim . g_reg < 0
    else 0.0)``: the groups LayerWise projects, and whether PCGrad projects, on one step's gradients."""
    import torch

    dots = torch.stack([torch.dot(s, r) for s, r in zip(sim, reg)])
    return float((dots < 0).float().mean()), float(dots.sum() < 0)


def build_reference(ref, size, surgery, seed=None, lr=None, lam=None, threads=None, features=None):
    """The reference's network, optimizer and training step, as ``scripts/TrainModel.py`` builds them.

    ``source/model_func.load_model`` and ``GradientDescent`` with ``cfg/VoxelMorph.yaml`` (image side ``size``
    pixels), ``torch.optim.AdamW(lr, weight_decay)``, surgery mode ``surgery`` (a key of :data:`SURGERY`) and
    smoothness weight ``lam``; the weights drawn after ``torch.manual_seed(seed)``. ``seed``, ``lr``, ``lam``
    and ``features`` (the config's ``FeatNum``, five encoder widths) default to the config's (3407, 5e-3, 0.01,
    16-256). Exits naming ``ref`` if it is not a checkout.

    Returns:
        ``(model, optimizer, updater)``; ``updater.update_gradient(model(moving, fixed))`` is one step.
    """
    source = os.path.join(ref, "source")
    if not os.path.isfile(os.path.join(source, "model_func.py")):
        sys.exit("--ref=%s: no source/model_func.py there; expected a checkout of wulalago/GSMorph" % ref)
    sys.path.insert(0, source)
    warnings.filterwarnings("ignore", message=".*meshgrid.*")  # the reference's torch.meshgrid(vectors)
    import torch
    from help_func import read_yaml
    from model_func import GradientDescent, load_model

    if threads:
        torch.set_num_threads(threads)
    cfg = read_yaml(os.path.join(ref, "cfg", "VoxelMorph.yaml"))
    cfg["ImgSize"] = size
    if features is not None:
        cfg["FeatNum"] = list(features)
    torch.manual_seed(cfg["Seed"] if seed is None else seed)
    model = load_model(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg["LearningRate"] if lr is None else lr,
                                  weight_decay=cfg["WeightDecay"])
    weights = dict(cfg["LossWeight"], **({} if lam is None else {"Smoothness": lam}))
    updater = GradientDescent(model, optimizer, sim_loss=cfg["SimLoss"], reg_loss=cfg["RegLoss"],
                              loss_weight=weights, gradient_surgery=SURGERY[surgery])
    return model, optimizer, updater


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    pairs = load_pairs(args.data)
    model, optimizer, updater = build_reference(args.ref, pairs["train_moving"].shape[-1], args.surgery,
                                                args.seed, args.lr, args.lam, args.threads)
    if args.init_out:
        save_npz(args.init_out, **{name: value.detach().cpu().numpy() for name, value in model.state_dict().items()})
    torch.manual_seed(args.seed)
    indices = torch.arange(len(pairs["train_moving"]))
    loader = DataLoader(TensorDataset(pairs["train_moving"], pairs["train_fixed"], indices), batch_size=args.batch,
                        shuffle=True, drop_last=True)
    if len(loader) == 0:
        sys.exit("--batch=%d: more than the %d training pairs in %s" % (args.batch, len(loader.dataset), args.data))
    gradients = record_gradients(model)
    history = {"sim_loss": [], "reg_loss": [], "val_flow": [], "conflict_fraction": [], "whole_conflict": [],
               "order": []}
    start_epoch, checkpoint = 0, args.out + ".ckpt"
    if os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        history, start_epoch = state["history"], state["epoch"]
        if args.order_out and len(history.get("order", ())) != start_epoch:
            sys.exit("%s: a checkpoint without the batch order of its %d epochs; remove it to record --order_out"
                     % (checkpoint, start_epoch))
        print("resumed from %s after epoch %d" % (checkpoint, start_epoch), flush=True)
    model.train()
    for epoch in range(start_epoch, args.epochs):
        began, sims, regs, conflicts, order = time.perf_counter(), [], [], [], []
        for moving, fixed, index in loader:
            order.append(index.numpy().copy())
            gradients.clear()
            _, info, _ = updater.update_gradient(model(moving, fixed))
            sims.append(info["Similarity"])
            regs.append(info["Smoothness"])
            conflicts.append(conflict_statistics(*gradients))
        history["sim_loss"].append(float(np.mean(sims)))
        history["reg_loss"].append(float(np.mean(regs)))
        history["conflict_fraction"].append(float(np.mean([c[0] for c in conflicts])))
        history["whole_conflict"].append(float(np.mean([c[1] for c in conflicts])))
        history.setdefault("order", []).append(np.stack(order).astype(np.int64))
        history["val_flow"].append(predict_flows(model, pairs["val_moving"], pairs["val_fixed"]))
        tmp = checkpoint + ".tmp"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                    "history": history, "epoch": epoch + 1}, tmp)
        os.replace(tmp, checkpoint)
        print("epoch %d/%d: sim %.5f reg %.5f (%.1f s)" % (epoch + 1, args.epochs, history["sim_loss"][-1],
                                                         history["reg_loss"][-1], time.perf_counter() - began),
              flush=True)
    if args.order_out:   # before --out, whose presence tells a caller the run is complete
        save_npz(args.order_out, order=np.stack(history["order"]))
    save_npz(args.out, test_flow=predict_flows(model, pairs["test_moving"], pairs["test_fixed"]),
             val_flow=np.stack(history["val_flow"]), sim_loss=np.array(history["sim_loss"]),
             reg_loss=np.array(history["reg_loss"]), conflict_fraction=np.array(history["conflict_fraction"]),
             whole_conflict=np.array(history["whole_conflict"]), steps=np.array(len(loader) * args.epochs))
    os.remove(checkpoint)
    print("wrote %s" % args.out, flush=True)


if __name__ == "__main__":
    main()
