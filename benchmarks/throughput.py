"""Throughput of the baseline and of Deep Miner on this machine: images/s for training steps and for inference, with
PyTorch eager, torch.compile and onnxruntime; FLOPs per image counted by FlopCounterMode, and the FLOP/s achieved
against a large matrix product's in the same run. Prints a table; not a unit test.

    python benchmarks/throughput.py                                  # the default grid (some minutes on 2 cores)
    python benchmarks/throughput.py --configs resnet18:128x64 --runs 5
    python benchmarks/throughput.py --compile all --runs-large 1     # torch.compile on every config

A config is BACKBONE:HxW. Each (config, model, mode) row is `--warmup` untimed iterations then `--runs` timed ones
(`--runs-large` for ResNet-50 at 384x128 and above, which is slow on a CPU); the table gives the median and the best
seconds per batch and images/s from the median. Training steps are the real thing: training-mode forward, the
Deep Miner loss (ID + triplet + center per branch, P x K batch), backward, and the Trainer's own optimizers (fused
Adam, SGD for the centers). The two models' training steps are timed in alternation, baseline then Deep Miner, so
that a change in the machine's load falls on both; data loading is not part of a step.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from deepminer.export import export_model, load_exported
from deepminer.losses import DeepMinerLoss
from deepminer.model import DeepMiner, DeepMinerConfig
from deepminer.train import make_optimizers

NUM_CLASSES = 751  # Market-1501's training identities: sets the classifier size


def parse_config(text: str) -> tuple[str, int, int]:
    "'resnet50:384x128' -> ('resnet50', 384, 128)."
    try:
        backbone, size = text.split(":")
        h, w = size.lower().split("x")
        return backbone, int(h), int(w)
    except ValueError:
        raise SystemExit(f"--configs: expected BACKBONE:HxW such as resnet50:384x128, got {text!r}")


def machine_line() -> str:
    "When and where a benchmark runs: UTC time, CPU, logical CPUs, torch threads, torch and Python versions."
    now = datetime.datetime.now(datetime.timezone.utc)
    return (f"{now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
            f"{torch.get_num_threads()} torch threads; torch {torch.__version__}, Python {platform.python_version()}")


def timed(fn, warmup: int, runs: int) -> list[float]:
    "Wall-clock seconds of `runs` calls of `fn` after `warmup` untimed ones."
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def timed_alternately(fns: dict, warmup: int, runs: int) -> dict[str, list[float]]:
    "Wall-clock seconds of `runs` rounds in which each of `fns` is called once, in turn, after `warmup` untimed rounds."
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def matmul_flops(n: int = 2048, runs: int = 3) -> float:
    "FLOP/s of an n x n x n float32 matrix product (2 n^3 FLOPs), best of `runs`."
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / min(timed(lambda: torch.mm(a, b), 1, runs))


def count_flops(fn) -> float:
    "FLOPs that FlopCounterMode counts during `fn()`."
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def make_model(kind: str, backbone: str) -> DeepMiner:
    torch.manual_seed(0)
    config = DeepMinerConfig(backbone=backbone)
    return DeepMiner(NUM_CLASSES, config.baseline() if kind == "baseline" else config)


def train_step_fn(model: DeepMiner, P: int, K: int, h: int, w: int):
    "A closure that runs one full training step on a fixed random P x K batch."
    model.train()
    criterion = DeepMinerLoss(NUM_CLASSES, model.feature_dims)
    optimizer, center_optimizer = make_optimizers(model, criterion, lr=3.5e-4, weight_decay=5e-4, center_lr=0.5)
    images = torch.randn(P * K, 3, h, w)
    labels = torch.arange(P).repeat_interleave(K)
    def step():
        loss, _ = criterion(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        center_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        center_optimizer.step()
    def forward_backward():  # what FlopCounterMode sees: the optimizers' elementwise work is not counted
        loss, _ = criterion(model(images), labels)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step, forward_backward


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="+", default=["resnet50:384x128", "resnet50:128x64", "resnet18:384x128",
                                                         "resnet18:128x64"])
    parser.add_argument("--batch", type=int, default=8, help="images per inference batch (default 8)")
    parser.add_argument("--P", type=int, default=4, help="identities per training batch (default 4)")
    parser.add_argument("--K", type=int, default=2, help="images per identity in a training batch (default 2)")
    parser.add_argument("--runs", type=int, default=3, help="timed iterations per row (default 3)")
    parser.add_argument("--runs-large", type=int, default=2, help="timed iterations for ResNet-50 at >= 384x128 (default 2)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch and onnxruntime threads (default: torch's)")
    parser.add_argument("--modes", nargs="+", default=["train", "eager", "compile", "onnxruntime"],
                        choices=["train", "eager", "compile", "onnxruntime"])
    parser.add_argument("--compile", default="small", choices=["none", "small", "all"],
                        help="where to try torch.compile for inference: nowhere, at <= 128x64 (default), everywhere")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    print(f"# {machine_line()}")
    print("# the machine is shared: a 2048^3 float32 matmul (best of 3) is timed just before each row ('mm GFLOP/s'),\n"
          "# and '% mm' is the row's achieved FLOP/s against it; 'load' is the 1-minute load average before the row")
    print(f"# inference batch {args.batch}, training batch P x K = {args.P} x {args.K}; warmup {args.warmup}, "
          f"runs {args.runs} ({args.runs_large} for ResNet-50 at >= 384x128); FLOPs from FlopCounterMode\n")
    header = (f"{'config':<17} {'model':<9} {'mode':<12} {'runs':>4} {'med s/batch':>11} {'min s':>7} {'img/s':>7} "
              f"{'GFLOP/img':>9} {'GFLOP/s':>8} {'mm GFLOP/s':>10} {'% mm':>5} {'load':>5}")
    print(header + "\n" + "-" * len(header), flush=True)
    results, notes = {}, []

    def report(text, kind, mode, runs, times, per_batch, flops, load, peak, note=""):
        med = statistics.median(times)
        rate = per_batch / med
        results[(text, kind, mode)] = dict(flops=flops, rate=rate, best=per_batch / min(times))
        print(f"{text:<17} {kind:<9} {mode:<12} {runs:>4} {med:>11.3f} {min(times):>7.3f} {rate:>7.1f} "
              f"{flops / 1e9:>9.2f} {flops * rate / 1e9:>8.1f} {peak / 1e9:>10.1f} {100 * flops * rate / peak:>4.0f}% "
              f"{load:>5.1f}  {note}", flush=True)

    for text in args.configs:
        backbone, h, w = parse_config(text)
        runs = args.runs_large if backbone != "resnet18" and h * w >= 384 * 128 else args.runs
        models = {kind: make_model(kind, backbone) for kind in ("baseline", "deepminer")}
        if "train" in args.modes:  # both models' steps in alternation
            steps, flops = {}, {}
            for kind, model in models.items():
                steps[kind], fwd_bwd = train_step_fn(model, args.P, args.K, h, w)
                flops[kind] = count_flops(fwd_bwd) / (args.P * args.K)
            load, peak = os.getloadavg()[0], matmul_flops()
            times = timed_alternately(steps, args.warmup, runs)
            for kind in models:
                report(text, kind, "train", runs, times[kind], args.P * args.K, flops[kind], load, peak, "alternating")
        for kind, model in models.items():
            for mode in args.modes:
                if mode == "train" or (mode == "compile" and (args.compile == "none" or
                                                              (args.compile == "small" and h * w > 128 * 64))):
                    continue
                note = ""
                model.eval()
                images = torch.randn(args.batch, 3, h, w)
                with torch.no_grad():
                    flops = count_flops(lambda: model(images[:1]))
                if mode == "eager":
                    fn = lambda: model(images)
                elif mode == "compile":
                    try:
                        compiled = torch.compile(model)
                        t0 = time.perf_counter()
                        with torch.no_grad():
                            compiled(images)
                        note = f"compile {time.perf_counter() - t0:.0f} s"
                        fn = lambda: compiled(images)
                    except Exception as err:  # report, don't stop the table
                        notes.append(f"torch.compile failed for {text} {kind}: {type(err).__name__}: {str(err)[:200]}")
                        print(f"{text:<17} {kind:<9} {mode:<12} failed: {type(err).__name__}", flush=True)
                        continue
                else:
                    tmp = tempfile.mkdtemp()
                    t0 = time.perf_counter()
                    info = export_model(model, f"{tmp}/m.onnx", "onnx", h, w)
                    run = load_exported(info["path"], threads=threads)
                    note = f"export+check {time.perf_counter() - t0:.0f} s, max diff {info['max_abs_diff']:.1e}"
                    array = images.numpy()
                    fn = lambda: run(array)
                load, peak = os.getloadavg()[0], matmul_flops()
                if mode == "onnxruntime":
                    times = timed(fn, args.warmup, runs)
                else:
                    with torch.no_grad():
                        times = timed(fn, args.warmup, runs)
                report(text, kind, mode, runs, times, args.batch, flops, load, peak, note)
        del models
    print("\nDeep Miner / baseline: FLOPs per image, and seconds per image from the median and from the best run"
          f" ({platform.processor() or platform.machine()}, {threads} threads, runs as above)")
    for text in args.configs:
        for mode in args.modes:
            b, d = results.get((text, "baseline", mode)), results.get((text, "deepminer", mode))
            if b and d:
                print(f"  {text:<17} {mode:<12} FLOP ratio {d['flops'] / b['flops']:.2f}  time ratio {b['rate'] / d['rate']:.2f} "
                      f"(median), {b['best'] / d['best']:.2f} (best)")
    for note in notes:
        print("note:", note)


if __name__ == "__main__":
    main()
