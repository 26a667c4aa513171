"""Benchmarks, printed as one JSON object: medians over repeats, time.perf_counter, the process pinned to one CPU core.

Usage: python bench.py [section ...]   (default: every section)
  env     sim_env physics env-steps/s without rendering, and rendered (primary, wrist) observation pairs/s at 64x64,
          for one env and for a batch of VecPushEnv (a step of N envs counts N env-steps)
  expert  the scripted expert over 200 seeded episodes per task: success rate, episode length (about a minute)
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads, so that every number is one core's
import json
import platform
import statistics
import sys
import time

import numpy as np

import sim_env


def _median_rate(run, work, repeats):  # run() does `work` units -> median units/s over repeats
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        rates.append(work / (time.perf_counter() - start))
    return statistics.median(rates)


def bench_env(tasks=("push_block", "push_t"), batch=256, repeats=5, image_size=64) -> dict:
    """Physics env-steps/s (targets near the block, so that most steps push it) and observation pairs/s."""
    out = {}
    for task in tasks:
        for n, steps in ((1, 200), (batch, 10)):
            env = sim_env.VecPushEnv(task, n, image_size, max_steps=10 ** 9)  # no truncation mid-benchmark
            env.reset(range(n))
            rng = np.random.default_rng(0)

            def physics():
                for _ in range(steps):
                    env.step(env.block[:, :2] + rng.normal(0, 0.06, (n, 2)), render=False)
            out[f"{task}/physics_env_steps_per_s/N={n}"] = round(_median_rate(physics, n * steps, repeats))
            calls = max(1, 200 // n)
            out[f"{task}/obs_pairs_per_s/N={n}"] = round(_median_rate(
                lambda: [env.observe() for _ in range(calls)], n * calls, repeats))
    return out


def bench_expert(tasks=("push_block", "push_t"), episodes=200, first_seed=10_000, noises=(0.0, 0.01)) -> dict:
    """The expert, batched and without rendering, on env seeds it was not tuned on (its constants were tuned on
    seeds 0-199); noise 0.01 is collect_demos' default."""
    out = {}
    for task in tasks:
        for noise in noises:
            env, rng, start = sim_env.VecPushEnv(task, episodes), np.random.default_rng(0), time.perf_counter()
            env.reset(range(first_seed, first_seed + episodes))
            while not env.done.all():
                env.step(sim_env.expert_actions(env, noise, rng), render=False)
            ok = env.cov > env.cfg.success_coverage
            out[f"{task}/noise={noise}"] = {
                "success_rate": float(ok.mean()), "seeds": f"{first_seed}-{first_seed + episodes - 1}",
                "max_steps": env.cfg.max_steps,
                "mean_len_success": float(env.steps[ok].mean()), "max_len_success": int(env.steps[ok].max()),
                "wall_s": round(time.perf_counter() - start, 1)}
    return out


SECTIONS = {"env": bench_env, "expert": bench_expert}


def main(names):
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        sys.exit(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "numpy": np.__version__, "cores_used": 1}}
    report.update({name: SECTIONS[name]() for name in names or SECTIONS})
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
