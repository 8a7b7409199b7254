"""Reference values for the ULAE port's step-level test: the ULAE-net reference code (wanghaostu/ULAE-net,
PyTorch) trained for a few steps on seeded synthetic pairs, with what it computed along the way.

Runs under a Python that has PyTorch (not this project's virtualenv) and a checkout of the reference code; it
writes ``tests/data/ulae_reference_steps.npz``, which ``tests/ulae/test_ulae_reference_steps.py`` reads (CI has no
PyTorch). It builds the reference's network and loss unchanged from ``--ref``/ULAE (``ULAE.ULAE(2, 3, b, True,
shape)`` after ``torch.manual_seed``; ``Loss.multi_window_loss(win=[11, 9, 7], gamma=0.5)``, ``Loss.smoothloss``)
and runs the step of ``ULAE/Train_ULAE.py`` (lines 100-112), batch 1, once per pair::

    warps, flows, _ = model(moving, fixed)
    sim_1, sim_2, sim_3 = multi_window_loss(warps[2], fixed)
    loss = sim_1 + sim_2 + sim_3 + 1.0 * smoothloss(flows[-1])
    optimizer.zero_grad(); loss.backward(); optimizer.step()     # torch.optim.Adam(lr=1e-4)

It runs twice from the same float32 initialisation and pairs: as the reference trains (float32), and with
its weights and images in float64, whose results are float32's up to rounding. How far the float32 run is from the
float64 one is how far rounding alone takes the reference itself; the test holds the port to that.

Two base channels by default (the paper's 16 changes no code path): the file holds seven sets of every weight
(initial, after 1 and N steps, the first gradient, each from both runs but the initial), 18,375 numbers each at 2
base channels (0.72 MB in all) and 71,109 at 4 (2 MB).

The pairs are :func:`ulae_tf.reference.smooth_pairs` (NumPy only, so the test draws the same ones); the
reference reads its own ``*vol.npy`` files instead. The training script itself is not imported (it parses its
arguments and reads its data at import).

Writes (``.npz`` through a temporary file and a rename; tensor names are the reference's ``named_parameters()``
names, encoder tensors under ``acc1.``, arrays in PyTorch's layout):

- ``initial:<name>``, ``step1:<name>``, ``step<N>:<name>``: the weights before training, after the first step
  and after the last (``N`` = ``--steps``);
- ``gradient:<name>``: the gradient of the first step's loss;
- ``sim_terms`` ``[N, 3]`` (the three weighted NCC terms, windows 11, 9, 7), ``smooth_loss`` ``[N]``;
- ``warps`` ``[3, 1, d, h, w]`` and ``flows`` ``[3, 3, d, h, w]``: the first step's outputs (``warps[k]``, the
  composed ``flows[k]``) at the voxels ``output_voxels`` along every axis (every third and the last: the
  whole volumes would not fit the file's size);
- ``float64_gradient:<name>``, ``float64_step1:<name>``, ``float64_step<N>:<name>``, ``float64_sim_terms``,
  ``float64_smooth_loss``: the same from the float64 run (the arrays stored as float32);
- ``parameter_shapes``: JSON ``{"4": [[name, shape], ...], "16": ...}``, the reference's ``named_parameters()``
  at 4 and 16 base channels (16: the paper's network), so the test can check the name mapping at those widths;
- ``pair_sums`` ``[N, 2]``: each image's sum, so the test can check it drew the same pairs;
- ``shape``, ``base_channels``, ``seed``, ``learning_rate``, ``windows``, ``gamma``; ``torch_version``,
  ``reference_commit`` (``git rev-parse HEAD`` of ``--ref``).

Usage: ``python benchmarks/reference_ulae_steps.py --ref /path/to/ULAE-net
[--out tests/data/ulae_reference_steps.npz] [--size 32x32x32] [--base_channels 2] [--steps 20] [--seed 0]``
"""
import argparse
import json
import os
import subprocess
import sys
import warnings

import numpy as np

from reference_train import save_npz  # this folder: the atomic .npz writer of the GSMorph comparison

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir)
#: The reference's objective (``Train_ULAE.py`` defaults).
WINDOWS, GAMMA, SMOOTH_WEIGHT, LEARNING_RATE = (11, 9, 7), 0.5, 1.0, 1e-4


def reference_commit(ref):
    """``git rev-parse HEAD`` of the checkout ``ref``, or ``"unknown"`` when it is not a git checkout."""
    try:
        return subprocess.run(["git", "-C", ref, "rev-parse", "HEAD"], check=True, capture_output=True,
                              text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def parameters(model, prefix):
    """``{prefix + name: float32 array}`` of the model's parameters (shared tensors once, as ``named_parameters``)."""
    return {prefix + name: p.detach().float().numpy().copy() for name, p in model.named_parameters()}


def parameter_shapes(ulae, shape, widths=(4, 16)):
    """JSON of the reference's ``named_parameters()`` names and shapes at each base channel count in ``widths``."""
    return json.dumps({str(width): [[name, list(p.shape)] for name, p in ulae.ULAE(2, 3, width, True, shape)
                                    .named_parameters()] for width in widths})


def run_reference(ulae, loss, torch, pairs, base_channels, seed, dtype, prefix=""):
    """Train the reference on ``pairs`` (``[N, 2, *shape]``, moving then fixed), one step per pair, its weights
    and images in ``dtype`` (initialised in float32 from ``seed`` in both cases); the arrays the module docstring
    lists, their keys prefixed by ``prefix`` (the initial weights only without a prefix)."""
    shape = list(pairs.shape[2:])
    torch.manual_seed(seed)
    model = ulae.ULAE(2, 3, base_channels, True, shape)
    record = {} if prefix else parameters(model, "initial:")
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # the NCC's window kernel is made in the default dtype
    model.to(dtype)
    similarity = loss.multi_window_loss(win=list(WINDOWS), gamma=GAMMA)
    optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    lattice = np.unique(np.r_[0:shape[0]:3, shape[0] - 1])
    sim_terms, smooth = [], []
    for step, (moving, fixed) in enumerate(torch.from_numpy(pairs[:, :, None, None]).to(dtype), start=1):
        warps, flows, _ = model(moving, fixed)
        terms = similarity(warps[2], fixed)
        smoothness = loss.smoothloss(flows[-1])
        total = terms[0] + terms[1] + terms[2] + SMOOTH_WEIGHT * smoothness
        optimizer.zero_grad()
        total.backward()
        sim_terms.append([t.item() for t in terms])
        smooth.append(smoothness.item())
        if step == 1:
            record.update({prefix + "gradient:" + name: p.grad.float().numpy().copy()
                           for name, p in model.named_parameters()})
            voxels = np.ix_(lattice, lattice, lattice)
            record[prefix + "warps"] = torch.cat(warps).detach().float().numpy()[(slice(None), slice(None)) + voxels]
            record[prefix + "flows"] = torch.cat(flows).detach().float().numpy()[(slice(None), slice(None)) + voxels]
        optimizer.step()
        if step == 1:
            record.update(parameters(model, prefix + "step1:"))
    torch.set_default_dtype(default_dtype)
    record.update(parameters(model, prefix + "step%d:" % len(pairs)))
    record.update({prefix + "sim_terms": np.array(sim_terms), prefix + "smooth_loss": np.array(smooth),
                   "output_voxels": lattice})
    return record


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wanghaostu/ULAE-net (holds ULAE/ULAE.py)")
    parser.add_argument("--out", default=os.path.join(ROOT, "tests", "data", "ulae_reference_steps.npz"))
    parser.add_argument("--size", default="32x32x32", help="volume D x H x W, multiples of 16")
    parser.add_argument("--base_channels", type=int, default=2, help="the reference's basic_channel")
    parser.add_argument("--steps", type=int, default=20, help="training steps, one pair each")
    parser.add_argument("--seed", type=int, default=0, help="torch.manual_seed and the pairs' seed")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.size.lower().split("x"))
    if len(shape) != 3 or any(s <= 0 or s % 16 for s in shape) or len(set(shape)) != 1:
        raise SystemExit("error: --size %r must be a cube D x D x D, D a multiple of 16" % args.size)
    code = os.path.join(args.ref, "ULAE")
    if not os.path.isfile(os.path.join(code, "ULAE.py")):
        raise SystemExit("error: %s has no ULAE.py: --ref must be a checkout of wanghaostu/ULAE-net" % code)
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # the reference's meshgrid and F.upsample warnings
    torch.set_num_threads(1)
    sys.path[:0] = [code, ROOT]
    import Loss as loss
    import ULAE as ulae
    from ulae_tf.reference import smooth_pairs

    pairs = smooth_pairs(args.steps, shape, args.seed)
    record = run_reference(ulae, loss, torch, pairs, args.base_channels, args.seed, torch.float32)
    float64 = run_reference(ulae, loss, torch, pairs, args.base_channels, args.seed, torch.float64, "float64_")
    record.update((key, value) for key, value in float64.items() if not key.endswith(("warps", "flows")))
    record.update(parameter_shapes=parameter_shapes(ulae, list(shape)), pair_sums=pairs.astype(np.float64).sum(axis=(2, 3, 4)), shape=np.array(shape),
                  base_channels=args.base_channels, seed=args.seed, learning_rate=LEARNING_RATE,
                  windows=np.array(WINDOWS), gamma=GAMMA, torch_version=torch.__version__,
                  reference_commit=reference_commit(args.ref))
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    save_npz(args.out, **record)
    print("wrote %s (%.0f kB): reference %s, torch %s, %d steps at %s, base channels %d; last loss %.6f"
          % (args.out, os.path.getsize(args.out) / 1e3, record["reference_commit"][:7], torch.__version__,
             args.steps, args.size, args.base_channels, sum(record["sim_terms"][-1]) + record["smooth_loss"][-1]))


if __name__ == "__main__":
    main()
