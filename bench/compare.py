"""roux against PyTorch eager, side by side in one run (issue 8).

    source scripts/env.sh && cargo build --release && python bench/compare.py [--reps 3] [--steps 20]

For each configuration, runs `roux bench transformer --config C` and bench/reference.py in turn
(interleaved, several repetitions, each a fresh process with the same thread count) and prints
tokens/s of each and their ratio, the loss after N steps of each, model FLOP/s and MFU against a
float32 matmul peak measured now with libtorch (through torch), and roux's peak memory above its
start-up baseline against the plan's estimate.
"""
import argparse, json, os, statistics, subprocess, sys, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--reps", type=int, default=3)
p.add_argument("--steps", type=int, default=20)
p.add_argument("--configs", default="tiny,small,medium,switch-8,switch-64")
a = p.parse_args()
threads = torch.get_num_threads()


def matmul_peak(n=2048, reps=10, rounds=5):
    """The best of several rounds: on a shared machine one slow round would flatter every MFU."""
    x, y = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        x @ y
    best = 0.0
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(reps):
            x @ y
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


peak = matmul_peak()
print(f"float32 matmul peak (2048³, {threads} threads): {peak / 1e9:.1f} GFLOP/s")
rows = []
for cfg in a.configs.split(","):
    r_runs, p_runs = [], []
    for _ in range(a.reps):
        r_runs.append(run(["target/release/roux", "bench", "transformer", "--config", cfg, "--steps", str(a.steps)]))
        p_runs.append(run([sys.executable, "bench/reference.py", cfg, str(a.steps), str(threads)]))
    # Once more with exact allocation (ROUX_MALLOC=exact): peak RSS of the live tensors alone;
    # and with ROUX_MALLOC=compact (glibc's tcache off): less fragmentation, as many steps.
    def mem_run(mode, steps):
        return json.loads(subprocess.run(["target/release/roux", "bench", "transformer", "--config", cfg, "--steps", str(steps)], capture_output=True, text=True,
                                         check=True, env=dict(os.environ, ROUX_MALLOC=mode)).stdout.strip().splitlines()[-1])
    exact = mem_run("exact", 3)
    compact = mem_run("compact", a.steps)
    r_tps = statistics.median(x["tokens_per_s"] for x in r_runs)
    p_tps = statistics.median(x["tokens_per_s"] for x in p_runs)
    r0 = r_runs[0]
    flops = r0["flops_per_token"] * r_tps
    mem = r0["peak_rss"] - r0["base_rss"]
    fs = r0["first_step"]
    rows.append((cfg, r_tps, p_tps, r_tps / p_tps, r0["loss"], p_runs[0]["loss"], flops / 1e9, flops / peak, mem / 2**20, r0["plan_memory"] / 2**20,
                 fs["forward"] / 2**20, r0["plan_activations"] / 2**20, fs["backward"] / 2**20, r0["plan_backward"] / 2**20,
                 (exact["peak_rss"] - exact["base_rss"]) / 2**20, (compact["peak_rss"] - compact["base_rss"]) / 2**20))
print("MFU counts the FLOPs a step executes (Appendix F less the embedding lookup); memory is peak RSS above")
print("start-up (compact: with ROUX_MALLOC=compact, glibc's tcache off; exact: with ROUX_MALLOC=exact, the live")
print("tensors alone); fwd/bwd: the first step's growth in the forward and backward pass beside the plan's terms")
print(f"{'config':<10} {'roux tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'roux loss':>10} {'torch loss':>11} {'GFLOP/s':>8} {'MFU':>6} {'mem MiB':>8} {'plan MiB':>9} {'plan/mem':>9} {'compact':>8} {'plan/cpt':>9} {'exact':>6} {'plan/exact':>10} {'fwd':>5} {'plan':>5} {'bwd':>5} {'plan':>5}")
for r in rows:
    print(f"{r[0]:<10} {r[1]:>11.0f} {r[2]:>12.0f} {r[3]:>6.2f} {r[4]:>10.3f} {r[5]:>11.3f} {r[6]:>8.1f} {r[7]:>6.1%} {r[8]:>8.0f} {r[9]:>9.0f} {r[9] / r[8] - 1:>+9.0%} {r[15]:>8.0f} {r[9] / r[15] - 1:>+9.0%} {r[14]:>6.0f} {r[9] / r[14] - 1:>+10.0%} {r[10]:>5.0f} {r[11]:>5.0f} {r[12]:>5.0f} {r[13]:>5.0f}")
