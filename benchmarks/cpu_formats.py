"""What bfloat16 autocast and channels_last buy a CPU training step: the same Deep Miner (or baseline) step in float32 and
bfloat16, each with NCHW and channels_last tensors, timed in alternation; images/s, the FLOP/s achieved against a
large float32 and bfloat16 matrix product timed in the same run, and the loss after the same steps from the same start
(the formats must agree within bfloat16's noise). Prints a table; not a unit test.

    python benchmarks/cpu_formats.py                                   # ResNet-18, 128x64, P x K = 8 x 4, Deep Miner
    python benchmarks/cpu_formats.py --size 64x32 --P 16 --K 4 --runs 20 --model baseline
    python benchmarks/cpu_formats.py --formats "fp32 NCHW" "fp32 channels_last"   # where bfloat16 is not native

`Trainer` turns channels_last on wherever it autocasts: float16 on CUDA, bfloat16 on the CPU (`cpu_bf16`).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from throughput import count_flops, machine_line, make_model, timed, timed_alternately  # noqa: E402

from deepminer.losses import DeepMinerLoss  # noqa: E402
from deepminer.runs import machine_name  # noqa: E402
from deepminer.train import make_optimizers  # noqa: E402

FORMATS = {"fp32 NCHW": (None, False), "fp32 channels_last": (None, True),
           "bf16 NCHW": (torch.bfloat16, False), "bf16 channels_last": (torch.bfloat16, True)}  # name -> (autocast, NHWC)


def cpu_flags() -> set[str]:
    "The CPU's feature flags from /proc/cpuinfo (empty where there is none)."
    try:
        return set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return set()


def matmul_rate(dtype: torch.dtype, n: int = 2048, runs: int = 3) -> float:
    "FLOP/s of an n x n x n matrix product in `dtype` (2 n^3 FLOPs), best of `runs`."
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), 1, runs))


def make_step(kind: str, backbone: str, dtype, nhwc: bool, images: torch.Tensor, labels: torch.Tensor):
    "One training step (forward under autocast, loss, backward, Adam + centre SGD) of a fresh seeded model; and its losses."
    model = make_model(kind, backbone).train()
    criterion = DeepMinerLoss(751, model.feature_dims)
    optimizer, center_optimizer = make_optimizers(model, criterion, lr=3e-3, weight_decay=5e-4, center_lr=0.5)
    if nhwc:
        model, images = model.to(memory_format=torch.channels_last), images.contiguous(memory_format=torch.channels_last)
    losses = []
    def step():
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            outputs = model(images)
        loss, _ = criterion({k: type(v)(*(t.float() for t in v)) for k, v in outputs.items()}, labels)
        optimizer.zero_grad(set_to_none=True); center_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step(); center_optimizer.step()
        losses.append(loss.item())
    def forward_backward():
        loss, _ = criterion(model(images), labels)
        loss.backward(); model.zero_grad(set_to_none=True)
    return step, forward_backward, losses


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", default="128x64", help="HxW of the images (default 128x64)")
    parser.add_argument("--model", default="deepminer", choices=["deepminer", "baseline"])
    parser.add_argument("--P", type=int, default=8, help="identities per batch (default 8)")
    parser.add_argument("--K", type=int, default=4, help="images per identity (default 4)")
    parser.add_argument("--runs", type=int, default=10, help="timed rounds, each format once per round (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS), metavar="FORMAT",
                        help=f"which of {list(FORMATS)} (default: all; the first that is given is the ratio's base)")
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.size.lower().split("x"))
    torch.manual_seed(0)
    images, labels = torch.randn(args.P * args.K, 3, h, w), torch.arange(args.P).repeat_interleave(args.K)

    print(f"# {machine_line()}\n# {machine_name()}; CPU flags: "
          f"{' '.join(f for f in ('avx2', 'avx512f', 'avx512_bf16', 'amx_bf16') if f in cpu_flags()) or 'none of avx2/avx512/amx'}")
    print(f"# {args.model} {args.backbone} {h}x{w}, P x K = {args.P} x {args.K}; {args.warmup} untimed + {args.runs} timed "
          f"rounds, the four formats in turn each round; load before: {os.getloadavg()[0]:.1f}")
    steps, losses, flops = {}, {}, None
    for name in args.formats:
        dtype, nhwc = FORMATS[name]
        steps[name], fwd_bwd, losses[name] = make_step(args.model, args.backbone, dtype, nhwc, images, labels)
        flops = flops or count_flops(fwd_bwd) / len(images)    # the same network in every format
    peak = {"fp32": matmul_rate(torch.float32), "bf16": matmul_rate(torch.bfloat16)}
    times = timed_alternately(steps, args.warmup, args.runs)
    base_name = "bf16 NCHW" if "bf16 NCHW" in times else args.formats[0]
    base = statistics.median(times[base_name])
    header = (f"{'format':<19} {'med s/step':>10} {'min s':>7} {'img/s':>7} {'vs ' + base_name:>14} {'GFLOP/s':>8} "
              f"{'% fp32 mm':>9} {'% bf16 mm':>9} {'loss after':>10}")
    print(f"# FLOPs per image (forward + backward, FlopCounterMode): {flops / 1e9:.2f} G; 2048^3 matmul: "
          f"fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.1f} GFLOP/s\n" + header + "\n" + "-" * len(header))
    for name, t in times.items():
        med = statistics.median(t)
        rate = flops * len(images) / med
        print(f"{name:<19} {med:>10.3f} {min(t):>7.3f} {len(images) / med:>7.1f} {base / med:>13.2f}x {rate / 1e9:>8.1f} "
              f"{100 * rate / peak['fp32']:>8.0f}% {100 * rate / peak['bf16']:>8.0f}% {losses[name][-1]:>10.3f}")
    print(f"# 'loss after': the loss at the last of the {args.warmup + args.runs} steps, same start and batch in each format")


if __name__ == "__main__":
    main()
