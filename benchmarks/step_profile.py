"""Where a training step's time goes, for the baseline and for Deep Miner: the companion of throughput.py's time ratio.

    python benchmarks/step_profile.py                     # the main job's configuration: ResNet-18, 64x32, P x K = 16 x 4
    python benchmarks/step_profile.py --config resnet18:128x64 --steps 5

Two tables. The first is torch.profiler's self CPU time per operator, per step, for both models (taking turns), sorted by how far
Deep Miner's time exceeds the FLOP ratio times the baseline's ("excess ms"): the operators that make the time ratio
differ from the FLOP ratio. The second (skip it with --no-onednn) re-runs the steps in a child process with
ONEDNN_VERBOSE=1 and sums oneDNN's own primitive times per kind — convolution forward, backward-data,
backward-weights, and the reorders that convert weights and activations between PyTorch's layout and oneDNN's blocked
ones, a cost that grows with the weights' size rather than with the FLOPs. Not a unit test.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import count_flops, make_model, parse_config, train_step_fn  # noqa: E402

KINDS = ("baseline", "deepminer")


def step_fns(backbone: str, h: int, w: int, P: int, K: int) -> tuple[dict, float]:
    "Each model's training-step closure and the Deep Miner / baseline FLOP ratio of a step."
    steps, flops = {}, {}
    for kind in KINDS:
        steps[kind], fwd_bwd = train_step_fn(make_model(kind, backbone), P, K, h, w)
        flops[kind] = count_flops(fwd_bwd)
    return steps, flops["deepminer"] / flops["baseline"]


def operator_table(steps: dict, ratio: float, n: int, warmup: int, top: int, rounds: int):
    "Self CPU ms per step and operator for each model, sorted by Deep Miner's excess over `ratio` × the baseline's."
    for step in steps.values():
        for _ in range(warmup):
            step()
    per_op = {kind: collections.Counter() for kind in steps}
    for _ in range(rounds):                  # the models take turns, so that both see the same machine
        for kind, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(n):
                    step()
            per_op[kind].update({e.key: e.self_cpu_time_total / (n * rounds) / 1e3 for e in prof.key_averages()})
    b, d = per_op["baseline"], per_op["deepminer"]
    total_b, total_d = sum(b.values()), sum(d.values())
    print(f"self CPU time per step: baseline {total_b:.0f} ms, Deep Miner {total_d:.0f} ms, ratio {total_d / total_b:.2f} "
          f"(FLOP ratio {ratio:.2f}; {rounds} turns of {n} profiled steps each, after {warmup} untimed)\n")
    print(f"{'operator':<44} {'baseline ms':>11} {'DM ms':>8} {'ratio':>6} {'excess ms':>9}")
    for op in sorted(set(b) | set(d), key=lambda k: -(d[k] - ratio * b[k]))[:top]:
        print(f"{op[:44]:<44} {b[op]:>11.1f} {d[op]:>8.1f} {d[op] / b[op] if b[op] else float('inf'):>6.2f} "
              f"{d[op] - ratio * b[op]:>9.1f}")


def onednn_child(args):
    "Run in a child with ONEDNN_VERBOSE=1: `--steps` steps of one model after warm-up, marking where they start."
    backbone, h, w = parse_config(args.config)
    step, _ = train_step_fn(make_model(args.child, backbone), args.P, args.K, h, w)
    for _ in range(args.warmup):
        step()
    print("STEPS START", flush=True)
    for _ in range(args.steps):
        step()


def onednn_table(args, ratio: float):
    "oneDNN's primitive time per step and kind for each model, from ONEDNN_VERBOSE in a child process."
    sums = {}
    for kind in KINDS:
        out = subprocess.run([sys.executable, __file__, "--child", kind, "--config", args.config, "--P", str(args.P),
                              "--K", str(args.K), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             capture_output=True, text=True, env={**os.environ, "ONEDNN_VERBOSE": "1"}, check=True).stdout
        counter = collections.Counter()
        for line in out.split("STEPS START", 1)[1].splitlines():
            fields = line.split(",")
            if len(fields) > 8 and fields[2] == "primitive" and fields[3] == "exec":
                name = fields[5] if fields[5] != "convolution" else f"convolution {fields[7]}"
                counter[name] += float(fields[-1]) / args.steps
        sums[kind] = counter
    b, d = sums["baseline"], sums["deepminer"]
    print(f"\noneDNN primitive time per step (ONEDNN_VERBOSE, {args.steps} steps after {args.warmup} untimed)\n")
    print(f"{'primitive':<32} {'baseline ms':>11} {'DM ms':>8} {'ratio':>6} {'excess ms':>9}")
    for name in sorted(set(b) | set(d), key=lambda k: -(d[k] - ratio * b[k])):
        print(f"{name:<32} {b[name]:>11.1f} {d[name]:>8.1f} {d[name] / b[name] if b[name] else float('inf'):>6.2f} "
              f"{d[name] - ratio * b[name]:>9.1f}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="resnet18:64x32", help="BACKBONE:HxW (default resnet18:64x32, the main job)")
    parser.add_argument("--P", type=int, default=16, help="identities per batch (default 16)")
    parser.add_argument("--K", type=int, default=4, help="images per identity (default 4)")
    parser.add_argument("--steps", type=int, default=4, help="profiled steps per model and turn (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of each model (default 3)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--top", type=int, default=15, help="operators to list (default 15)")
    parser.add_argument("--no-onednn", action="store_true", help="skip the oneDNN primitive table")
    parser.add_argument("--child", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return onednn_child(args)
    backbone, h, w = parse_config(args.config)
    print(f"# {args.config}, P x K = {args.P} x {args.K}, {torch.get_num_threads()} torch threads, torch {torch.__version__}\n")
    steps, ratio = step_fns(backbone, h, w, args.P, args.K)
    operator_table(steps, ratio, args.steps, args.warmup, args.top, args.rounds)
    if not args.no_onednn:
        onednn_table(args, ratio)


if __name__ == "__main__":
    main()
