"""Import time and peak memory: roux's `hf("…")` against transformers' `from_pretrained`.

Makes (once, under bench/cache/) a checkpoint with Qwen2.5-0.5B's configuration (494M parameters,
random weights, bfloat16), then in one run, interleaved, loads it `--reps` times each way into
float32 on the CPU: `roux bench import` and `AutoModelForCausalLM.from_pretrained(…, dtype=float32)`,
each in a fresh process. Reports the median seconds, their ratio (goal: roux ≤ 1.0×) and each
process's peak resident memory above its start against the float32 weights (goal: ≤ 1.3×).

usage: python3 bench/import.py [--roux target/release/roux] [--reps 3] [--out results.json]
"""
import argparse, json, os, statistics, subprocess, sys, time

HERE = os.path.dirname(os.path.abspath(__file__))
CACHE = os.path.join(HERE, "cache", "import-qwen2-0.5b")

LOAD = r"""
import json, sys, time, torch
def hwm():
    return int([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]) * 1024
from transformers import AutoModelForCausalLM
before = hwm()
t = time.perf_counter()
m = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32)
s = time.perf_counter() - t
print(json.dumps({"params": sum(p.numel() for p in m.parameters()), "seconds": s, "peak_before": before, "peak_after": hwm()}))
"""


def make():
    if os.path.exists(os.path.join(CACHE, "model.safetensors")):
        return
    import torch, transformers as T
    cfg = T.Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                        num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6,
                        tie_word_embeddings=True)
    torch.manual_seed(0)
    m = T.Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    m.save_pretrained(CACHE)
    with open(os.path.join(HERE, "cache", "import.roux"), "w") as f:
        f.write('experiment "import" {\n  model base = hf("import-qwen2-0.5b")\n}\n')


def run(cmd):
    o = subprocess.run(cmd, capture_output=True, text=True)
    if o.returncode != 0:
        sys.exit(f"{cmd[0]} failed:\n{o.stderr}")
    return json.loads(o.stdout.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--roux", default=os.path.join(HERE, "..", "target", "release", "roux"))
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--out")
    a = p.parse_args()
    make()
    recipe = os.path.join(HERE, "cache", "import.roux")
    rows = {"roux": [], "transformers": []}
    for _ in range(a.reps):
        rows["roux"].append(run([a.roux, "bench", "import", "--recipe", recipe]))
        rows["transformers"].append(run([sys.executable, "-c", LOAD, CACHE]))
    weights = 4 * rows["roux"][0]["params"]
    out = {"checkpoint": "Qwen2.5-0.5B configuration, bfloat16 safetensors", "params": rows["roux"][0]["params"], "rows": rows}
    print(f"{out['params']:,} parameters; float32 weights {weights / 2**30:.2f} GiB; median of {a.reps}, interleaved")
    for k, rs in rows.items():
        secs = statistics.median(r["seconds"] for r in rs)
        mem = statistics.median((r["peak_after"] - r["peak_before"]) / weights for r in rs)
        out[k] = {"seconds": secs, "peak_over_weights": mem}
        print(f"  {k:<13} {secs:7.2f} s   peak memory above start {mem:.2f}× the weights")
    out["ratio"] = out["roux"]["seconds"] / out["transformers"]["seconds"]
    print(f"roux / transformers: {out['ratio']:.2f}× (goal ≤ 1.0×); roux peak {out['roux']['peak_over_weights']:.2f}× (goal ≤ 1.3×)")
    if a.out:
        json.dump(out, open(a.out, "w"), indent=2)


if __name__ == "__main__":
    main()
