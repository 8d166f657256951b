"""Peak memory and time of k-reciprocal re-ranking from features (deepminer.rerank.re_ranking_features, what
`evaluate(..., rerank=True)` runs) on synthetic clustered features, against its bound (re_ranking_memory) and
against what the matrix path needs before it starts: the N × N matrix, or at least the (Q, Q), (G, G) and (Q, G)
matrices that evaluate_distances used to build. Prints a table; not a unit test.

    python benchmarks/rerank_memory.py                                  # the default sizes, 1 thread
    python benchmarks/rerank_memory.py --sizes 1000x4000 2000x8000 --dim 256 --max-memory-gb 2
    python benchmarks/rerank_memory.py --dense-up-to 20000     # the matrix path too, measured, where Q + G <= 20000
    python benchmarks/rerank_memory.py --save benchmarks/results/rerank_memory.txt   # appends the output there

Every run is a fresh process. Peak memory is the peak resident set (VmHWM, Linux /proc/self/status) during the call,
reset with /proc/self/clear_refs just before it, minus the resident set then: everything the call touched — torch's
allocations, NumPy's, the allocator's slack — where tracemalloc sees only Python's own allocations (not torch's
tensors) and resource.getrusage's maximum cannot be reset. The input features are made before the reset, so they
are not counted, as the bound does not count them.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time

import torch

from deepminer.evaluate import compute_distance
from deepminer.rerank import re_ranking, re_ranking_block, re_ranking_features, re_ranking_memory

MiB = 2**20


def clustered(num_query: int, num_gallery: int, dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    "Features (Q, D), (G, D): a random centre per person (about 8 images each) plus noise, float32."
    g = torch.Generator().manual_seed(seed)
    people = max(2, (num_query + num_gallery) // 8)
    centres = torch.randn(people, dim, generator=g)
    draw = lambda n: centres[torch.randint(0, people, (n,), generator=g)] + 0.8 * torch.randn(n, dim, generator=g)
    return draw(num_query), draw(num_gallery)


def status(key: str) -> float:
    "A size from /proc/self/status, in MiB."
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def reset_peak() -> float:
    "Reset the peak resident set to the current one; return the current one (MiB)."
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")


def child(num_query: int, num_gallery: int, dim: int, metric: str, k1: int, k2: int, max_memory_gb: float,
          threads: int, path: str):
    "One run in this fresh process; prints JSON."
    torch.set_num_threads(threads)
    re_ranking_features(*clustered(8, 40, dim, seed=1), metric, k1, k2)      # warm up: kernels, thread pools
    qf, gf = clustered(num_query, num_gallery, dim)
    before = reset_peak()
    t0 = time.perf_counter()
    if path == "features":
        out = re_ranking_features(qf, gf, metric, k1, k2, 0.3, max_memory_gb)
    else:                                   # the matrix path as evaluate_distances ran it: three matrices, then re_ranking
        out = re_ranking(compute_distance(qf, gf, metric), compute_distance(qf, qf, metric),
                         compute_distance(gf, gf, metric), k1, k2, 0.3, max_memory_gb)
    seconds = time.perf_counter() - t0
    peak = status("VmHWM") - before
    low, high = torch.aminmax(out)                            # no (Q, G) temporaries: NaN would propagate
    finite = bool(torch.isfinite(low) and torch.isfinite(high))
    rows = max(1, 2**20 // out.shape[1])                      # sum(dtype=float64) makes a float64 copy: by chunks
    checksum = sum(float(chunk.sum(dtype=torch.float64)) for chunk in out.split(rows))
    print(json.dumps(dict(seconds=seconds, peak_mib=peak, checksum=checksum, finite=finite)))


def run_child(args, q: int, g: int, path: str) -> dict:
    cmd = [sys.executable, __file__, "--child", str(q), str(g), path, "--dim", str(args.dim), "--metric", args.metric,
           "--k1", str(args.k1), "--k2", str(args.k2), "--max-memory-gb", str(args.max_memory_gb),
           "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        return dict(error=(out.stderr.strip().splitlines() or ["?"])[-1])
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine() -> str:
    with open("/proc/meminfo") as f:
        total = int(next(line for line in f if line.startswith("MemTotal")).split()[1]) / 2**20
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return f"{os.cpu_count()} CPUs ({cpu}), {total:.1f} GiB RAM, {platform.platform()}, torch {torch.__version__}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", nargs="+", default=["1000x4000", "2000x8000", "4000x16000", "6000x24000"],
                   help="queries x gallery")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--metric", default="euclidean", choices=["euclidean", "cosine"])
    p.add_argument("--k1", type=int, default=20)
    p.add_argument("--k2", type=int, default=6)
    p.add_argument("--max-memory-gb", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dense-up-to", type=int, default=0, metavar="N",
                   help="also run the matrix path (fresh process) for the sizes with queries + gallery <= N")
    p.add_argument("--save", help="also append the output to this file")
    p.add_argument("--child", nargs=3, metavar=("Q", "G", "PATH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        q, g, path = args.child
        return child(int(q), int(g), args.dim, args.metric, args.k1, args.k2, args.max_memory_gb, args.threads, path)

    lines = []
    def say(text=""):
        print(text, flush=True)
        lines.append(text)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "deepminer/rerank.py", "benchmarks/rerank_memory.py"],
                           capture_output=True, text=True).stdout.strip()
    say(f"command: python {shlex.join(sys.argv)}")
    say(f"commit:  {commit}{' (with uncommitted changes to rerank.py or this script)' if dirty else ''}")
    say(f"machine: {machine()}")
    say(f"start:   {time.strftime('%Y-%m-%d %H:%M:%S %Z')}, load average {os.getloadavg()[0]:.2f} (1 min)")
    say(f"problem: clustered {args.dim}-d features, metric={args.metric}, k1={args.k1}, k2={args.k2}, lambda=0.3, "
        f"max_memory_gb={args.max_memory_gb}, {args.threads} torch thread(s)")
    say("peak: peak resident set during the call minus the resident set before it (fresh process per run; the input "
        "features not counted); bound: re_ranking_memory with the block rows re_ranking_block picks; result: the (Q, G) "
        "float32 output, inside both; N x N x 4: the whole distance matrix in float32; QQ+GG+QG x 4: the three matrices "
        "the matrix path takes")
    say()
    head = (f"{'queries x gallery':>18} {'path':>9} {'block':>6} {'seconds':>8} {'peak MiB':>9} {'bound MiB':>10} "
            f"{'result MiB':>11} {'N x N x 4 MiB':>14} {'QQ+GG+QG x 4 MiB':>17}")
    say(head)
    say("-" * len(head))
    t_all = time.perf_counter()
    for size in args.sizes:
        q, g = (int(v) for v in size.lower().split("x"))
        n = q + g
        dense_all, dense_three, result = n * n * 4 / MiB, (q * q + g * g + q * g) * 4 / MiB, q * g * 4 / MiB
        paths = ["features", "matrix"] if n <= args.dense_up_to else ["features"]
        checks = {}
        for path in paths:
            dim = args.dim if path == "features" else 0
            try:
                block = re_ranking_block(q, g, args.k1, args.k2, args.max_memory_gb, dim=dim)
                bound = f"{re_ranking_memory(q, g, args.k1, args.k2, rows=block, dim=dim) / MiB:10,.0f}"
            except MemoryError:
                block, bound = "-", "(no fit)"
            r = run_child(args, q, g, path)
            if "error" in r:
                say(f"{q:>7,} x {g:<8,} {path:>9} {block:>6} {'':>8} {'':>9} {bound:>10} {result:11,.0f} "
                    f"{dense_all:14,.0f} {dense_three:17,.0f}  {r['error'][:80]}")
                continue
            checks[path] = r["checksum"]
            say(f"{q:>7,} x {g:<8,} {path:>9} {block:>6} {r['seconds']:8.1f} {r['peak_mib']:9,.0f} {bound:>10} "
                f"{result:11,.0f} {dense_all:14,.0f} {dense_three:17,.0f}" + ("" if r["finite"] else "  NOT FINITE"))
        if len(checks) == 2:
            say(f"{'':>18} sums of the two results: {checks['features']:.6g} and {checks['matrix']:.6g}")
    say()
    say(f"wall time: {time.perf_counter() - t_all:.0f} s in all")
    if args.save:
        with open(args.save, "a") as f:
            f.write("\n".join(lines) + "\n\n")


if __name__ == "__main__":
    main()
