"""CPU timing of the GSMorph reference's own training step (wulalago/GSMorph, PyTorch), for comparison.

Runs under a Python that has PyTorch (not this project's virtualenv) and a checkout of the reference code;
``benchmarks/train_step.py --reference_dir=... --reference_python=...`` calls it right after timing our step,
so that both sides are measured back to back on the same machine. It builds the reference's network
(``source/model_func.load_model`` with ``cfg/VoxelMorph.yaml``, image size overridden) and its training-step
object (``source/model_func.GradientDescent`` with ``torch.optim.AdamW(lr, weight_decay)`` as
``scripts/TrainModel.py`` does; ``reference_train.build_reference``), and times the step as
``scripts/TrainModel.train()`` runs it::

    fwd = model(moving, fixed)          # model.train() mode
    updater.update_gradient(fwd)        # sim backward (retain_graph), reg backward, combine, optimizer step

Only the inputs are ours: uniform random images (the reference's loader needs its unreleased PNG lists).
It prints one ``key: value`` line per figure, the last ``reference_layerwise_ms: <median ms>``.

Usage: ``python benchmarks/reference_step.py --ref /path/to/GSMorph [--size 128] [--batch 32] [--steps 10]``
"""
import argparse
import os
import statistics
import time


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wulalago/GSMorph")
    parser.add_argument("--size", type=int, default=128, help="image side (pixels)")
    parser.add_argument("--batch", type=int, default=32, help="pairs per step")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()
    from reference_train import build_reference   # this folder: the reference built as its trainer builds it
    import torch

    model, _, updater = build_reference(args.ref, args.size, "layerwise", threads=args.threads)
    model.train()
    generator = torch.Generator().manual_seed(0)
    moving = torch.rand(args.batch, 1, args.size, args.size, generator=generator)
    fixed = torch.rand(args.batch, 1, args.size, args.size, generator=generator)

    def step():
        updater.update_gradient(updater.model(moving, fixed))

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000.0)
    print("reference_torch: %s, %d threads" % (torch.__version__, torch.get_num_threads()))
    print("reference_parameters: %d" % sum(p.numel() for p in model.parameters() if p.requires_grad))
    print("reference_layerwise_ms: %.1f" % statistics.median(times))


if __name__ == "__main__":
    main()
