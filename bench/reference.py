"""PyTorch eager reference for `roux bench`: the same transformer (and Switch MoE) as roux builds
for a config, the same init scheme, random-window batches of tiny-shakespeare bytes, AdamW with
decay on matrices, grad clip 1.0. Prints one JSON line: tokens/s, final loss, peak RSS.

    python bench/reference.py CONFIG STEPS [THREADS] [--cuda-bf16] [--batch B] [--compile]

`--cuda-bf16` runs on CUDA under bf16 autocast (float32 master weights, as roux's `precision = bf16`);
`--compile` wraps the model in `torch.compile` and uses the fused CUDA AdamW (what a tuned PyTorch
run does); `gpt2-small` is recipes/gpt2-small.roux's model (vocab 50257, biases, context 1024).
"""
import json, math, resource, sys, time

import torch
import torch.nn.functional as F

CONFIGS = {
    "tiny": dict(d=64, layers=2, heads=4, ctx=128, batch=32, experts=0),
    "small": dict(d=256, layers=4, heads=4, ctx=128, batch=32, experts=0),
    "medium": dict(d=512, layers=8, heads=8, ctx=256, batch=16, experts=0),
    "switch-8": dict(d=128, layers=4, heads=4, ctx=128, batch=32, experts=8),
    "switch-64": dict(d=128, layers=4, heads=4, ctx=128, batch=32, experts=64),
    "gpt2-small": dict(d=768, layers=12, heads=12, ctx=1024, batch=8, experts=0, vocab=50257, bias=True),
}


class Block(torch.nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        d, L = c["d"], c["layers"]
        self.heads = c["heads"]
        bias = c.get("bias", False)
        self.norm1 = torch.nn.LayerNorm(d, bias=bias)
        self.q, self.k, self.v, self.o = (torch.nn.Linear(d, d, bias=bias) for _ in range(4))
        self.norm2 = torch.nn.LayerNorm(d, bias=bias)
        self.experts = c["experts"] if moe else 0
        n = max(self.experts, 1)
        self.w1 = torch.nn.Parameter(torch.randn(n, 4 * d, d) * 0.02)
        self.w2 = torch.nn.Parameter(torch.randn(n, d, 4 * d) * 0.02 / math.sqrt(2 * L))
        if moe:
            self.router = torch.nn.Linear(d, self.experts, bias=False)
        for lin in (self.q, self.k, self.v):
            torch.nn.init.normal_(lin.weight, std=0.02)
        torch.nn.init.normal_(self.o.weight, std=0.02 / math.sqrt(2 * L))

    def attn(self, x):
        B, T, d = x.shape
        split = lambda y: y.view(B, T, self.heads, d // self.heads).transpose(1, 2)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)), is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, d))

    def ffn(self, x):
        if not self.experts:
            return F.gelu(x @ self.w1[0].t(), approximate="tanh") @ self.w2[0].t()
        # Switch: top-1, capacity 1.25·N/E, a plain loop over experts; balance loss 0.01.
        B, T, d = x.shape
        xf = x.reshape(-1, d)
        probs = self.router(xf.float()).softmax(-1)
        gate, idx = probs.max(-1)
        cap = math.ceil(xf.shape[0] / self.experts * 1.25)
        out = torch.zeros_like(xf)
        for e in range(self.experts):
            tok = (idx == e).nonzero().squeeze(1)[:cap]
            if tok.numel():
                h = F.gelu(xf[tok] @ self.w1[e].t(), approximate="tanh") @ self.w2[e].t()
                out = out.index_add(0, tok, h * gate[tok, None])
        f = torch.bincount(idx, minlength=self.experts).float() / idx.numel()
        self.aux = 0.01 * self.experts * (f * probs.mean(0)).sum()
        return out.view(B, T, d)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class Model(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.vocab = c.get("vocab", 256)
        self.tok = torch.nn.Embedding(self.vocab, c["d"])
        self.pos = torch.nn.Embedding(c["ctx"], c["d"])
        torch.nn.init.normal_(self.tok.weight, std=0.02)
        torch.nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = torch.nn.ModuleList(Block(c, c["experts"] and i % 2 == 1) for i in range(c["layers"]))
        self.norm = torch.nn.LayerNorm(c["d"], bias=c.get("bias", False))

    def forward(self, x, y):
        h = self.tok(x) + self.pos.weight[: x.shape[1]]
        for b in self.blocks:
            h = b(h)
        logits = self.norm(h) @ self.tok.weight.t()
        loss = F.cross_entropy(logits.reshape(-1, self.vocab).float(), y.reshape(-1))
        aux = sum(getattr(b, "aux", 0.0) for b in self.blocks)
        return loss, loss + aux


def main():
    import argparse

    a = argparse.ArgumentParser()
    a.add_argument("config", choices=CONFIGS)
    a.add_argument("steps", type=int)
    a.add_argument("threads", type=int, nargs="?", default=torch.get_num_threads())
    a.add_argument("--cuda-bf16", action="store_true")
    a.add_argument("--batch", type=int)
    a.add_argument("--compile", action="store_true")
    args = a.parse_args()
    name, steps = args.config, args.steps
    c = dict(CONFIGS[name], **({"batch": args.batch} if args.batch else {}))
    torch.set_num_threads(args.threads)
    dev = "cuda" if args.cuda_bf16 else "cpu"
    torch.manual_seed(0)
    data = torch.frombuffer(bytearray(open("data/tinyshakespeare.txt", "rb").read()), dtype=torch.uint8).long()
    model = Model(c).to(dev)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    fused = {"fused": True} if args.compile and dev == "cuda" else {}
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.95), **fused)
    if args.compile:
        model = torch.compile(model)
    g = torch.Generator().manual_seed(1)

    def step():
        o = torch.randint(0, data.numel() - c["ctx"] - 1, (c["batch"],), generator=g)
        win = torch.stack([data[i : i + c["ctx"] + 1] for i in o.tolist()]).to(dev)
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.cuda_bf16):
            ce, total = model(win[:, :-1], win[:, 1:])
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return ce.item()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    if args.cuda_bf16:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"impl": "pytorch" + ("+compile" if args.compile else ""), "config": name, "tokens_per_s": steps * c["batch"] * c["ctx"] / dt, "loss": loss, "peak_rss": rss, "threads": torch.get_num_threads(), "batch": c["batch"], "device": dev}))


if __name__ == "__main__":
    main()
