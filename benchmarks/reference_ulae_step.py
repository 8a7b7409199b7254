"""Timing of the ULAE-net reference code's own training step (wanghaostu/ULAE-net, PyTorch), CPU or CUDA.

Runs under a Python that has PyTorch (not this project's virtualenv) and a checkout of the reference code. It
builds the reference's network (``ULAE/ULAE.py``: ``ULAE(2, 3, 16, True, shape)``) and loss (``ULAE/Loss.py``:
``multi_window_loss(win=[11, 9, 7], gamma=0.5)`` and ``smoothloss``) and times the step as
``ULAE/Train_ULAE.py`` (lines 100-112) runs it, batch 1::

    warps, flows, _ = model(moving, fixed)
    loss = sum(multi_window_loss(warps[2], fixed)) + 1.0 * smoothloss(flows[-1])
    optimizer.zero_grad(); loss.backward(); optimizer.step()      # torch.optim.Adam(lr=1e-4)

Only the inputs are ours: uniform random volumes (the reference reads its own preprocessed ``*vol.npy``). The
reference's training script is not imported (it parses its own arguments and reads its data at import); its
modules are imported from ``--ref``/ULAE unchanged.

Prints the machine (CPU, threads, GPU), then per size one line: parameters, median step ms after the warm-up,
and the peak memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: process peak RSS).

Usage: ``python benchmarks/reference_ulae_step.py --ref /path/to/ULAE-net [--sizes 64x64x64,160x192x160]
[--device cuda] [--steps 5] [--warmup 2] [--threads 2]``
"""
import argparse
import os
import platform
import resource
import statistics
import sys
import time


def parse_size(text):
    """``"DxHxW"`` -> a tuple of three positive multiples of 16 (the reference's four stride-2 levels)."""
    shape = tuple(int(v) for v in text.lower().split("x"))
    if len(shape) != 3 or any(s <= 0 or s % 16 for s in shape):
        raise SystemExit("error: size %r must be D x H x W, multiples of 16" % text)
    return shape


def machine(torch, device):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "no GPU used"
    return "%s, %d cores, %d torch threads; %s; torch %s" % (cpu, os.cpu_count(), torch.get_num_threads(), gpu,
                                                           torch.__version__)


def time_step(torch, ulae, loss, shape, device, steps, warmup):
    """Median ms of the reference's train step at ``shape`` and the peak memory in MB."""
    torch.manual_seed(0)
    model = ulae.ULAE(2, 3, 16, True, list(shape)).to(device)
    similarity = loss.multi_window_loss(win=[11, 9, 7], gamma=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    moving = torch.rand(1, 1, *shape, device=device)
    fixed = torch.rand(1, 1, *shape, device=device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def step():
        warps, flows, _ = model(moving, fixed)
        total = sum(similarity(warps[2], fixed)) + 1.0 * loss.smoothloss(flows[-1])
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000.0)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2 ** 20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    parameters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return parameters, statistics.median(times), peak


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="checkout of wanghaostu/ULAE-net (holds ULAE/ULAE.py)")
    parser.add_argument("--sizes", default="64x64x64", help="comma-separated volume sizes D x H x W")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the step runs")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads")
    args = parser.parse_args()
    shapes = [parse_size(size) for size in args.sizes.split(",")]
    code = os.path.join(args.ref, "ULAE")
    if not os.path.isfile(os.path.join(code, "ULAE.py")):
        raise SystemExit("error: %s has no ULAE.py: --ref must be a checkout of wanghaostu/ULAE-net" % code)
    import warnings

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device=cuda but torch %s sees no GPU" % torch.__version__)
    warnings.filterwarnings("ignore", category=UserWarning)  # the reference's meshgrid and F.upsample warnings
    torch.set_num_threads(args.threads)
    sys.path.insert(0, code)
    import Loss as loss
    import ULAE as ulae

    print("machine: %s" % machine(torch, args.device))
    print("reference ULAE-net train step, batch 1, median of %d after %d warm-up" % (args.steps, args.warmup))
    for shape in shapes:
        parameters, ms, peak = time_step(torch, ulae, loss, shape, args.device, args.steps, args.warmup)
        print("reference_ulae %s: parameters %d, step %.1f ms, peak %.0f MB (%s)"
              % ("x".join(map(str, shape)), parameters, ms, peak,
                 "CUDA max allocated" if args.device == "cuda" else "process peak RSS"))


if __name__ == "__main__":
    main()
