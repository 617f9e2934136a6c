"""Per-method cost of one training step through the gradient engine, relative to EW.

Setups (issue 2 §5):
  (a) ``resnet18``: torchvision ResNet-18 (random init) hard-parameter-sharing encoder,
      3 linear heads, batch 32, 64×64 inputs, Adam, 2 threads.
  (b) ``celeba40``: the FAMO CelebA 9-layer CNN shape with 40 linear heads, batch 32,
      64×64 inputs.

Every (method, level) runs in its own subprocess so that peak RSS (ru_maxrss) is that
method's alone, in ``--rounds`` rounds whose order alternates (forward, then reversed), so
slow drift of the machine hits every method alike. The table reports the **median** over
all timed steps of all rounds (``--steps`` per round after ``--warmup``; the defaults give
2 × 6 = 12 timed steps per row) and, beside it, the minimum; × EW ratios are medians over
medians of the same run. Run by hand, not in CI:

    .venv/bin/python bench/engine_speed.py --setup resnet18
    .venv/bin/python bench/engine_speed.py --setup celeba40 --steps 3 --rounds 1
    .venv/bin/python bench/engine_speed.py --jacobian   # loop vs batched Jacobian
    .venv/bin/python bench/engine_speed.py --solvers     # Nash-MTL and CAGrad/IMGrad solve times
    .venv/bin/python bench/engine_speed.py --interleaved --steps 12   # one process, round-robin
    .venv/bin/python bench/engine_speed.py --setup segnet_nyuv2 --device cuda --precision bf16

``--device cuda`` times with device synchronisation and reports peak GPU memory;
``--precision bf16|fp16`` runs the forward pass under autocast (fp16 with the engine's loss
scaler); ``--setup segnet_nyuv2`` is SegNet-MTAN on one 288 × 384 NYUv2-shaped batch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import methods  # noqa: E402


class HPS(nn.Module):
    def __init__(self, encoder: nn.Module, rep_dim: int, num_tasks: int, out_dim: int):
        super().__init__()
        self.encoder = encoder
        self.heads = nn.ModuleList([nn.Linear(rep_dim, out_dim) for _ in range(num_tasks)])

    def forward(self, x):
        rep = self.encoder(x)
        return rep, [h(rep) for h in self.heads]


def _conv(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


def build(setup: str):
    if setup == "resnet18":
        import torchvision

        enc = torchvision.models.resnet18(weights=None)
        enc.fc = nn.Identity()
        return HPS(enc, 512, 3, 10), 3, 10
    if setup == "celeba40":
        enc = nn.Sequential(
            *_conv(3, 64), nn.MaxPool2d(2), *_conv(64, 128), *_conv(128, 128), nn.MaxPool2d(2),
            *_conv(128, 256), *_conv(256, 256), nn.MaxPool2d(2), *_conv(256, 512), *_conv(512, 512),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
            nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(),
        )
        return HPS(enc, 512, 40, 1), 40, 1
    raise SystemExit(f"unknown setup {setup}")


def workload(setup: str, device: torch.device):
    """(model, T, shared params, task params, losses_fn) for a setup; losses_fn() returns
    (Tensor[T] losses, representation or None) for one fixed batch."""
    if setup == "segnet_nyuv2":
        return _segnet_workload(device)
    model, T, out = build(setup)
    model.to(device)
    x = torch.randn(32, 3, 64, 64, device=device)
    ys = (torch.randint(0, 10, (32, T)) if out > 1 else torch.randint(0, 2, (32, T)).float()).to(device)

    def losses_fn():
        rep, preds = model(x)
        if out > 1:
            ls = [nn.functional.cross_entropy(p, ys[:, t]) for t, p in enumerate(preds)]
        else:
            ls = [nn.functional.binary_cross_entropy_with_logits(p[:, 0], ys[:, t]) for t, p in enumerate(preds)]
        return torch.stack(ls).float(), rep

    heads = [p for h in model.heads for p in h.parameters()]
    return model, T, list(model.encoder.parameters()), heads, losses_fn


def _segnet_workload(device: torch.device):
    """SegNet-MTAN on one NYUv2-shaped batch (2 × 3 × 288 × 384, the references' batch
    size), read through the benchmark from a fixture in the published layout."""
    import tempfile

    import envs
    from envs.fixtures.dense import write_nyuv2

    root = tempfile.mkdtemp(prefix="mtlx-bench-nyuv2-")
    write_nyuv2(root, n_train=2, n_test=2, size=(288, 384))
    bench = envs.create("nyuv2", root=root)
    model = bench.build_model().to(device)
    batch = bench.to_device(next(iter(bench.make_loader("train", 2, shuffle=False, seed=0))), device)
    heads = [p for t in bench.tasks for p in model.task_parameters(t)]

    def losses_fn():
        fw = bench.forward_losses(model, batch)
        return fw.losses.float(), fw.rep

    return model, len(bench.tasks), list(model.shared_parameters()), heads, losses_fn


def one(setup: str, name: str, level: str, steps: int, warmup: int, jac_mode: str,
        device: str = "cpu", precision: str = "fp32") -> dict:
    from methods.precision import LossScaler

    torch.set_num_threads(2)
    torch.manual_seed(0)
    dev = torch.device(device)
    model, T, shared, heads, losses_fn = workload(setup, dev)
    method = methods.create(name, T)
    opt = torch.optim.Adam(list(model.parameters()) + list(method.parameters()), lr=1e-4)
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = LossScaler() if precision == "fp16" else None

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    times = []
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    for i in range(warmup + steps):
        sync()
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            losses, rep = losses_fn()
        methods.backward(method, losses, shared, heads, rep=rep, level=level,
                         jacobian_mode=jac_mode, scaler=scaler)
        opt.step()
        if method.uses_after_step:
            with torch.no_grad(), torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
                method.after_step(losses_fn()[0])
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    mem = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"method": name, "level": level, "times": times, "peak_rss_mb": mem}


def interleaved(setup: str, steps: int, warmup: int, only: list[str] | None) -> None:
    """All (method, level) cases in one process, one timed step each per round, round after
    round: on a machine shared with other work the slowdowns then fall on every method
    alike, so the × EW ratios (medians over rounds) stay meaningful. No memory column."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    model, T, shared, heads, losses_fn = workload(setup, torch.device("cpu"))
    todo = [c for c in cases() if only is None or c[0] in only or c[0] == "ew"]
    ms = {c: methods.create(c[0], T) for c in todo}
    opt = torch.optim.Adam(model.parameters(), lr=1e-5)
    times: dict[tuple[str, str], list[float]] = {c: [] for c in todo}
    for r in range(warmup + steps):
        for c in todo if r % 2 == 0 else todo[::-1]:
            m = ms[c]
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            losses, rep = losses_fn()
            methods.backward(m, losses, shared, heads, rep=rep, level=c[1])
            opt.step()
            if m.uses_after_step:
                with torch.no_grad():
                    m.after_step(losses_fn()[0])
            if r >= warmup:
                times[c].append(time.perf_counter() - t0)
    ew = statistics.median(times[("ew", "param")])
    print(f"\nsetup={setup}, interleaved in one process: {steps} rounds (after {warmup} "
          f"warm-up), every case once per round, order alternating; torch={torch.__version__}\n")
    print("| method | level | median s/step | × EW (median) | min s/step |")
    print("|---|---|---|---|---|")
    for (name, level), ts in sorted(times.items(), key=lambda kv: (kv[0][1], statistics.median(kv[1]))):
        med = statistics.median(ts)
        print(f"| {name} | {level} | {med:.3f} | {med / ew:.2f} | {min(ts):.3f} |")


def cases():
    out = []
    for name in methods.available():
        cls = methods.get_class(name)
        if cls.requires_model:
            continue  # CSO needs a per-task-BatchNorm model; benchmarked with its benchmark
        if not cls.requires_grads:
            out.append((name, "param"))
            continue
        if cls.default_level == "param":
            out.append((name, "param"))
        if cls.supports_rep_grads:
            out.append((name, "rep"))
    return out


def run_all(setup: str, steps: int, warmup: int, rounds: int, jac_mode: str,
            only: list[str] | None, device: str = "cpu", precision: str = "fp32") -> None:
    todo = [c for c in cases() if only is None or c[0] in only or c[0] == "ew"]
    if setup == "segnet_nyuv2":  # SegNet-MTAN has no single shared representation
        todo = [c for c in todo if c[1] == "param"]
    times: dict[tuple[str, str], list[float]] = {c: [] for c in todo}
    rss: dict[tuple[str, str], float] = {}
    for r in range(rounds):
        for name, level in todo if r % 2 == 0 else todo[::-1]:
            cmd = [sys.executable, __file__, "--setup", setup, "--one", name, "--level", level,
                   "--steps", str(steps), "--warmup", str(warmup), "--jacobian-mode", jac_mode,
                   "--device", device, "--precision", precision]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                print(f"{name}@{level}: FAILED\n{res.stderr[-2000:]}", file=sys.stderr)
                continue
            row = json.loads(res.stdout.strip().splitlines()[-1])
            times[(name, level)] += row["times"]
            rss[(name, level)] = max(rss.get((name, level), 0.0), row["peak_rss_mb"])
            print(f"  round {r}: {name}@{level}: median {statistics.median(row['times']):.3f} "
                  "s/step", file=sys.stderr, flush=True)
    rows = [(k, statistics.median(v), min(v), rss[k]) for k, v in times.items() if v]
    ew = next(r for r in rows if r[0][0] == "ew")
    print(f"\nsetup={setup}, device={device}, precision={precision}, jacobian={jac_mode}, "
          f"{rounds} round(s) × {steps} timed steps (after {warmup} warm-up) per row, "
          f"alternating order; torch={torch.__version__}, threads=2\n")
    memory = "peak GPU MB" if device.startswith("cuda") else "peak RSS MB"
    print("| method | level | median s/step | × EW (median) | min s/step | × EW (min) "
          f"| {memory} | × EW memory |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, level), med, low, mem in sorted(rows, key=lambda r: (r[0][1], r[1])):
        print(f"| {name} | {level} | {med:.3f} | {med / ew[1]:.2f} | {low:.3f} | "
              f"{low / ew[2]:.2f} | {mem:.0f} | {mem / ew[3]:.2f} |")


def bench_jacobian(setup: str, reps: int = 5) -> None:
    from methods.engine import jacobian

    torch.set_num_threads(2)
    model, T, out = build(setup)
    x = torch.randn(32, 3, 64, 64)
    y = torch.randint(0, 10, (32,))
    shared = list(model.encoder.parameters())
    for mode in ("loop", "batched"):
        ts = []
        for _ in range(reps):
            rep, preds = model(x)
            losses = torch.stack([nn.functional.cross_entropy(p[:, :10] if out > 1 else
                                                              torch.cat([p, -p], 1), y % 2 if out == 1 else y)
                                  for p in preds])
            t0 = time.perf_counter()
            jacobian(losses, shared, mode=mode)
            ts.append(time.perf_counter() - t0)
        print(f"{setup} jacobian {mode}: median {sorted(ts)[reps // 2]:.3f} s (T={T})")


def _solver_inputs(T: int, n: int, seed: int):
    """Random Gramians, every third ill-scaled (task norms 10⁻⁴…10³ apart)."""
    g = torch.Generator().manual_seed(seed)
    for k in range(n):
        G = torch.randn(T, 50, generator=g, dtype=torch.float64)
        if k % 3 == 0:
            G = G * 10.0 ** (torch.rand(T, 1, generator=g, dtype=torch.float64) * 7 - 4)
        else:
            G = G * torch.rand(T, 1, generator=g, dtype=torch.float64) * 3
        yield (G @ G.T).numpy()


def bench_solvers(n: int = 300) -> None:
    import math

    from methods.cagrad import cagrad_dual_weights
    from methods.solvers import nash_weights

    print("| solver | T | median ms | p95 ms | mean iterations | max iterations | failures |")
    print("|---|---|---|---|---|---|---|")
    for label in ("nash_mtl", "cagrad dual (c=0.4)"):
        for T in (2, 3, 5, 10):
            times, iters, fails = [], [], 0
            for K in _solver_inputs(T, n, seed=T):
                t0 = time.perf_counter()
                if label == "nash_mtl":
                    _, it, ok = nash_weights(K)
                else:
                    sol = cagrad_dual_weights(K, 0.4 * math.sqrt(K.mean() + 1e-8) + 1e-8)
                    it, ok = sol.iterations, sol.converged
                times.append(time.perf_counter() - t0)
                iters.append(it)
                fails += not ok
            times.sort()
            print(f"| {label} | {T} | {statistics.median(times) * 1e3:.3f} | "
                  f"{times[int(0.95 * n)] * 1e3:.3f} | {statistics.mean(iters):.1f} | "
                  f"{max(iters)} | {fails} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--setup", default="resnet18", choices=["resnet18", "celeba40", "segnet_nyuv2"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--one")
    ap.add_argument("--level", default="param")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--jacobian-mode", default="auto")
    ap.add_argument("--only", help="comma-separated method names (EW always included)")
    ap.add_argument("--jacobian", action="store_true")
    ap.add_argument("--solvers", action="store_true")
    ap.add_argument("--interleaved", action="store_true",
                    help="every case in one process, one step each per round (shared machines)")
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.setup, a.one, a.level, a.steps, a.warmup, a.jacobian_mode,
                             a.device, a.precision)))
    elif a.jacobian:
        bench_jacobian(a.setup)
    elif a.solvers:
        bench_solvers()
    elif a.interleaved:
        interleaved(a.setup, a.steps, a.warmup, a.only.split(",") if a.only else None)
    else:
        run_all(a.setup, a.steps, a.warmup, a.rounds, a.jacobian_mode,
                a.only.split(",") if a.only else None, a.device, a.precision)


if __name__ == "__main__":
    main()
