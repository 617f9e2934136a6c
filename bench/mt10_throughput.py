"""MT10 throughput: environment steps/s and SAC gradient updates/s per method, against pure
simulation speed (docs/metaworld.md §6: ≈ 22 ms per 10-env sync step on a small machine).

Measures, on this machine and with ``--threads`` torch threads:

* pure simulation: ``--sim-steps`` loop steps of the 10 MT10 environments (sync or async
  vector env, uniform random actions, explicit resets at the horizon) → env steps/s;
* per method: ``--updates`` gradient updates of the multi-task SAC learner (mtrl defaults:
  batch 1280, 3×400 MLPs, the method on the losses of ``orchestrator.trainers.rl.APPLY_TO``, the
  benchmark's reference hyperparameters) on a buffer of real MT10 transitions → updates/s;
* the training loop's rate with one update per loop step (mtrl):
  env steps/s = 10 / (t_sim + t_update), i.e. how much the learner slows simulation down.

    .venv/bin/python bench/mt10_throughput.py [--methods ew,pcgrad,cagrad,nash_mtl,imgrad,famo]
        [--sim-steps 300] [--updates 3] [--batch-size 1280] [--vector sync] [--threads 1]
        [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import envs
import methods
from orchestrator.trainers.rl import ReplayBuffer, SACConfig, SACLearner, method_hparams

PAPER_METHODS = "ew,pcgrad,cagrad,nash_mtl,imgrad,famo"


def simulate(e, steps: int, horizon: int, rng: np.random.Generator, buffer: ReplayBuffer | None):
    """Step ``e`` for ``steps`` loop steps with random actions; returns seconds."""
    T = e.num_envs
    obs, _ = e.reset()
    t0 = time.perf_counter()
    for step in range(steps):
        a = rng.uniform(-1, 1, (T, 4)).astype(np.float32)
        nxt, r, term, trunc, _ = e.step(a)
        if buffer is not None:
            buffer.add(obs, a, r, nxt, term, np.arange(T))
        obs = nxt
        if (step + 1) % horizon == 0:
            obs, _ = e.reset()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=PAPER_METHODS)
    ap.add_argument("--sim-steps", type=int, default=300)
    ap.add_argument("--updates", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=1280)
    ap.add_argument("--vector", default="sync", choices=("sync", "async"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    bench = envs.create("mt10", vector=args.vector)
    t0 = time.perf_counter()
    e = bench.make_envs(0)
    build = time.perf_counter() - t0
    T, H = bench.num_tasks, bench.rl_protocol.horizon
    rng = np.random.default_rng(0)
    buffer = ReplayBuffer(max(args.sim_steps * T, args.batch_size), bench.obs_dim, 4, seed=0)
    t_sim = simulate(e, args.sim_steps, H, rng, buffer) / args.sim_steps  # s per loop step
    e.close()

    cfg = SACConfig(batch_size=args.batch_size, device=args.device)
    print(f"MT10 ({args.vector} vector env, build {build:.1f} s incl. goal generation), "
          f"torch threads {args.threads}, device {args.device}, batch {args.batch_size}, "
          f"3x{cfg.hidden} MLPs, {args.updates} timed updates per method\n")
    print("| method | losses with the method | s / update | updates/s | loop env steps/s "
          "(1 update per loop step) | slowdown vs simulation |")
    print("|---|---|---:|---:|---:|---:|")
    print(f"| (simulation only) | — | — | — | {T / t_sim:.0f} | 1.0× |")
    for name in args.methods.split(","):
        if name not in methods.available():
            print(f"| {name} | not registered | | | | |")
            continue
        learner = SACLearner(bench.obs_dim, 4, T, name, method_hparams(bench, name), cfg, 0)
        learner.update(buffer.sample(args.batch_size))  # warm-up (allocations, solver setup)
        t0 = time.perf_counter()
        for _ in range(args.updates):
            learner.update(buffer.sample(args.batch_size))
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t_upd = (time.perf_counter() - t0) / args.updates
        loop = T / (t_sim + t_upd)
        print(f"| {name} | {','.join(learner.apply_to)} | {t_upd:.3f} | {1 / t_upd:.2f} | "
              f"{loop:.1f} | {(t_sim + t_upd) / t_sim:.1f}× |")


if __name__ == "__main__":
    main()
