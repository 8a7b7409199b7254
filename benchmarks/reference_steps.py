"""Reference values for the step-level test: the GSMorph reference code's own training steps, recorded.

Runs under a Python that has PyTorch and a checkout of wulalago/GSMorph (not this project's virtualenv)::

    /path/to/torch-python benchmarks/reference_steps.py --ref /path/to/GSMorph

It builds the reference's network with narrow features (``cfg['FeatNum']``, default 4, 4, 8, 8, 8) at 32x32,
seeds it, and runs the reference's own step (``GradientDescent.update_gradient`` with ``AdamW(lr, weight_decay
0)``, as ``scripts/TrainModel.py``; :func:`reference_train.build_reference`) on a fixed sequence of synthetic
batches, once per method: VoxelMorph-l (surgery none, lam 0.1), GSMorph (LayerWise) and GS-PCGrad. Every
method starts from the same initial weights (the same seed). ``tests/core/test_reference_steps.py`` loads the
saved file and runs the port's ``GradientSurgeryModel.train_step`` on the same weights and batches.

Each method is also run a second time from the same weights nudged by one float32 ulp in half of their
elements: how far the reference drifts from itself under a round-off-sized change. At the paper's learning
rate (5e-3) that drift is large within 20 steps (the early gradients are near Adam's epsilon, so updates of
``lr`` flip sign on round-off), so the default learning rate is 1e-4, where 20 steps stay reproducible to
round-off and a difference between the implementations shows above the drift.

Writes ``--out`` (default ``tests/data/reference_steps.npz``, via a temporary file and a rename):

- ``reference_commit``, ``torch_version``, ``features``, ``size``, ``batch``, ``steps``, ``lr``, ``seed``;
- ``moving``, ``fixed``: ``uint8 [steps, batch, size, size]``, the batches (intensity = value / 255, so
  both frameworks read exactly the same float32 images; 8-bit as the reference's PNG slices);
- ``layout``: JSON list of ``[name, shape, trainable]`` for the reference's ``state_dict()`` entries kept
  (parameters and BatchNorm running statistics, in ``state_dict`` order; not ``stn.grid``,
  ``num_batches_tracked`` or the empty ``device_param``); every ``state`` array below is these tensors
  flattened (PyTorch layout, OIHW kernels) and concatenated; every ``grad`` array is the trainable ones only;
- ``initial_state``: before any step;
- ``grad_sim``, ``grad_reg``: the step-1 gradients of the similarity (MSE) and smoothness (``Grad()``, l1)
  losses, as ``update_gradient`` takes them (the same for every method: same weights, same batch);
- per method ``M`` in ``none``, ``layerwise``, ``pcgrad``: ``M/sim_loss``, ``M/reg_loss`` ``[steps]`` (the
  values ``update_gradient`` returns), ``M/grad_applied`` (the step-1 gradient handed to AdamW after the
  surgery or the weighted sum), ``M/state_1`` and ``M/state_<steps>`` (after step 1 and after the last step),
  ``M/eval_flow`` ``[2, size, size]``: the first pair's flow in ``model.eval()`` mode after the last step
  (the running statistics at work), PyTorch layout; ``M/nudged_sim_loss``, ``M/nudged_reg_loss`` and
  ``M/nudged_state_<steps>``: the same from the nudged weights.

Usage: ``python benchmarks/reference_steps.py --ref /path/GSMorph [--out tests/data/reference_steps.npz]
[--features 4,4,8,8,8 --size 32 --batch 4 --steps 20 --lr 1e-4 --seed 0]``
"""
import argparse
import json
import os
import subprocess

from reference_train import build_reference, record_gradients, save_npz

#: (surgery mode as the port names it, lam): VoxelMorph-l, GSMorph, GS-PCGrad.
METHODS = (("none", 0.1), ("layerwise", None), ("pcgrad", None))
HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wulalago/GSMorph")
    parser.add_argument("--out", default=os.path.join(HERE, os.pardir, "tests", "data", "reference_steps.npz"))
    parser.add_argument("--features", default="4,4,8,8,8", help="the five encoder widths (cfg FeatNum)")
    parser.add_argument("--size", type=int, default=32, help="image side (pixels), a multiple of 16")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per method")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate (weight decay 0; the paper's "
                        "5e-3 makes 20 steps chaotic, see the module docstring)")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the weights, numpy seed of the images")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    return parser.parse_args(argv)


def synthetic_pairs(steps, batch, size, seed):
    """``(moving, fixed)``, ``uint8 [steps, batch, size, size]``: smooth images with a bright disc.

    Each fixed image is Gaussian-smoothed noise (sigma 3 px) plus a soft disc (radius 12-25 % of the side),
    scaled to [0, 1]; its moving image is the fixed one resampled along a smooth random displacement (sigma
    6 px, largest component 2-4 px). The images are not zero at the border, as a crop of a cardiac slice.
    """
    import numpy as np
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    moving = np.empty((steps * batch, size, size), np.uint8)
    fixed = np.empty_like(moving)
    for i in range(steps * batch):
        texture = ndimage.gaussian_filter(rng.standard_normal((size, size)), 3, mode="wrap")
        texture = (texture - texture.min()) / np.ptp(texture)
        centre = rng.uniform(0.3 * size, 0.7 * size, 2)
        radius = rng.uniform(0.12 * size, 0.25 * size)
        disc = 1.0 / (1.0 + np.exp(np.hypot(rows - centre[0], cols - centre[1]) - radius))
        image = 0.5 * texture + 0.5 * disc
        field = np.stack([ndimage.gaussian_filter(rng.standard_normal((size, size)), 6) for _ in range(2)])
        field *= rng.uniform(2.0, 4.0) / np.abs(field).max()
        warped = ndimage.map_coordinates(image, [rows + field[0], cols + field[1]], order=1, mode="nearest")
        fixed[i] = np.round(255 * image)
        moving[i] = np.round(255 * np.clip(warped, 0.0, 1.0))
    shape = (steps, batch, size, size)
    return moving.reshape(shape), fixed.reshape(shape)


def kept_state(model):
    """The ``state_dict`` entries the file keeps, in order: ``[(name, tensor, trainable)]``."""
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    return [(name, value, name in trainable) for name, value in model.state_dict().items()
            if value.is_floating_point() and value.numel() and name != "stn.grid"]


def flat_state(model):
    """The kept state as one float32 vector."""
    import torch

    return torch.cat([value.detach().flatten() for _, value, _ in kept_state(model)]).numpy().copy()


def reference_commit(ref):
    """The checkout's commit, or ``unknown`` if git cannot tell."""
    result = subprocess.run(["git", "-C", ref, "rev-parse", "HEAD"], capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def nudge(model, seed):
    """Move a random half of the elements of every trainable tensor up by one float32 ulp (in place)."""
    import numpy as np
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                chosen = torch.from_numpy(rng.random(tuple(p.shape)) < 0.5)
                p.copy_(torch.where(chosen, torch.nextafter(p, torch.full_like(p, float("inf"))), p))


def run_method(args, features, surgery, lam, moving, fixed, nudged=False):
    """The reference's steps for one method (from nudged initial weights if ``nudged``); returns the arrays to
    save (keys without the method prefix)."""
    import numpy as np
    import torch

    model, _, updater = build_reference(args.ref, args.size, surgery, args.seed, args.lr, lam, args.threads,
                                        features)
    if nudged:
        nudge(model, args.seed + 1)
    result = {"layout": [[name, list(value.shape), trainable] for name, value, trainable in kept_state(model)],
              "initial_state": flat_state(model)}
    gradients = record_gradients(model)
    as_tensor = lambda images: torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]  # noqa: E731
    sims, regs = [], []
    model.train()
    for step in range(args.steps):
        gradients.clear()
        _, info, _ = updater.update_gradient(model(as_tensor(moving[step]), as_tensor(fixed[step])))
        sims.append(info["Similarity"])
        regs.append(info["Smoothness"])
        if step == 0:
            result["grad_sim"], result["grad_reg"] = (torch.cat(g).numpy().copy() for g in gradients)
            # update_gradient leaves the gradient it handed to the optimizer in .grad (set_gradient)
            result["grad_applied"] = torch.cat([p.grad.flatten() for p in model.parameters()
                                                if p.requires_grad]).numpy().copy()
            result["state_1"] = flat_state(model)
    result["state_%d" % args.steps] = flat_state(model)
    model.eval()
    with torch.no_grad():
        result["eval_flow"] = model(as_tensor(moving[0, :1]), as_tensor(fixed[0, :1]))["Flow"][0].numpy().copy()
    result["sim_loss"], result["reg_loss"] = np.array(sims), np.array(regs)
    return result


def main(argv=None):
    args = parse_args(argv)
    import numpy as np
    import torch

    features = [int(f) for f in args.features.split(",")]
    if len(features) != 5:
        raise SystemExit("--features=%s: the reference's U-Net takes exactly five widths" % args.features)
    moving, fixed = synthetic_pairs(args.steps, args.batch, args.size, args.seed)
    arrays = dict(reference_commit=np.array(reference_commit(args.ref)), torch_version=np.array(torch.__version__),
                  features=np.array(features), size=np.array(args.size), batch=np.array(args.batch),
                  steps=np.array(args.steps), lr=np.array(args.lr), seed=np.array(args.seed),
                  moving=moving, fixed=fixed)
    shared = ("layout", "initial_state", "grad_sim", "grad_reg")
    for surgery, lam in METHODS:
        result = run_method(args, features, surgery, lam, moving, fixed)
        if "layout" not in arrays:
            arrays.update(layout=np.array(json.dumps(result["layout"])),
                          **{k: result[k] for k in shared if k != "layout"})
        for key in shared[1:]:  # the same seed and batch: the same weights and step-1 gradients
            if not np.array_equal(arrays[key], result[key]):
                raise SystemExit("%s differs between methods: the reference run is not deterministic" % key)
        arrays.update({"%s/%s" % (surgery, k): v for k, v in result.items() if k not in shared})
        drifted = run_method(args, features, surgery, lam, moving, fixed, nudged=True)
        arrays.update({"%s/nudged_%s" % (surgery, k): drifted[k]
                       for k in ("sim_loss", "reg_loss", "state_%d" % args.steps)})
        drift = np.abs(drifted["sim_loss"] - result["sim_loss"]) / result["sim_loss"]
        print("%-9s sim %.6f -> %.6f, reg %.3g -> %.3g; nudged by 1 ulp: sim loss up to %.1e relative"
              % (surgery, result["sim_loss"][0], result["sim_loss"][-1], result["reg_loss"][0],
                 result["reg_loss"][-1], drift.max()), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_npz(args.out, **arrays)
    print("wrote %s (%.0f kB; reference %s, torch %s)" % (args.out, os.path.getsize(args.out) / 1e3,
                                                         arrays["reference_commit"], torch.__version__))


if __name__ == "__main__":
    main()
