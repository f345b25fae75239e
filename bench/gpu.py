"""Issue 8 on a GPU: GPT-2 small (recipes/gpt2-small.roux) trained in bf16 by roux, beside the
PyTorch eager reference of the same model (bench/reference.py --cuda-bf16), with MFU against the
card's datasheet bf16 peak and against a bf16 matmul peak measured now.

    python3 bench/gpu.py [--batches 8,16,32] [--steps 300] [--out DIR] [--unpadded] [--profile]

`--unpadded` also runs the largest batch with ROUX_PAD_VOCAB=0 (the head matmul at vocab 50257
instead of 50304); `--profile` writes the PyTorch reference's top CUDA kernels to DIR/profile.txt.

Needs a release build (`target/release/roux`) and a CUDA torch 2.11.0 in this Python; sets
LD_LIBRARY_PATH to torch's lib/ for roux. Prints a table last; writes the runs' metrics to --out.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, time

import torch

p = argparse.ArgumentParser()
p.add_argument("--batches", default="8,16,32")
p.add_argument("--steps", type=int, default=300)
p.add_argument("--ref-steps", type=int, default=50)
p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
p.add_argument("--unpadded", action="store_true")
p.add_argument("--profile", action="store_true")
a = p.parse_args()
os.makedirs(a.out, exist_ok=True)
env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(os.path.dirname(torch.__file__), "lib"))

name = torch.cuda.get_device_name(0)
# Dense bf16 tensor-core peaks from NVIDIA's datasheets (SXM parts; the PCIe H100 is lower).
DATASHEET = {"H100": 989e12, "H200": 989e12}
datasheet = next((v for k, v in DATASHEET.items() if k in name), None)


def matmul_peak(n=8192, reps=20):
    x, y = torch.randn(n, n, device="cuda", dtype=torch.bfloat16), torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        x @ y
        e.record()
        torch.cuda.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n**3 / statistics.median(times)


peak = matmul_peak()
print(f"{name}: bf16 matmul 8192³ {peak / 1e12:.0f} TFLOP/s measured, datasheet {datasheet and datasheet / 1e12:.0f}", flush=True)

rows = []
batches = [int(x) for x in a.batches.split(",")]
variants = [(b, True) for b in batches] + ([(max(batches), False)] if a.unpadded else [])
for b, pad in variants:
    runs = f"/tmp/roux-gpu-runs-{b}-{pad}"
    shutil.rmtree(runs, ignore_errors=True)
    cmd = ["target/release/roux", "-q", "run", "recipes/gpt2-small.roux", "--out", runs, "--set", f"pretrain.batch={b}", "--set", f"pretrain.steps={a.steps}", "--set", "pretrain.log_every=10", "--set", f"pretrain.checkpoint_every={a.steps}"]
    t = time.time()
    r = subprocess.run(cmd, env=dict(env, ROUX_PAD_VOCAB="1" if pad else "0"), capture_output=True, text=True)
    wall = time.time() - t
    if r.returncode != 0:
        print("roux failed:", " ".join(cmd), r.stdout[-3000:], r.stderr[-3000:], sep="\n")
        continue
    d = f"{runs}/gpt2-small/pretrain"
    rep = json.load(open(f"{d}/report.json"))
    m = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    tag = f"b{b}" + ("" if pad else "-unpadded")
    shutil.copy(f"{d}/metrics.jsonl", f"{a.out}/metrics-{tag}.jsonl")
    flops_per_token = rep["model_flops_per_s"] / rep["tokens_per_s"]
    tps = statistics.median(x["tokens_per_s"] for x in m[1:] if "tokens_per_s" in x)  # training windows, warm-up window left out
    ref_tps = float("nan")
    if pad:
        ref = subprocess.run([sys.executable, "bench/reference.py", "gpt2-small", str(a.ref_steps), "--cuda-bf16", "--batch", str(b)], capture_output=True, text=True)
        if ref.returncode == 0:
            ref_tps = json.loads(ref.stdout.strip().splitlines()[-1])["tokens_per_s"]
        else:
            print("reference failed:", ref.stderr[-2000:])
    rows.append((tag, tps, ref_tps, flops_per_token, rep["final_loss"], rep.get("final_val_loss"), wall))
    print(f"{tag}: roux {tps:.0f} tok/s, PyTorch {ref_tps:.0f} tok/s, loss {rep['final_loss']:.3f}, wall {wall:.0f} s", flush=True)

if a.profile:
    # Where an eager step's GPU time goes, by kernel, on the PyTorch reference (same kernels).
    prof = subprocess.run([sys.executable, "-c", f"""
import sys, torch
sys.argv = ["reference.py", "gpt2-small", "1", "--cuda-bf16", "--batch", "{max(batches)}"]
sys.path.insert(0, "bench")
import reference
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as p:
    reference.main()
print(p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70))
"""], capture_output=True, text=True)
    open(f"{a.out}/profile.txt", "w").write(prof.stdout + prof.stderr[-3000:])
    print(prof.stdout[-4000:])

print(f"\n{name}, GPT-2 small (124.4M params, context 1024), bf16 compute, float32 master weights, {a.steps} steps;")
print("MFU counts the FLOPs a step executes (Appendix F less the embedding lookup: 855.8M per token)")
print(f"{'run':>12} {'roux tok/s':>11} {'torch tok/s':>12} {'ratio':>6} {'TFLOP/s':>8} {'MFU(sheet)':>11} {'MFU(meas)':>10} {'loss':>6} {'val':>6}")
for tag, tps, ref_tps, fpt, loss, val, wall in rows:
    f = fpt * tps
    sheet = f"{f / datasheet:.1%}" if datasheet else "-"
    print(f"{tag:>12} {tps:>11.0f} {ref_tps:>12.0f} {tps / ref_tps:>6.2f} {f / 1e12:>8.1f} {sheet:>11} {f / peak:>10.1%} {loss:>6.3f} {val or float('nan'):>6.3f}")
