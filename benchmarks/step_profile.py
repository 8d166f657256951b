"""Where a training step's time goes, for the baseline and for Deep Miner: the companion of throughput.py's time ratio.

    python benchmarks/step_profile.py                     # the main job's configuration: ResNet-18, 64x32, P x K = 16 x 4
    python benchmarks/step_profile.py --config resnet18:128x64 --steps 5

Four tables. The first is torch.profiler's self CPU time per operator, per step, for both models (taking turns),
sorted by how far Deep Miner's time exceeds the FLOP ratio times the baseline's ("excess ms"): the operators that make
the time ratio differ from the FLOP ratio. The second sums it into three parts — the convolutions (forward and
backward), the other matrix products, and everything else (work FlopCounterMode does not count) — each with its own
FLOP ratio: whether the difference lies in the kernels that do the FLOPs or in the work around them. The third lists
the convolutions by pass and shape, with calls per step and ms per call in each model, and prices Deep Miner's calls
at the baseline's ms per call: the part of the ratio that comes from which shapes it runs, not from how fast. The
fourth (skip it with --no-onednn) re-runs the steps in child processes with ONEDNN_VERBOSE=1, the models taking turns,
and sums oneDNN's own primitive times per kind — convolution forward, backward-data, backward-weights, and the
reorders that convert weights and activations between PyTorch's layout and oneDNN's blocked ones. Not a unit test.
"""
from __future__ import annotations

import argparse
import collections
import os
import subprocess
import sys

from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from throughput import machine_line, make_model, parse_config, train_step_fn  # noqa: E402

KINDS = ("baseline", "deepminer")
PARTS = ("convolutions, forward and backward", "matrix products (classifiers, attention)", "everything else")


def part_of(op: str) -> str:
    """Which part of a step profiler operator or FlopCounterMode op `op` ('aten::mm', 'aten.mm') belongs to: the
    convolutions (oneDNN's kernels), the other matrix products, or everything else (normalisation, activations,
    pooling, elementwise products, losses, optimizer: work that FlopCounterMode does not count)."""
    name = op.replace("::", ".").removeprefix("aten.").split(".")[0]
    if "convolution" in name:
        return PARTS[0]
    if name in ("mm", "bmm", "addmm", "baddbmm") or "scaled_dot_product" in name:
        return PARTS[1]
    return PARTS[2]


def step_fns(backbone: str, h: int, w: int, P: int, K: int) -> tuple[dict, dict]:
    "Each model's training-step closure, and its FLOPs per step: 'total' and one count per part of `PARTS`."
    steps, flops = {}, {}
    for kind in KINDS:
        steps[kind], fwd_bwd = train_step_fn(make_model(kind, backbone), P, K, h, w)
        with FlopCounterMode(display=False) as counter:
            fwd_bwd()
        flops[kind] = collections.Counter()
        for op, n in counter.get_flop_counts()["Global"].items():
            flops[kind][part_of(str(op))] += n
        flops[kind]["total"] = sum(counter.get_flop_counts()["Global"].values())
    return steps, flops


def split_table(b: dict, d: dict, flops: dict, ratio: float):
    """Self CPU ms per step of each part of `PARTS` for both models, with its time ratio, its excess over the step's
    FLOP ratio `ratio`, and its own FLOP ratio."""
    print(f"\n{'part of the step':<44} {'baseline ms':>11} {'DM ms':>8} {'ratio':>6} {'excess ms':>9} {'FLOP ratio':>10}")
    for part in PARTS:
        tb = sum(t for op, t in b.items() if part_of(op) == part)
        td = sum(t for op, t in d.items() if part_of(op) == part)
        fb, fd = flops["baseline"][part], flops["deepminer"][part]
        print(f"{part:<44} {tb:>11.1f} {td:>8.1f} {td / tb:>6.2f} {td - ratio * tb:>9.1f} "
              f"{f'{fd / fb:.2f}' if fb else 'not counted':>10}")


def operator_table(steps: dict, flops: dict, ratio: float, n: int, warmup: int, top: int, rounds: int):
    """Self CPU ms per step and operator for each model, sorted by Deep Miner's excess over the FLOP ratio `ratio` × the
    baseline's; then the same time in three parts (`split_table`) and the convolutions by shape (`conv_shape_table`)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    per_op = {kind: collections.Counter() for kind in steps}
    per_conv = {kind: collections.defaultdict(lambda: [0.0, 0]) for kind in steps}  # (pass, shapes) -> [ms, calls]
    for _ in range(rounds):                  # the models take turns, so that both see the same machine
        for kind, step in steps.items():
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                for _ in range(n):
                    step()
            per_op[kind].update({e.key: e.self_cpu_time_total / (n * rounds) / 1e3 for e in prof.key_averages()})
            for e in prof.key_averages(group_by_input_shape=True):
                if e.key in ("aten::mkldnn_convolution", "aten::convolution_backward"):
                    x, wt = e.input_shapes[:2] if e.key == "aten::mkldnn_convolution" else e.input_shapes[1:3]
                    row = per_conv[kind]["forward" if "mkldnn" in e.key else "backward", tuple(x[1:]), tuple(wt)]
                    row[0] += e.self_cpu_time_total / (n * rounds) / 1e3
                    row[1] += e.count / (n * rounds)
    b, d = per_op["baseline"], per_op["deepminer"]
    total_b, total_d = sum(b.values()), sum(d.values())
    print(f"self CPU time per step: baseline {total_b:.0f} ms, Deep Miner {total_d:.0f} ms, ratio {total_d / total_b:.2f} "
          f"(FLOP ratio {ratio:.2f}; {rounds} turns of {n} profiled steps each, after {warmup} untimed)\n")
    print(f"{'operator':<44} {'baseline ms':>11} {'DM ms':>8} {'ratio':>6} {'excess ms':>9}")
    for op in sorted(set(b) | set(d), key=lambda k: -(d[k] - ratio * b[k]))[:top]:
        print(f"{op[:44]:<44} {b[op]:>11.1f} {d[op]:>8.1f} {d[op] / b[op] if b[op] else float('inf'):>6.2f} "
              f"{d[op] - ratio * b[op]:>9.1f}")
    split_table(b, d, flops, ratio)
    conv_shape_table(per_conv, top)


def conv_shape_table(per_conv: dict, top: int):
    """The convolutions by pass and shape: calls per step and ms per call in each model; then Deep Miner's calls priced
    at the baseline's ms per call. Where a shape costs the same in both models, that price against the baseline's own
    convolution time is the ratio that comes from which shapes Deep Miner runs, not from how fast they run."""
    b, d = per_conv["baseline"], per_conv["deepminer"]
    print(f"\n{'convolution pass, input (C, H, W), weight':<50} {'calls':>7} {'ms per call':>13} {'DM ms':>7}")
    for key in sorted(set(b) | set(d), key=lambda k: -d.get(k, (0.0, 0))[0])[:top]:
        (tb, nb), (td, nd) = b.get(key, (0.0, 0)), d.get(key, (0.0, 0))
        calls, per_call = f"{nb:.0f}/{nd:.0f}", f"{tb / nb if nb else 0:.2f}/{td / nd if nd else 0:.2f}"
        print(f"{key[0]:<9} {str(key[1]):<16} {str(key[2]):<23} {calls:>7} {per_call:>13} {td:>7.1f}")
    shared = [key for key in d if key in b]    # shapes both models run
    at_baseline_speed = sum(d[key][1] * b[key][0] / b[key][1] for key in shared)
    measured = sum(d[key][0] for key in shared)
    only_deep_miner = sum(t for key, (t, _) in d.items() if key not in shared)
    total_b = sum(t for t, _ in b.values())
    print(f"Deep Miner's calls of the shapes both models run, at the baseline's ms per call: {at_baseline_speed:.1f} ms "
          f"({at_baseline_speed / total_b:.2f} times the baseline's convolution time), against {measured:.1f} ms "
          f"measured; shapes only Deep Miner runs: {only_deep_miner:.1f} ms")


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
    """oneDNN's primitive time per step and kind for each model, from ONEDNN_VERBOSE in child processes: one child per
    model and turn, the models taking turns (`--rounds` each), so that both see the same machine."""
    sums = {kind: collections.Counter() for kind in KINDS}
    for _ in range(args.rounds):
        for kind in KINDS:
            out = subprocess.run([sys.executable, __file__, "--child", kind, "--config", args.config, "--P", str(args.P),
                                  "--K", str(args.K), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                                 capture_output=True, text=True, env={**os.environ, "ONEDNN_VERBOSE": "1"},
                                 check=True).stdout
            for line in out.split("STEPS START", 1)[1].splitlines():
                fields = line.split(",")
                if len(fields) > 8 and fields[2] == "primitive" and fields[3] == "exec":
                    name = fields[5] if fields[5] != "convolution" else f"convolution {fields[7]}"
                    sums[kind][name] += float(fields[-1]) / (args.steps * args.rounds)
    b, d = sums["baseline"], sums["deepminer"]
    print(f"\noneDNN primitive time per step (ONEDNN_VERBOSE, {args.rounds} turns of {args.steps} steps after "
          f"{args.warmup} untimed, one child process per turn)\n")
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
    print(f"# {machine_line()}\n# {args.config}, P x K = {args.P} x {args.K}\n")
    steps, flops = step_fns(backbone, h, w, args.P, args.K)
    ratio = flops["deepminer"]["total"] / flops["baseline"]["total"]
    operator_table(steps, flops, ratio, args.steps, args.warmup, args.top, args.rounds)
    if not args.no_onednn:
        onednn_table(args, ratio)


if __name__ == "__main__":
    main()
