"""Train the ULAE-net reference code (wanghaostu/ULAE-net, PyTorch) on given volumes, in a given pair order.

Runs under a Python that has PyTorch (not this project's virtualenv) and a checkout of the reference code;
``benchmarks/reference_ulae_training.py`` calls it once per seed with the port's own data, so that the reference
and the port see the same volumes, the same pairs in the same order, the same number of steps and learning rate.
From the reference it takes, unchanged from ``--ref``/ULAE, the network (``ULAE.ULAE(2, 3, base_channels, True,
shape)`` after ``torch.manual_seed(seed)``), the loss (``Loss.multi_window_loss(win=[11, 9, 7], gamma=0.5)`` on
``warps[2]``, plus ``1.0 * Loss.smoothloss(flows[-1])``) and the step of ``ULAE/Train_ULAE.py`` (lines 100-112,
batch 1, ``torch.optim.Adam(lr)``). Its pair sampler (``datagen.py``, uniform with replacement, unseeded) is
replaced by ``train_order``: the port's own sequence of pairs.

``--data`` is an ``.npz`` with ``train_images`` ``[N, D, H, W]`` float32 (the training volumes, scaled as the port
reads them), ``train_order`` ``[epochs, steps, 2]`` int (each step's moving and fixed index into
``train_images``), and ``val_moving``, ``val_fixed``, ``test_moving``, ``test_fixed`` ``[N, D, H, W]`` float32.

Writes ``--out`` (an ``.npz``, via a temporary file and a rename):

- ``test_flow`` ``[N_test, D, H, W, 3]`` and ``val_flow`` ``[epochs, N_val, D, H, W, 3]`` (the validation pairs'
  fields after every epoch): the composed field ``flows[-1]`` (voxels along the array axes, the port's
  convention, channel last), from the last weights (the reference tests its last checkpoint; the network has
  instance normalisation only, so train and eval modes are the same);
- ``sim_loss``, ``reg_loss`` ``[epochs]``: the epoch means of the summed multi-window NCC terms and of
  ``smoothloss``;
- ``step_ms`` ``[epochs * steps]``: each step's wall-clock time (forward, backward, Adam);
- ``steps``; ``torch_version``, ``threads``, ``reference_commit``.

Resumes: after every epoch the model, the optimiser and the arrays so far go to ``--out`` + ``.ckpt``.

Usage: ``python benchmarks/reference_ulae_train.py --ref /path/ULAE-net --data data.npz --out run.npz --seed 0
[--lr 1e-4 --base_channels 16 --threads 2]``
"""
import argparse
import os
import sys
import time
import warnings

from reference_train import save_npz  # this folder: the atomic .npz writer of the GSMorph comparison
from reference_ulae_steps import GAMMA, SMOOTH_WEIGHT, WINDOWS, reference_commit

ARRAYS = ("train_images", "train_order", "val_moving", "val_fixed", "test_moving", "test_fixed")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wanghaostu/ULAE-net (holds ULAE/ULAE.py)")
    parser.add_argument("--data", required=True, help=".npz of the volumes and pair order (module docstring)")
    parser.add_argument("--out", required=True, help=".npz to write the fields and losses to")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the initialisation")
    parser.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (the reference's 1e-4)")
    parser.add_argument("--base_channels", type=int, default=16, help="the reference's basic_channel (paper: 16)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    return parser.parse_args(argv)


def load_data(path):
    """The ``.npz`` arrays (module docstring), checked; exits naming the file and what is wrong."""
    import numpy as np

    if not os.path.isfile(path):
        sys.exit("--data=%s: no such file" % path)
    with np.load(path) as data:
        missing = [k for k in ARRAYS if k not in data.files]
        if missing:
            sys.exit("--data=%s: missing arrays %s (expected %s)" % (path, ", ".join(missing), ", ".join(ARRAYS)))
        arrays = {k: data[k] for k in ARRAYS}
    shapes = {tuple(v.shape[1:]) for k, v in arrays.items() if k != "train_order"}
    order = arrays["train_order"]
    if len(shapes) != 1 or len(next(iter(shapes))) != 3:
        sys.exit("--data=%s: expected volumes [N, D, H, W] of one shape, got %s" % (path, sorted(shapes)))
    if order.ndim != 3 or order.shape[2] != 2 or order.min() < 0 or order.max() >= len(arrays["train_images"]):
        sys.exit("--data=%s: train_order must be [epochs, steps, 2] indices into the %d train_images, got shape %s"
                 % (path, len(arrays["train_images"]), order.shape))
    return arrays


def composed_fields(torch, model, moving, fixed):
    """The composed field ``flows[-1]`` of each pair, ``[N, D, H, W, 3]`` float32 (no gradients)."""
    import numpy as np

    fields = []
    with torch.no_grad():
        for m, f in zip(moving, fixed):
            _, flows, _ = model(torch.from_numpy(m[None, None]).float(), torch.from_numpy(f[None, None]).float())
            fields.append(flows[-1][0].numpy().transpose(1, 2, 3, 0))
    return np.stack(fields).astype(np.float32)


def main(argv=None):
    args = parse_args(argv)
    code = os.path.join(args.ref, "ULAE")
    if not os.path.isfile(os.path.join(code, "ULAE.py")):
        sys.exit("--ref=%s: no ULAE/ULAE.py there; expected a checkout of wanghaostu/ULAE-net" % args.ref)
    data = load_data(args.data)
    import numpy as np
    import torch

    warnings.filterwarnings("ignore", category=UserWarning)  # the reference's meshgrid and F.upsample warnings
    torch.set_num_threads(args.threads)
    sys.path.insert(0, code)
    import Loss as loss
    import ULAE as ulae

    shape = list(data["train_images"].shape[1:])
    order = data["train_order"]
    epochs, steps = order.shape[:2]
    torch.manual_seed(args.seed)
    model = ulae.ULAE(2, 3, args.base_channels, True, shape)
    similarity = loss.multi_window_loss(win=list(WINDOWS), gamma=GAMMA)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    images = torch.from_numpy(np.ascontiguousarray(data["train_images"], np.float32))[:, None, None]
    checkpoint = args.out + ".ckpt"
    history = {"sim_loss": [], "reg_loss": [], "val_flow": [], "step_ms": []}
    first = 0
    if os.path.exists(checkpoint):
        state = torch.load(checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        history, first = state["history"], state["epoch"]
        print("resuming after epoch %d/%d from %s" % (first, epochs, checkpoint), flush=True)
    for epoch in range(first, epochs):
        sims, smooths = [], []
        for moving_index, fixed_index in order[epoch]:
            start = time.perf_counter()
            moving, fixed = images[int(moving_index)], images[int(fixed_index)]
            warps, flows, _ = model(moving, fixed)
            terms = similarity(warps[2], fixed)
            smoothness = loss.smoothloss(flows[-1])
            total = terms[0] + terms[1] + terms[2] + SMOOTH_WEIGHT * smoothness
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            history["step_ms"].append((time.perf_counter() - start) * 1000.0)
            sims.append(float(terms[0] + terms[1] + terms[2]))
            smooths.append(float(smoothness))
        history["sim_loss"].append(float(np.mean(sims)))
        history["reg_loss"].append(float(np.mean(smooths)))
        history["val_flow"].append(composed_fields(torch, model, data["val_moving"], data["val_fixed"]))
        print("epoch %d/%d: sim %.5f, smooth %.5f, median step %.0f ms"
              % (epoch + 1, epochs, history["sim_loss"][-1], history["reg_loss"][-1],
                 np.median(history["step_ms"][-steps:])), flush=True)
        temporary = checkpoint + ".tmp"
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history,
                    "epoch": epoch + 1}, temporary)
        os.replace(temporary, checkpoint)
    save_npz(args.out, test_flow=composed_fields(torch, model, data["test_moving"], data["test_fixed"]),
             val_flow=np.stack(history["val_flow"]), sim_loss=np.array(history["sim_loss"]),
             reg_loss=np.array(history["reg_loss"]), step_ms=np.array(history["step_ms"]),
             steps=np.array(epochs * steps), torch_version=torch.__version__, threads=np.array(args.threads),
             reference_commit=reference_commit(args.ref))
    os.remove(checkpoint)
    print("wrote %s: %d steps, median step %.0f ms" % (args.out, epochs * steps, np.median(history["step_ms"])),
          flush=True)


if __name__ == "__main__":
    main()
