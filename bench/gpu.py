"""Issue 19 on one GPU, in one run: GPT-2 small (recipes/gpt2-small.roux) trained in bf16 by roux
beside PyTorch eager and torch.compile on the same model; roux's own ablations (AdamW update, host
reads per step); a profile of roux's steps by kernel; Switch with 64 experts against the dense model
of the same active parameters; a LoRA SFT stage and a PPO stage in float32 and bf16; validation loss
after 300 steps in float32 and bf16; `nccl`: the same GPT-2 steps as a torchrun group of one process
(NCCL all-reduces every step's gradients) against plain CUDA (issue 18's overhead, goal ≤ 3%).

    python3 bench/gpu.py [--out DIR] [--only dense,ref,compile,profile,switch,posttrain,loss,ablate,nccl]

Needs a release build (`target/release/roux`) and a CUDA torch 2.11.0 in this Python; sets
LD_LIBRARY_PATH to torch's lib/ for roux. Each part runs on its own (a failure is printed and the
rest go on); a table is printed last and everything is written to DIR/gpu-results.json.
"""
import argparse, json, os, random, shutil, statistics, subprocess, sys, time
from collections import defaultdict

import torch

p = argparse.ArgumentParser()
p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
p.add_argument("--only", default="dense,ref,profile,switch,posttrain,loss,ablate,compile,nccl")
p.add_argument("--baseline", help="gpu-results.json of an earlier run on the same kind of card: its eager and torch.compile numbers stand in when --only leaves ref and compile out")
p.add_argument("--steps", type=int, default=200)
p.add_argument("--switch-batches", type=lambda v: [int(x) for x in v.split(",")], default=[16, 32])
p.add_argument("--deadline", type=float, default=1e9, help="start no part after this many seconds")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
parts = a.only.split(",")
env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(os.path.dirname(torch.__file__), "lib"))
ROUX = "target/release/roux"
name = torch.cuda.get_device_name(0)
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts).
datasheet = 989e12 if ("H100" in name or "H200" in name) else None
results = {"device": name, "datasheet_bf16": datasheet}
log = open(os.path.join(a.out, "log.txt"), "w")


def say(*xs):
    print(*xs, flush=True)
    print(*xs, file=log, flush=True)


def save():
    json.dump(results, open(os.path.join(a.out, "gpu-results.json"), "w"), indent=1)


def matmul_peak(n=8192, reps=20):
    x, y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(reps):
        x @ y
    e.record()
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (s.elapsed_time(e) / 1e3)


def roux(recipe, tag, sets, extra_env=None, timeout=240, args=(), launcher=()):
    """Run a recipe into a fresh directory (under `launcher`, e.g. torchrun); (runs dir, wall
    seconds) or None."""
    runs = f"/tmp/roux-gpu/{tag}"
    shutil.rmtree(runs, ignore_errors=True)
    cmd = [*launcher, ROUX, "-q", "run", recipe, "--out", runs, *args]
    for s in sets:
        cmd += ["--set", s]
    t = time.time()
    try:
        r = subprocess.run(cmd, env=dict(env, **(extra_env or {})), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        say(f"{tag}: timed out after {timeout} s")
        return None
    wall = time.time() - t
    print(f"== {tag} ({wall:.0f} s): {' '.join(cmd)}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}", file=log, flush=True)
    if r.returncode != 0:
        say(f"{tag}: roux failed ({r.returncode}):", r.stderr[-1500:])
        return None
    return runs, wall


def train_stats(stage_dir):
    rep = json.load(open(f"{stage_dir}/report.json"))
    m = [json.loads(l) for l in open(f"{stage_dir}/metrics.jsonl")]
    tps = [x["tokens_per_s"] for x in m[1:] if "tokens_per_s" in x] or [rep["tokens_per_s"]]
    return rep, statistics.median(tps)


def reference(batch, steps, compile_=False, timeout=400):
    cmd = [sys.executable, "bench/reference.py", "gpt2-small", str(steps), "--cuda-bf16", "--batch", str(batch)] + (["--compile"] if compile_ else [])
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        say("reference timed out", cmd)
        return None
    if r.returncode != 0:
        say("reference failed:", r.stderr[-2000:])
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])["tokens_per_s"]


def gpt2(tag, batch, steps, sets=(), extra_env=None, args=(), launcher=()):
    base = [f"pretrain.batch={batch}", f"pretrain.steps={steps}", "pretrain.log_every=10", f"pretrain.checkpoint_every={steps}", f"pretrain.eval_every={steps}", "pretrain.eval_batches=4"]
    got = roux("recipes/gpt2-small.roux", tag, base + list(sets), extra_env, args=args, launcher=launcher)
    if not got:
        return None
    rep, tps = train_stats(f"{got[0]}/gpt2-small/pretrain")
    shutil.rmtree(got[0], ignore_errors=True)  # the disk is not large: runs go once read
    fpt = rep["model_flops_per_s"] / rep["tokens_per_s"]
    row = {"tokens_per_s": tps, "tflops": fpt * tps / 1e12, "flops_per_token": fpt, "val_loss": rep.get("final_val_loss"), "wall": got[1]}
    if datasheet:
        row["mfu_datasheet"] = fpt * tps / datasheet
    say(f"{tag}: {tps:.0f} tok/s, {row['tflops']:.1f} TFLOP/s" + (f" ({row['mfu_datasheet']:.1%} of the datasheet)" if datasheet else "") + f", val {row['val_loss']}")
    return row


T0 = time.time()
if a.baseline:
    base = json.load(open(a.baseline))
    if base.get("device") == name:
        for k in ("eager_b32", "compile_b32"):
            if base.get(k):
                results[k] = base[k]
                results[k + "_from"] = a.baseline


def part(label, f):
    if label not in parts:
        return
    if time.time() - T0 > a.deadline:
        say(f"[{label}: skipped, past the --deadline of {a.deadline:.0f} s]")
        return
    t = time.time()
    try:
        f()
    except Exception as e:  # one part's failure must not lose the others' numbers
        say(f"{label}: failed: {e!r}")
    say(f"[{label}: {time.time() - t:.0f} s]")
    save()


def peak():
    results["matmul_peak"] = matmul_peak()
    say(f"{name}: bf16 matmul 8192³ {results['matmul_peak'] / 1e12:.0f} TFLOP/s measured, datasheet {datasheet and datasheet / 1e12:.0f}")


def dense():
    results["roux_b32"] = gpt2("roux-b32", 32, a.steps)
    # The memory guard: a batch that cannot fit is refused before anything is allocated.
    r = subprocess.run([ROUX, "-q", "run", "recipes/gpt2-small.roux", "--out", "/tmp/roux-gpu/guard", "--set", "pretrain.batch=4096"], env=env, capture_output=True, text=True, timeout=120)
    results["guard"] = r.stderr.strip()[-600:]
    say(f"guard (batch 4096, exit {r.returncode}): {results['guard']}")


def ref():
    results["eager_b32"] = reference(32, 30)
    say(f"eager b32: {results['eager_b32']}")


def compiled():
    results["compile_b32"] = reference(32, 50, compile_=True)
    say(f"torch.compile b32: {results['compile_b32']}")


def ablate():
    # The update through libtorch's elementwise ops instead of the fused kernel; a host read every
    # step (what skipping non-finite steps needs) instead of at log points only; each weight cast
    # at its use instead of once per step into a flat buffer.
    results["roux_b32_adamw_ops"] = gpt2("roux-b32-adamw-ops", 32, 100, extra_env={"ROUX_ADAMW": "ops"})
    results["roux_b32_sync_each_step"] = gpt2("roux-b32-sync", 32, 100, sets=["pretrain.on_nonfinite=skip", "pretrain.max_skips=10"])
    results["roux_b32_cast_each_use"] = gpt2("roux-b32-cast-each-use", 32, 100, extra_env={"ROUX_SHADOW": "0"})


def profile_run(recipe, tag, exp, sets, steps):
    """Profile steps `steps` of a run; the top kernels by GPU time to DIR/<tag>.txt."""
    got = roux(recipe, tag, sets, args=["--profile", steps])
    if not got:
        return
    trace = json.load(open(f"{got[0]}/{exp}/pretrain/trace.json"))
    kernels = defaultdict(lambda: [0.0, 0])
    lo, hi = float("inf"), 0.0
    for e in trace["traceEvents"]:
        if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e:
            k = kernels[e["name"][:110]]
            k[0] += e["dur"]
            k[1] += 1
            lo, hi = min(lo, e["ts"]), max(hi, e["ts"] + e["dur"])
    busy = sum(v[0] for v in kernels.values())
    lines = [f"{tag}, steps {steps}: GPU busy {busy / 1e3:.1f} ms of a {(hi - lo) / 1e3:.1f} ms span ({busy / max(hi - lo, 1):.1%})", f"{'ms':>8} {'%':>6} {'calls':>6}  kernel"]
    for n, (d, c) in sorted(kernels.items(), key=lambda kv: -kv[1][0])[:45]:
        lines.append(f"{d / 1e3:>8.2f} {d / busy:>6.1%} {c:>6}  {n}")
    open(os.path.join(a.out, f"{tag}.txt"), "w").write("\n".join(lines) + "\n")
    shutil.rmtree(got[0], ignore_errors=True)
    results[f"{tag}_busy"] = busy / max(hi - lo, 1)
    say("\n".join(lines[:22]))


def profile():
    profile_run("recipes/gpt2-small.roux", "profile-gpt2-b32", "gpt2-small", ["pretrain.batch=32", "pretrain.steps=40", "pretrain.eval_every=40", "pretrain.eval_batches=1", "pretrain.checkpoint_every=40"], "31..33")


def switch():
    for b in a.switch_batches:
        sets = [f"pretrain.batch={b}", "pretrain.steps=40", "pretrain.eval_every=40", "pretrain.checkpoint_every=40", "pretrain.keep=1"]
        got = gpt2(f"dense-b{b}", b, 40)
        row = {"dense_tokens_per_s": got and got["tokens_per_s"]}
        sw = roux("bench/gpu-switch64.roux", f"switch64-b{b}", sets)
        if sw:
            _, tps = train_stats(f"{sw[0]}/gpu-switch64/pretrain")
            shutil.rmtree(sw[0], ignore_errors=True)
            row["switch_tokens_per_s"] = tps
            if got:
                row["step_ratio"] = got["tokens_per_s"] / tps
        results[f"switch_b{b}"] = row
        say(f"switch b{b}: {row}")
    profile_run("bench/gpu-switch64.roux", "profile-switch64-b16", "gpu-switch64", ["pretrain.batch=16", "pretrain.steps=20", "pretrain.eval_every=20", "pretrain.eval_batches=1", "pretrain.checkpoint_every=20", "pretrain.keep=1"], "14..16")


def posttrain():
    random.seed(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa"]
    with open("bench/gpu-instructions.jsonl", "w") as f:
        for _ in range(512):
            w = " ".join(random.choice(words) for _ in range(60))
            f.write(json.dumps({"prompt": f"Repeat the words: {w[:120]}", "response": w}) + "\n")
    row = {}
    for prec in ("fp32", "bf16"):
        got = roux("bench/gpu-posttrain.roux", f"post-{prec}", [f"sft.precision={prec}", f"rm.precision={prec}", f"rl.precision={prec}"], timeout=400)
        if not got:
            continue
        d = f"{got[0]}/gpu-posttrain"
        _, sft_tps = train_stats(f"{d}/sft")
        ppo = [json.loads(l) for l in open(f"{d}/rl/metrics.jsonl")]
        ppo_s = statistics.median(x["step_seconds"] for x in ppo[1:])
        row[prec] = {"sft_tokens_per_s": sft_tps, "ppo_step_seconds": ppo_s, "sft_wall": json.load(open(f"{d}/sft/report.json"))["wall_seconds"], "ppo_wall": json.load(open(f"{d}/rl/report.json"))["wall_seconds"]}
        shutil.rmtree(got[0], ignore_errors=True)
        say(f"posttrain {prec}: {row[prec]}")
    if "fp32" in row and "bf16" in row:
        row["sft_speedup"] = row["bf16"]["sft_tokens_per_s"] / row["fp32"]["sft_tokens_per_s"]
        row["ppo_speedup"] = row["fp32"]["ppo_step_seconds"] / row["bf16"]["ppo_step_seconds"]
    results["posttrain"] = row


def loss():
    row = {}
    for prec in ("fp32", "bf16"):
        r = gpt2(f"loss-{prec}", 8, 300, sets=[f"pretrain.precision={prec}", "pretrain.eval_batches=20"])
        row[prec] = r and r["val_loss"]
    if row.get("fp32") and row.get("bf16"):
        row["relative_difference"] = abs(row["bf16"] - row["fp32"]) / row["fp32"]
    results["val_loss_300"] = row
    say(f"val loss after 300 steps (b8): {row}")


def nccl():
    # torchrun with one process: roux joins a process group of one and, on the GPU, all-reduces
    # every step's gradients (and the loss) through NCCL. Interleaved, twice each; medians.
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--no-python", "--standalone", "--nproc-per-node", "1"]
    plain, group = [], []
    for i in range(2):
        plain.append(gpt2(f"plain-{i}", 32, 100))
        group.append(gpt2(f"nccl-{i}", 32, 100, launcher=torchrun))
    p, g = [r["tokens_per_s"] for r in plain if r], [r["tokens_per_s"] for r in group if r]
    if p and g:
        results["nccl_one_rank"] = {"plain_tokens_per_s": statistics.median(p), "nccl_tokens_per_s": statistics.median(g), "overhead": 1 - statistics.median(g) / statistics.median(p)}
        say(f"1-rank NCCL vs plain CUDA: {results['nccl_one_rank']}")


try:
    peak()
except Exception as e:
    say(f"peak: failed: {e!r}")
for label, f in [("dense", dense), ("nccl", nccl), ("profile", profile), ("ref", ref), ("compile", compiled), ("posttrain", posttrain), ("loss", loss), ("switch", switch), ("ablate", ablate)]:
    part(label, f)

# The table.
say(f"\n{name}; GPT-2 small (124.4M params, context 1024), bf16 compute, float32 master weights")
if results.get("matmul_peak"):
    say(f"bf16 matmul peak measured {results['matmul_peak'] / 1e12:.0f} TFLOP/s; datasheet {datasheet and datasheet / 1e12:.0f}")
say(f"{'run':>26} {'tok/s':>9} {'TFLOP/s':>8} {'MFU(sheet)':>10} {'val':>6}")
for k in ("roux_b32", "roux_b64", "roux_b32_adamw_ops", "roux_b32_sync_each_step", "roux_b32_cast_each_use"):
    r = results.get(k)
    if r:
        say(f"{k:>26} {r['tokens_per_s']:>9.0f} {r['tflops']:>8.1f} {r.get('mfu_datasheet', float('nan')):>10.1%} {r['val_loss'] or float('nan'):>6.3f}")
fpt = (results.get("roux_b32") or {}).get("flops_per_token")
for k in ("eager_b32", "compile_b32"):
    v = results.get(k)
    if v and fpt:
        say(f"{k:>26} {v:>9.0f} {fpt * v / 1e12:>8.1f} {(fpt * v / datasheet if datasheet else float('nan')):>10.1%}")
if results.get("roux_b32") and results.get("compile_b32"):
    say(f"roux / torch.compile: {results['roux_b32']['tokens_per_s'] / results['compile_b32']:.2f}×; roux / eager: {results['roux_b32']['tokens_per_s'] / (results.get('eager_b32') or float('nan')):.2f}×")
for k in ("switch_b16", "switch_b32", "posttrain", "val_loss_300", "guard", "nccl_one_rank"):
    if k in results:
        say(f"{k}: {json.dumps(results[k])}")
save()
