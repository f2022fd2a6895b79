"""Training throughput: images per second at 256 x 256, batch 8, forward + backward + Adam step.

For the default model (``resunet-small``) and the published one
(``resunet-paper``), body head only, BCE + soft Dice, random inputs (data
loading and augmentation are not timed). On CUDA the step runs as in
training: float16 autocast with a gradient scaler, cuDNN autotuning.

    python benchmarks/bench_train_throughput.py                  # CUDA if present, else CPU
    python benchmarks/bench_train_throughput.py --device cpu --steps 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from nucseg.losses import Loss
from nucseg.model import PRESETS, ResUNet, choose_device
from nucseg.training import optimizer_step


def steps_per_second(name: str, device: torch.device, size: int, batch: int, steps: int, warmup: int) -> list[float]:
    torch.manual_seed(0)
    model = ResUNet(PRESETS[name]).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = Loss("bce_dice")
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    x = torch.rand(batch, 3, size, size, device=device)
    y = (torch.rand(batch, 1, size, size, device=device) > 0.7).float()
    times = []
    for step in range(warmup + steps):
        if amp:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(model(x), y)
        optimizer_step(loss, optimizer, scaler)
        if amp:
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--models", nargs="+", default=["resunet-small", "resunet-paper"], choices=sorted(PRESETS))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=0, help="timed steps (0: 10 on CPU, 50 on CUDA)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    steps = args.steps or (50 if device.type == "cuda" else 10)
    print(f"{args.batch} x 3 x {args.size} x {args.size}, forward + backward + Adam step, {steps} timed steps after {args.warmup} warm-up")
    print(f"{'model':<15} {'params':>8} {'images/s':>9} {'s/step':>8} {'min':>7} {'max':>7}")
    for name in args.models:
        params = sum(p.numel() for p in ResUNet(PRESETS[name]).parameters())
        times = steps_per_second(name, device, args.size, args.batch, steps, args.warmup)
        med = statistics.median(times)
        print(f"{name:<15} {params / 1e6:>7.2f}M {args.batch / med:>9.1f} {med:>8.3f} {min(times):>7.3f} {max(times):>7.3f}")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"device: {where}; machine: processor={platform.processor() or platform.machine()!r}, cpu_count={os.cpu_count()}, "
        f"python={platform.python_version()}, torch={torch.__version__}"
    )


if __name__ == "__main__":
    main()
