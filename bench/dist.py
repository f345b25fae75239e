"""Data parallel on these cores: tokens/s of a training stage as 2 Gloo processes (`roux run --nproc 2`)
against 1 process, on the same machine and the same global batch, interleaved, `--reps` times each.

Three ways on the same cores: 1 process on one thread, 1 process on every core (libtorch's threads),
and 2 processes on one thread each. Against the first, the ratio is data parallel's scaling on two
cores; against the second, whether 2 processes use the same 2 cores better than one process's threads.
The point of 2 processes on a CPU is correctness (tests/dist.rs); the numbers say what they cost.
`--moe` trains a Switch MoE instead and adds a fourth way: 2 processes with the experts divided
(`expert_parallel = 2`: logits gathered, rows exchanged by all-to-all).

usage: python3 bench/dist.py [--roux target/release/roux] [--reps 3] [--moe] [--out results.json]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

RECIPE = """experiment "bench-dist" {
  seed = 1
  data corpus = text("../../data/tinyshakespeare.txt") { context = 128 }
  model lm = transformer { vocab = 256, context = 128, d_model = 128, layers = 4, heads = 4 }
  stage pretrain = train(lm, corpus) { steps = 60, batch = 16, eval_every = 60, eval_batches = 1, log_every = 20 }
}
"""

MOE = RECIPE.replace("heads = 4 }", "heads = 4, bias = false,\n    ffn = moe { experts = 8, every = 2, router = switch { capacity_factor = 1.25 } } }")


def run(roux, recipe, out, nproc, threads, extra=()):
    env = dict(os.environ, ROUX_QUIET="1", OMP_NUM_THREADS=str(threads))
    cmd = [roux, "run", recipe, "--out", out, "--fresh"] + (["--nproc", str(nproc)] if nproc > 1 else []) + list(extra)
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    with open(os.path.join(out, "bench-dist", "pretrain", "report.json")) as f:
        return json.load(f)["tokens_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--roux", default=os.path.join(ROOT, "target", "release", "roux"))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--moe", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()
    recipe = os.path.join(HERE, "cache", "dist-moe.roux" if a.moe else "dist.roux")
    os.makedirs(os.path.dirname(recipe), exist_ok=True)
    with open(recipe, "w") as f:
        f.write(MOE if a.moe else RECIPE)
    cores = os.cpu_count()
    one, threads, two, ep = [], [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.reps):
            one.append(run(a.roux, recipe, os.path.join(tmp, "one"), 1, 1))
            threads.append(run(a.roux, recipe, os.path.join(tmp, "threads"), 1, cores))
            two.append(run(a.roux, recipe, os.path.join(tmp, "two"), 2, 1))
            if a.moe:
                ep.append(run(a.roux, recipe, os.path.join(tmp, "ep"), 2, 1, ["--set", "pretrain.expert_parallel=2"]))
    res = {"cores": cores, "recipe": "switch moe, 8 experts" if a.moe else "dense", "one_process_one_thread_tokens_per_s": statistics.median(one),
           "one_process_all_cores_tokens_per_s": statistics.median(threads),
           "two_gloo_processes_tokens_per_s": statistics.median(two)}
    res["ratio_to_one_thread"] = res["two_gloo_processes_tokens_per_s"] / res["one_process_one_thread_tokens_per_s"]
    res["ratio_to_all_cores"] = res["two_gloo_processes_tokens_per_s"] / res["one_process_all_cores_tokens_per_s"]
    print(f"1 process, 1 thread: {res['one_process_one_thread_tokens_per_s']:.0f} tok/s; "
          f"1 process, {cores} threads: {res['one_process_all_cores_tokens_per_s']:.0f} tok/s; "
          f"2 Gloo processes: {res['two_gloo_processes_tokens_per_s']:.0f} tok/s "
          f"({res['ratio_to_one_thread']:.2f}× the first, {res['ratio_to_all_cores']:.2f}× the second); median of {a.reps}")
    if ep:
        res["two_processes_expert_parallel_tokens_per_s"] = statistics.median(ep)
        res["expert_parallel_ratio_to_data_parallel"] = res["two_processes_expert_parallel_tokens_per_s"] / res["two_gloo_processes_tokens_per_s"]
        print(f"2 processes, experts divided: {res['two_processes_expert_parallel_tokens_per_s']:.0f} tok/s "
              f"({res['expert_parallel_ratio_to_data_parallel']:.2f}× data parallel)")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
