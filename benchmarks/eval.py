"""Benchmark of deepminer.evaluate and deepminer.rerank: evaluate_rank and compute_distance on a Market-1501-sized
problem, re_ranking time and peak memory. Prints a table; not a unit test.

    python benchmarks/eval.py                 # everything, 7 runs of evaluate_rank, 3 of the rest
    python benchmarks/eval.py --runs 3 --skip-rerank
    python benchmarks/eval.py --rerank-sizes 500x3000 --threads 1

Timings are wall-clock seconds, min and median over the runs. re_ranking runs in a fresh process per run, so that
its peak memory (the peak resident set during the call minus the resident set just before it, inputs excluded; Linux
/proc/self/status after resetting the peak with /proc/self/clear_refs) is its own.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

from deepminer.evaluate import compute_distance, evaluate_rank
from deepminer.rerank import re_ranking, re_ranking_block, re_ranking_memory

MARKET = dict(num_query=3368, num_gallery=15913, ids=751, cameras=6, distractors=2800, junk=1500)


def market_like(num_query=3368, num_gallery=15913, ids=751, cameras=6, distractors=2800, junk=1500, clustered=True,
                seed=0, dim=128, spread=1.3):
    """A Market-sized problem (distmat, q_pids, g_pids, q_camids, g_camids): uniformly random distances, or squared
    distances of clustered features (a centre per person + `spread` × noise; distractors and junk: nobody)."""
    rng = np.random.default_rng(seed)
    qp, qc = rng.integers(1, ids + 1, num_query), rng.integers(0, cameras, num_query)
    gp = np.concatenate([rng.integers(1, ids + 1, num_gallery - distractors - junk), np.zeros(distractors, int),
                         np.full(junk, -1)])
    gp, gc = rng.permutation(gp), rng.integers(0, cameras, num_gallery)
    if not clustered:
        return rng.random((num_query, num_gallery), dtype=np.float32), qp, gp, qc, gc
    qf, gf = clustered_features(qp, gp, rng, ids, dim, spread)
    return compute_distance(qf, gf).numpy(), qp, gp, qc, gc


def clustered_features(qp, gp, rng, ids, dim=128, spread=1.3):
    "Features: a centre per pid 1 … `ids` plus `spread` × noise; pids <= 0 (distractors, junk): noise of the same norm."
    centres = torch.from_numpy(rng.standard_normal((ids + 1, dim), dtype=np.float32))
    noise = lambda n: torch.from_numpy(rng.standard_normal((n, dim), dtype=np.float32))
    qf, gf = centres[qp] + spread * noise(len(qp)), centres[gp.clip(0)] + spread * noise(len(gp))
    gf[torch.from_numpy(gp <= 0)] = noise(int((gp <= 0).sum())) * (1 + spread**2) ** 0.5
    return qf, gf


def reference_rank(d, qp, gp, qc, gc):
    "Per query: stable argsort of the valid entries. (first ranks, AP, INP), NaN/-1 where skipped."
    first, ap, inp = np.full(len(d), -1), np.full(len(d), np.nan), np.full(len(d), np.nan)
    for i in range(len(d)):
        keep = (gp != -1) & ~((gp == qp[i]) & (gc == qc[i]))
        r = np.flatnonzero(gp[keep][np.argsort(d[i, keep], kind="stable")] == qp[i])
        if len(r):
            first[i], ap[i], inp[i] = r[0], np.mean(np.arange(1, len(r) + 1) / (r + 1)), len(r) / (r[-1] + 1)
    return first, ap, inp


def timed(fn, runs):
    "(result of the last run, list of wall-clock seconds)."
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, times


def row(name, times, note=""):
    print(f"{name:<52} {len(times):>4} {min(times):>9.3f} {np.median(times):>9.3f}  {note}", flush=True)


def bench_evaluate_rank(runs: int, check_rows: int = 300):
    print(f"\n{'evaluate_rank, Market-sized 3,368 x 15,913':<52} {'runs':>4} {'min s':>9} {'median s':>9}")
    uniform, clustered = market_like(clustered=False, **MARKET), market_like(clustered=True, **MARKET)
    for name, (d, qp, gp, qc, gc) in (("  uniformly random distances", uniform),
                                       ("  clustered features (spread 1.3)", clustered)):
        metrics, times = timed(lambda: evaluate_rank(d, qp, gp, qc, gc), runs)
        first, ap, inp = reference_rank(d[:check_rows], qp[:check_rows], gp, qc[:check_rows], gc)
        exact = (np.array_equal(first, metrics.first_rank[:check_rows])
                 and np.allclose(ap, metrics.ap[:check_rows], rtol=0, atol=1e-12, equal_nan=True)
                 and np.allclose(inp, metrics.inp[:check_rows], rtol=0, atol=1e-12, equal_nan=True))
        row(name, times, f"mAP {100 * metrics.mAP:.1f}%, rank-1 {100 * metrics.cmc[0]:.1f}%, mINP "
                         f"{100 * metrics.mINP:.1f}%; = reference on {check_rows} queries: {exact}")
    few = max(1, min(runs, 3))
    d, qp, gp, qc, gc = uniform
    for name, tied in (("  worst case, ties: integer distances 0 … 64", np.floor(d * 65).astype(np.float32)),
                       ("  worst case, ties: all distances equal", np.ones_like(d))):
        _, times = timed(lambda: evaluate_rank(tied, qp, gp, qc, gc), few)
        row(name, times)
    _, times = timed(lambda: np.argsort(d, axis=1), few)
    row("  for scale: bare np.argsort of the matrix", times)


def bench_distance(runs: int):
    print(f"\n{'compute_distance 3,368 x 15,913, 2048-d float32':<52} {'runs':>4} {'min s':>9} {'median s':>9}")
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(3368, 2048, generator=g), torch.randn(15913, 2048, generator=g)
    for metric in ("euclidean", "cosine"):
        _, times = timed(lambda: compute_distance(qf, gf, metric), runs)
        row(f"  {metric}", times, f"torch threads: {torch.get_num_threads()}")


def rerank_child(num_query: int, num_gallery: int, threads: int):
    "Run one re_ranking in this (fresh) process and print JSON: seconds, peak MiB above the start, the bound."
    torch.set_num_threads(threads)
    rng = np.random.default_rng(0)
    ids = max(2, num_query // 2)
    qp, gp = rng.integers(1, ids + 1, num_query), rng.integers(1, ids + 1, num_gallery)
    qf, gf = clustered_features(qp, gp, rng, ids, dim=128, spread=1.3)
    q_g, q_q, g_g = compute_distance(qf, gf), compute_distance(qf, qf), compute_distance(gf, gf)
    del qf, gf

    def status(key):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024  # MiB

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # reset the peak resident set (VmHWM) to the current one
    before = status("VmRSS")
    t0 = time.perf_counter()
    re_ranking(q_g, q_q, g_g)
    seconds = time.perf_counter() - t0
    bound = re_ranking_memory(num_query, num_gallery, rows=re_ranking_block(num_query, num_gallery))
    print(json.dumps(dict(seconds=seconds, peak_mib=status("VmHWM") - before, bound_mib=bound / 2**20)))


def bench_rerank(sizes: list[str], runs: int, threads: list[int]):
    print(f"\n{'re_ranking (k1=20, k2=6, lambda=0.3), clustered':<52} {'runs':>4} {'min s':>9} {'median s':>9}  "
          "peak MiB above the inputs (max over runs) / its upper bound")
    for size in sizes:
        q, g = (int(v) for v in size.lower().split("x"))
        for n in threads:
            results = []
            for _ in range(runs):
                cmd = [sys.executable, __file__, "--rerank-child", str(q), str(g), "--threads", str(n)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row(f"  {q:,} x {g:,}, {n} torch thread{'s' if n > 1 else ''}", [r["seconds"] for r in results],
                f"{max(r['peak_mib'] for r in results):,.0f} MiB / {results[0]['bound_mib']:,.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7, help="runs of evaluate_rank (the others: min(runs, 3))")
    parser.add_argument("--skip-rerank", action="store_true", help="leave re_ranking out")
    parser.add_argument("--rerank-sizes", nargs="*", default=["500x3000", "1000x6000", "3368x15913"], metavar="QxG",
                        help="query x gallery sizes for re_ranking (default: 500x3000 1000x6000 3368x15913)")
    parser.add_argument("--threads", type=int, nargs="*", default=[torch.get_num_threads(), 1],
                        help="torch thread counts to run re_ranking with (default: torch's default, then 1)")
    parser.add_argument("--rerank-child", nargs=2, type=int, metavar=("Q", "G"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rerank_child:
        return rerank_child(*args.rerank_child, args.threads[0])
    print(f"{time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"numpy {np.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"load average {os.getloadavg()[0]:.1f}")
    bench_evaluate_rank(args.runs)
    bench_distance(min(args.runs, 3))
    if not args.skip_rerank:
        bench_rerank(args.rerank_sizes, min(args.runs, 3), sorted(set(args.threads), reverse=True))


if __name__ == "__main__":
    main()
