"""Inference: the policy, best-of-N planning with the model's own world model and value, and evaluation.

Paper: Cosmos Policy (arXiv 2601.16163) §3.3-3.4. Official counterparts (NVlabs/cosmos-policy):
`get_action` / `get_future_state_prediction` / `get_value_prediction` / `aggregate_value_predictions` in
cosmos_policy/experiments/robot/cosmos_utils.py and the best-of-N loop of
cosmos_policy/experiments/robot/aloha/deploy.py.

Letters: B environments, N candidates, M world-model samples, V value samples per future, C latent channels,
T latent frames, H/W latent height/width, K chunk length, A action dim, S image size.

One policy query (`act`): encode the current observation as the conditioning prefix of the pseudo-video
(blank, proprio, wrist, primary), then sample the rest (action, future state, value) in `num_steps` network calls.
In an evaluation each episode's queries draw their own noise (`query_seeds`: one seed per episode seed and query).
Best-of-N (`plan_best_of_n`): N candidate chunks in one batch (candidate i uses seed + i); for each, M world-model
samples of s' (action frame clean) and V value samples per s' (everything but the value clean, or only s' for a
planner trained with --value_sprime); the M*V values are aggregated by "majority mean"; the best candidate replaces
candidate 0 only if strictly better. Every planning evaluation also tries each candidate in a copy of the simulator
(`candidate_distance`) and reports how much closer to the goal its choice really left the block than candidate 0,
against what the best candidate would have; --oracle executes that best one: a perfect world model's choice.

Public: evaluate(ckpt, ...) -> dict (success rate with a 95% Wilson interval, mean max coverage, Push-T score,
    "random": random_floor(task, seed, episodes), random targets' rate, interval and coverage on the same seeds, and
    "by_start": by_start(results), success by where the pusher starts, seen from the block);
evaluate_checkpoints(paths, last=5, ...) -> {"runs": [dict per path], "best": path, "mean_last": dict}: the same seeds
    for every checkpoint, reported as Diffusion Policy does (best checkpoint, mean of the last k);
load_policy(path) -> Policy; act(policy, obs) -> (actions (B, K, A), x0 (B, C, T, H, W), value (B,));
plan_best_of_n(policy, planner, obs, ..., judge=None) -> (actions (B, K, A), values (B, N), best (B,),
    x0 (B, C, T, H, W), candidates (B, N, K, A));  candidate_distance(vec_env, candidates, steps) -> (B, N);
imagine(policy, obs, x0) -> B dicts {future image slot: (S, S, 3) uint8};
env_actions(policy, x0, obs) -> (B, K, A) the targets env.step takes (offsets made absolute for toy policies);
open_loop(policy, demos, n, samples=1) -> {policy_l1, standing_still_l1[, mean_of_samples_l1, sample_spread_l1],
    value_l1, value_success_states, value_failure_states[, value_auc]}: imitation and value error on demo or
    rollout states, no simulator.

Full scale (the released nvidia/Cosmos-Policy-LIBERO-Predict2-2B files and the Wan2.1 tokenizer.pth of
nvidia/Cosmos-Predict2-2B-Video2World), through the same act / plan_best_of_n / imagine:
load_libero(dit, vae, stats, t5, device, dtype=bf16, dit_cfg=2B, vae_cfg=wan21, layout=libero, image_size=224)
    -> Policy (task_emb unset; .instructions {text: (512, 1024)});  libero_files(folder) -> those four paths;
libero_act(policy, primary, wrist, proprio (9,), instruction, cfg=PlanConfig(), seed=0) -> {"actions" (16, 7)
    un-normalised, "future_images" {"future_wrist", "future_primary": (S, S, 3) uint8}, "value" in [0, 1], and with
    cfg.best_of > 1 "values" (N,) and "best"};  libero_image((H, W, 3) uint8) -> (S, S, 3) uint8;
load_t5_embeddings(pkl) -> {text: (L, D)} through a restricted unpickler (never a bare pickle.load).
The caller does LIBERO's environment quirks first, as the official run_libero_eval.py does before get_action: flip
both camera images upside down (np.flipud), then JPEG-encode and decode them at quality 95 (the training images were
JPEGs); proprio = [gripper qpos (2), eef pos (3), eef quat (4)]; the 16 actions go to env.step as they are.

CLI (--help lists every option):
     python plan.py --ckpt=runs/cpu_push_block/policy.pt --episodes=200 [--best_of=8 --planning_ckpt=...]
     python plan.py --ckpt="runs/<run>/policy_step*.pt" --episodes=200 [--last=5]   (train.py --keep_every=N)
     python plan.py --ckpt=... --open_loop=runs/cpu_push_block/demos.npz --episodes=200 --seed=0 [--samples=8]   (JSON)
     python plan.py --libero=DIR --instruction="put the bowl on the plate" --primary=a.png --wrist=b.png
                    --proprio="[9 floats]" [--best_of=8 --seed=195 --out=DIR]   (prints JSON, writes future PNGs)
"""
import collections
import contextlib
import dataclasses
import difflib
import functools
import glob
import io
import json
import math
import os
import pickle
import re
import sys
import time
import zlib
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tqdm import tqdm

import diffusion
import latent_injection as li
import sim_env
from dit import DiTConfig, load_dit
import train
from vae import VAEConfig, load_vae

@dataclass
class PlanConfig:
    ckpt: str = ""  # policy checkpoint written by train.py (policy.pt)
    planning_ckpt: str = ""  # a planning model (train.py with rollouts) for futures and values; default: ckpt
    episodes: int = 200  # evaluation episodes; with --open_loop, states
    seed: int = 100_000  # evaluation seeds seed..seed+episodes-1; demos use seeds from 0, so these are held out
    num_steps: int = 5  # denoising steps per action chunk (the paper's LIBERO setting)
    # The official 4 leaves LIBERO's 112 copies of each action number an effective noise of 4/sqrt(112) = 0.38; the
    # cpu preset's 8x8 latents hold each only 32 times (0.71), so its last x0 still averages nearby modes (README).
    sigma_min: float = diffusion.SIGMA_MIN  # the action samples' last sigma; world-model and value samples keep 4
    action_steps: int = 8  # actions executed per chunk before re-planning
    best_of: int = 1  # N candidates; 1 = the plain policy
    oracle: bool = False  # best-of-N picks the candidate that really gets closest to the goal (simulator copies)
    wm_steps: tuple = (1, 3, 5)  # one world-model sample per entry, with that many steps (official ALOHA planning)
    value_steps: tuple = (1, 2, 3, 4, 5)  # one value sample per entry and per world-model sample
    # Small on purpose: on a CPU the DiT runs slower per sample in big batches (2 cores, best-of-4: 278 ms per
    # environment and query at 50, 469 at 200).
    batch: int = 50  # environments stepped together; on a GPU raise it
    gifs: int = 0  # write a GIF for the first `gifs` episodes
    collect_rollouts: str = ""  # save every episode (successes and failures) to this .npz, in the demo format
    device: str = "auto"  # auto (a GPU when there is one) | cpu | cuda ...
    libero: str = ""  # folder with the released LIBERO files (libero_files): one query instead of an evaluation
    instruction: str = ""  # --libero: a key of libero_t5_embeddings.pkl
    primary: str = ""  # --libero: third-person (agentview) image file, LIBERO quirks already applied
    wrist: str = ""  # --libero: eye-in-hand image file
    proprio: tuple = ()  # --libero: 9 numbers
    out: str = ""  # --libero: folder for the predicted future images (PNG)
    open_loop: str = ""  # a demo .npz: imitation error on `episodes` of its states instead of an evaluation
    samples: int = 1  # --open_loop: noise seeds per state; > 1 splits the error into the mean's and the spread
    last: int = 5  # several checkpoints (--ckpt=a.pt,b.pt or a glob): also report the mean of the last `last`

    def __post_init__(self):
        self.wm_steps, self.value_steps = tuple(self.wm_steps), tuple(self.value_steps)
        assert all(isinstance(v, (int, float)) for v in self.proprio), f"proprio {self.proprio}: numbers"
        self.proprio, self.instruction = tuple(float(v) for v in self.proprio), str(self.instruction)
        small = {k: getattr(self, k) for k in ("episodes", "num_steps", "action_steps", "best_of", "batch", "samples",
                                               "last") if getattr(self, k) < 1}
        assert not small, f"{small}: these must be >= 1"
        assert 0 < self.sigma_min < diffusion.SIGMA_MAX, \
            f"sigma_min {self.sigma_min}: in (0, {diffusion.SIGMA_MAX}), below the sampler's sigma_max"
        assert 0 <= self.gifs <= self.episodes, f"gifs {self.gifs}: one per episode at most, 0 to {self.episodes}"
        assert self.wm_steps and self.value_steps, "need at least one world-model and one value sample"
        steps = self.wm_steps + self.value_steps
        assert all(isinstance(s, int) and s >= 1 for s in steps), \
            f"wm_steps {self.wm_steps}, value_steps {self.value_steps}: denoising step counts, such as (1, 3, 5)"


@dataclass
class Policy:
    dit: torch.nn.Module
    vae: torch.nn.Module
    layout: li.Layout
    stats: dict  # name -> (lo, hi) min-max statistics
    task_emb: torch.Tensor  # (L, D); None until for_instruction picks one (full scale)
    task: str
    image_size: int
    instructions: dict = dataclasses.field(default_factory=dict)  # full scale: instruction -> T5 embedding (L, D)
    relative_actions: bool = False  # toy: actions are offsets from the current position (env_actions adds it back)
    value_sprime: bool = False  # its value samples see only s' (train.py --value_sprime): the planner's value query


def load_policy(path, device="cpu"):
    ck = train.load_file(path)
    assert "dit_config" in ck and "vae" in ck, f"{path} is not a policy checkpoint written by train.py"
    lay = ck["layout"]
    layout = li.Layout(**{**lay, "slots": tuple(li.Slot(**s) for s in lay["slots"])})
    return Policy(dit=load_dit(ck["model"], DiTConfig(**ck["dit_config"]), device=device),
                  vae=load_vae(ck["vae"], VAEConfig(**ck["vae_config"]), device=device), layout=layout,
                  stats={k: (lo.to(device), hi.to(device)) for k, (lo, hi) in ck["stats"].items()},
                  task_emb=ck["task_emb"].to(device), task=ck["task"], image_size=ck["image_size"],
                  relative_actions=ck.get("relative_actions", False), value_sprime=ck.get("value_sprime", False))


def device_of(cfg):
    """PlanConfig.device as a torch.device: "auto" is the GPU when there is one."""
    return torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)


def network(p):
    """The DiT as the callable diffusion.sample expects, with the task embedding bound."""
    assert p.task_emb is not None, "no instruction chosen: use for_instruction(policy, text) first"
    return lambda x, t, m: p.dit(x, t, p.task_emb.expand(x.shape[0], *p.task_emb.shape), m)


def noise_like(shape, seeds, device):
    """Initial noise, one generator per seed: a candidate's sample depends on its seed, not on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


def query_seeds(seeds, query):
    """One noise seed per episode and query. Episodes must draw independent noise to be independent samples of the
    policy: with one seed per query shared by the batch, a low sigma_min sent all 200 episodes the same way round the
    block, and an evaluation's rate moved with its seed range by up to 40 points (README)."""
    return [int(np.random.SeedSequence((int(s), query)).generate_state(1, np.uint64)[0] >> 1)  # room for s + i
            for s in seeds]


def row_seeds(seed, b):
    """`seed` as b per-row seeds: an int is shared by every row (one query, e.g. libero_act), a sequence is per row."""
    seeds = [seed] * b if isinstance(seed, int) else [int(s) for s in seed]
    assert len(seeds) == b, f"{len(seeds)} seeds for a batch of {b}"
    return seeds


@torch.no_grad()
def condition_latent(p, obs, full=False):
    """(B, C, T, H, W) latent whose conditioning prefix holds the encoded current state; the rest is zero.

    The future image slots are filled with the current images, as the official get_action does; since the VAE is
    causal, encoding only the prefix's 1+4(num_cond-1) raw frames gives the same prefix latents (full=True encodes
    all frames: the original latents that undo_injection restores before decoding imagined futures).
    """
    dev = p.vae.conv1.weight.device
    images = {s.name: torch.from_numpy(obs[s.name.removeprefix("future_")]).to(dev) for s in p.layout.slots
              if s.kind == "image"}
    video = li.raw_frames(p.layout, images)  # (B, 3, 1+4(T-1), S, S)
    n = video.shape[2] if full else 1 + 4 * (p.layout.num_cond - 1)
    lat = p.vae.encode(video[:, :, :n])  # (B, C, T or num_cond, H, W)
    x = torch.zeros(lat.shape[:2] + (p.layout.num_frames,) + lat.shape[3:], device=dev)
    x[:, :, :lat.shape[2]] = lat
    proprio = torch.from_numpy(obs["proprio"][:, :p.layout.proprio_dim]).to(dev)  # (B, P): the position comes first
    proprio = li.normalize(proprio, *p.stats["proprio"])
    return li.inject_vectors(x, p.layout, proprio=proprio)


@torch.no_grad()
def act(p, obs, num_steps=5, seed=0, x_cond=None, sigma_min=diffusion.SIGMA_MIN):
    """Policy query in parallel mode: action, future state and value from one generation. seed: int or one per row."""
    x_cond = condition_latent(p, obs) if x_cond is None else x_cond
    b = x_cond.shape[0]
    x0 = diffusion.sample(network(p), x_cond, li.condition_mask(p.layout, ["policy"] * b), num_steps,
                          noise=noise_like(x_cond.shape[1:], row_seeds(seed, b), x_cond.device), sigma_min=sigma_min)
    return env_actions(p, x0, obs), x0, li.read_value(x0, p.layout)


def env_actions(p, x0, obs, repeat=1):
    """Generated latents (B*repeat, C, T, H, W) -> actions (B*repeat, K, A) for env.step: un-normalised and, for a
    policy trained on offsets (train.action_chunks), moved back to targets by adding the current position, the first
    A proprio numbers of each sample's observation (obs["proprio"] (B, P), each row repeated `repeat` times)."""
    actions = li.unnormalize(li.read_action(x0, p.layout), *p.stats["action"])  # (B*repeat, K, A)
    if p.relative_actions:
        here = torch.as_tensor(obs["proprio"]).to(actions).repeat_interleave(repeat, 0)  # (B*repeat, P)
        actions = actions + here[:, None, :actions.shape[-1]]
    return actions


def majority_mean(values, threshold=0.05):
    """(..., S) value samples in [0, 1] -> (...): mean of the samples above `threshold` if they are the majority,
    else 0 (official aggregate_value_predictions, scheme "majority_mean")."""
    above = values > threshold
    mean = (values * above).sum(-1) / above.sum(-1).clamp_min(1)
    return torch.where(above.float().mean(-1) >= 0.5, mean, torch.zeros_like(mean)).clamp(0, 1)


@torch.no_grad()
def plan_best_of_n(p, planner, obs, cfg, seed=0, judge=None):
    """Best-of-N: returns the chosen chunks (B, K, A), every candidate's aggregated value (B, N), the chosen index (B,),
    the chosen sample's latents and every candidate's chunk (B, N, K, A). Candidate 0 (the base seed) is kept unless
    another is strictly better (official deploy.py). judge: (B, N, K, A) chunks -> (B, N) values, in place of the
    planner's world model and value (--oracle: minus candidate_distance, the simulator's own verdict). seed: int or one
    per state; candidate i of a state with seed s uses s + i, its world-model and value samples s + j and s + k."""
    x_cond = condition_latent(p, obs)  # the planner shares the policy's VAE (it is fine-tuned from it)
    b, n = x_cond.shape[0], cfg.best_of
    seeds = row_seeds(seed, b)
    value_kind = "value_sprime" if planner.value_sprime else "value"
    xc = x_cond.repeat_interleave(n, 0)  # (B*N, C, T, H, W)
    cand = noise_like(xc.shape[1:], [s + i for s in seeds for i in range(n)], xc.device)
    x0 = diffusion.sample(network(p), xc, li.condition_mask(p.layout, ["policy"] * b * n), cfg.num_steps, noise=cand,
                          sigma_min=cfg.sigma_min)
    candidates = env_actions(p, x0, obs, repeat=n)  # (B*N, K, A)
    candidates = candidates.view(b, n, *candidates.shape[1:])  # (B, N, K, A)
    values = []
    for j, wm_steps in enumerate(() if judge else cfg.wm_steps):
        fut = diffusion.sample(network(planner), x0, li.condition_mask(p.layout, ["world_model"] * b * n), wm_steps,
                               noise=noise_like(xc.shape[1:], [s + j for s in seeds for _ in range(n)], xc.device))
        for k, v_steps in enumerate(cfg.value_steps):
            v = diffusion.sample(network(planner), fut, li.condition_mask(p.layout, [value_kind] * b * n), v_steps,
                                 noise=noise_like(xc.shape[1:], [s + k for s in seeds for _ in range(n)], xc.device))
            values.append(li.read_value(v, p.layout))
    value = (torch.as_tensor(judge(candidates.float().cpu().numpy())).float().to(xc.device) if judge
             else majority_mean(torch.stack(values, -1)).view(b, n))  # (B, N)
    best = value.argmax(1)
    best = torch.where(value.gather(1, best[:, None])[:, 0] > value[:, 0], best, torch.zeros_like(best))
    chosen = torch.arange(b), best
    return candidates[chosen], value, best, x0.view(b, n, *x0.shape[1:])[chosen], candidates


def candidate_distance(env, candidates, steps):
    """(B, N, K, A) candidate chunks for the B environments of `env` (a VecPushEnv) -> (B, N): how far each candidate
    really leaves its block from the goal pose after executing its first `steps` actions from the current state, in
    copies of the simulator (no rendering; sim_env.VecPushEnv.goal_distance, table units). What a perfect world model
    with progress as the value would rank by: the yardstick of the planner's choice, and with --oracle its ceiling."""
    b, n = candidates.shape[:2]
    sim = env.repeat(n)
    for k in range(min(steps, candidates.shape[2])):
        sim.step(candidates[:, :, k].reshape(b * n, -1), render=False)
    return sim.goal_distance().reshape(b, n)


def wilson(k, n, z=1.96):
    """95% Wilson score interval of a success rate k/n."""
    if n == 0:
        return 0.0, 0.0
    c, h = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, c - h), min(1.0, c + h)


def evaluate(ckpt, episodes=200, device="auto", **overrides):
    """Roll out `episodes` seeded episodes, environments stepped together and queries batched. Prints one line.
    Finished batches are kept until the end (partial_results_path): the same call after a crash or Ctrl-C resumes."""
    cfg = PlanConfig(ckpt=ckpt, episodes=episodes, device=str(device), **overrides)
    dev = device_of(cfg)
    p = load_policy(cfg.ckpt, dev)
    planner = load_policy(cfg.planning_ckpt, dev) if cfg.planning_ckpt else p
    record = bool(cfg.gifs or cfg.collect_rollouts)
    rollouts, t0 = [], time.perf_counter()
    batches, max_steps = range(0, cfg.episodes, cfg.batch), getattr(sim_env.EnvConfig, p.task)().max_steps
    partial = None if record else partial_results_path(cfg, dev)  # recorded episodes are not kept between runs
    done = train.load_file(partial) if partial and os.path.exists(partial) else {}  # start -> results
    if done:
        print(f"resuming an interrupted evaluation: {sum(map(len, done.values()))} episodes done ({partial})")
    bar = tqdm(total=len(batches) * max_steps, desc="evaluate", unit="step")
    for start in batches:  # the bar counts control steps of the batch in flight; every step is one of all envs
        if start in done:
            bar.update(max_steps)
            continue
        seeds = list(range(cfg.seed + start, cfg.seed + min(start + cfg.batch, cfg.episodes)))
        done[start] = run_batch(cfg, p, planner, seeds, rollouts if record else None, start, bar)
        if partial:
            train.save_atomic(done, partial)
    bar.close()
    results = [r for start in batches for r in done[start]]
    if partial:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)
    success = np.array([r["success"] for r in results])
    lo, hi = wilson(int(success.sum()), len(success))
    summary = {"task": p.task, "episodes": len(results), "success_rate": float(success.mean()), "ci95": [lo, hi],
               "mean_max_coverage": float(np.mean([r["max_coverage"] for r in results])),
               "pusht_score": float(np.mean([min(r["max_coverage"] / 0.95, 1.0) for r in results])),
               "random": dict(random_floor(p.task, cfg.seed, len(results))),  # a copy: the cached one stays
               "best_of": cfg.best_of, "seconds": round(time.perf_counter() - t0, 1)}
    summary["by_start"] = by_start(results)
    if cfg.best_of > 1:
        base, chosen, best, switched, queries = np.sum([r["planning_gains"] for r in results], 0)
        n = max(queries, 1)
        summary["planning"] = {"queries": int(queries), "switched": switched / n, "base_progress": base / n,
                               "chosen_gain": chosen / n, "best_gain": best / n}
    bs = summary["by_start"]
    print("by where the pusher starts, seen from the block (0 deg: between it and the goal): " + "; ".join(
        f"{b['degrees'][0]}-{b['degrees'][1]} deg ({b['start']}) {b['success_rate']:.1%} of {b['episodes']}"
        for b in bs["buckets"] if b["episodes"]) + (f". The {bs['failures']} failures' blocks end a median "
        f"{bs['failures_median_final_distance']:.2f} from the goal pose (they started "
        f"{bs['failures_median_start_distance']:.2f} away)" if bs["failures"] else ""))
    if cfg.best_of > 1:
        ps = summary["planning"]
        print(f"planning ({'oracle: the real outcome' if cfg.oracle else 'its world model and value'}): over "
              f"{ps['queries']} queries it switched from the base candidate in {ps['switched']:.1%}. Per query, the "
              f"base candidate brought the block {ps['base_progress']:+.4f} closer to the goal pose on average (table "
              f"units), the chosen one {ps['chosen_gain']:+.4f} more, the best of the {cfg.best_of} "
              f"{ps['best_gain']:+.4f}")
    rand = summary["random"]  # the headline last, where a run's output ends
    print(f"eval {p.task}: success {summary['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over {len(results)} "
          f"episodes, mean max coverage {summary['mean_max_coverage']:.3f}, best-of-{cfg.best_of}; random targets on "
          f"the same seeds: {rand['success_rate']:.3f} ({rand['ci95'][0]:.3f}-{rand['ci95'][1]:.3f}), "
          f"{rand['mean_max_coverage']:.3f}")
    if cfg.collect_rollouts:
        sim_env.save_episodes(cfg.collect_rollouts, rollouts, p.task, p.image_size)
    return summary


def partial_results_path(cfg, dev):
    """Where an evaluation keeps its finished batches until it ends: beside the checkpoint, named by everything that
    changes the outcome (the checkpoints' sizes and times too), so an interrupted run of the same command resumes
    and any other starts anew. `fields` names what run_batch records per episode, so a batch kept by an older
    version, which lacks some, is not resumed."""
    files = [cfg.ckpt] + [cfg.planning_ckpt] * bool(cfg.planning_ckpt)
    key = dict(dataclasses.asdict(cfg), device=dev.type, files=[(os.stat(f).st_size, os.stat(f).st_mtime_ns)
                                                                 for f in files], fields=EPISODE_FIELDS)
    return f"{cfg.ckpt}.eval-{zlib.crc32(json.dumps(key, sort_keys=True).encode()):08x}.partial"


@functools.lru_cache
def random_floor(task, seed, episodes):
    """Random targets on the evaluation's seeds, the floor to clear: "clearly above random" means the two intervals
    do not overlap. Cached, so checkpoints scored on the same seeds share one computation."""
    ok, max_cov, _ = sim_env.score_controller(task, range(seed, seed + episodes),
                                              sim_env.random_targets(np.random.default_rng(0)))
    return {"success_rate": float(ok.mean()), "ci95": list(wilson(int(ok.sum()), len(ok))),
            "mean_max_coverage": float(max_cov.mean())}


def checkpoint_paths(spec):
    """--ckpt as a list: comma-separated paths and globs (runs/r/policy_step*.pt), each glob in training-step order."""
    def step(path):
        m = re.search(r"_step(\d+)\.pt$", path)
        return int(m.group(1)) if m else math.inf
    matches = {part: sorted(glob.glob(part), key=step) for part in spec.split(",")}  # a plain path matches itself
    empty = [part for part, found in matches.items() if not found]
    assert not empty, f"no checkpoint matches {empty}"
    return [p for found in matches.values() for p in found]


def evaluate_checkpoints(paths, last=5, **kwargs):
    """Each checkpoint on the same seeds, then Diffusion Policy's two numbers: the best checkpoint (optimistic: it is
    picked on the very seeds it is scored on; pick on other seeds, e.g. --seed=300000, then score the pick) and the
    mean of the last `last` checkpoints. Prints a table; returns {"runs": [summary per path], "best", "mean_last"}."""
    runs = [dict(evaluate(p, **kwargs), ckpt=p) for p in paths]
    print(f"{'checkpoint':<48} {'success (95% CI)':>22} {'coverage':>9}")
    for r in runs:
        print(f"{r['ckpt']:<48} {r['success_rate']:>7.3f} ({r['ci95'][0]:.3f}-{r['ci95'][1]:.3f}) "
              f"{r['mean_max_coverage']:>9.3f}")
    best = max(runs, key=lambda r: (r["success_rate"], r["mean_max_coverage"]))
    tail = runs[-last:]
    mean_last = {k: float(np.mean([r[k] for r in tail])) for k in ("success_rate", "mean_max_coverage")}
    print(f"best: {best['ckpt']} {best['success_rate']:.3f}; mean of the last {len(tail)}: success "
          f"{mean_last['success_rate']:.3f}, coverage {mean_last['mean_max_coverage']:.3f}")
    return {"runs": runs, "best": best["ckpt"], "mean_last": mean_last}


@torch.no_grad()
def open_loop(p, data, n=200, action_steps=8, num_steps=5, seed=0, batch=50, samples=1, sigma_min=diffusion.SIGMA_MIN):
    """Imitation without the simulator: mean L1 (table units) between the policy's first `action_steps` targets and
    the demo's on `n` random demo states, against standing still (every target at the pusher). A policy that does not
    beat standing still on its own training states cannot succeed in closed loop (push_t, README). With samples > 1
    (noise seeds seed, seed + 1, ...) it also splits the error: the L1 of the samples' mean, and the samples' mean L1
    to it (their spread); an error well above the spread is a wrong mean, not sampling noise.

    The value is scored too, as planning queries it (true_future_values) but on the real chunk and future, against
    the training label of the same state (value_l1, in [0, 1]), on up to n states of successful episodes and n of
    failed ones. On rollouts (plan.py --collect_rollouts) holding both outcomes, value_auc is the chance that a state
    of a success gets a higher value than one of a failure (0.5: the value cannot tell them apart from what really
    happened, so it cannot rank imagined plans either)."""
    k, lens = action_steps, data["episode_len"]
    first = np.cumsum(lens) - lens
    ok = np.concatenate([f + np.arange(m - k) for f, m in zip(first, lens) if m > k])  # k real actions ahead
    assert len(ok), f"no demo state has {k} actions ahead in its episode"
    rows = np.random.default_rng(seed).choice(ok, min(n, len(ok)), replace=False)
    targets = data["action"][rows[:, None] + np.arange(k)]  # (n, k, A)
    here = data["proprio"][rows, None, :targets.shape[-1]]  # (n, 1, A)
    obs = [{c: data[c][rows[i:i + batch]] for c in ("primary", "wrist", "proprio")} for i in range(0, len(rows), batch)]
    query = functools.partial(act, p, num_steps=num_steps, sigma_min=sigma_min)
    pred = np.stack([np.concatenate([query(o, seed=seed + s)[0][:, :k].float().cpu().numpy() for o in obs])
                     for s in range(samples)])  # (samples, n, k, A)
    out = {"states": len(rows), "action_steps": k, "policy_l1": float(np.abs(pred - targets).mean()),
           "standing_still_l1": float(np.abs(here - targets).mean())}
    if samples > 1:
        mean = pred.mean(0)  # (n, k, A)
        out.update(samples=samples, mean_of_samples_l1=float(np.abs(mean - targets).mean()),
                   sample_spread_l1=float(np.abs(pred - mean).mean()))
    if "success" in data:  # successes' states are few in rollouts (short episodes): up to n of each outcome
        ok_won = np.repeat(np.asarray(data["success"], bool), lens)[ok]  # (len(ok),)
        rng = np.random.default_rng(seed + 1)
        vrows = np.concatenate([rng.choice(ok[ok_won == w], min(n, int((ok_won == w).sum())), replace=False)
                                for w in (True, False)])
        value, label, won = true_future_values(p, data, vrows, num_steps, seed, batch)
        out.update(value_l1=float((value - label).abs().mean()), value_success_states=int(won.sum()),
                   value_failure_states=int((~won).sum()))
        if won.any() and not won.all():
            higher = value[won][:, None] - value[~won][None]  # (successes, failures)
            out["value_auc"] = float((higher > 0).double().mean() + 0.5 * (higher == 0).double().mean())
    return out


@torch.no_grad()
def true_future_values(p, data, rows, num_steps=5, seed=0, batch=50):
    """The value query of planning (plan_best_of_n: all but the value clean, or only s' for a V(s') planner) on real
    transitions: each state at `rows` with its demonstrated chunk and the real state a chunk later, built as training
    builds them (train.episode_index, action_chunks, encode_pseudo_videos). Returns the values (n,) in [0, 1], their
    training labels (n,) mapped to [0, 1] the same way, and whether each state's episode succeeded (n,)."""
    dev, lay = p.vae.conv1.weight.device, p.layout
    every, fut, chunk_rows, to_go, success = train.episode_index(data, lay.action_chunk)
    r = torch.as_tensor(rows)
    pos = torch.from_numpy(np.searchsorted(every.numpy(), rows))  # (n,) each row's place among all sample rows
    assert torch.equal(every[pos], r), "an episode's final row has no chunk to score"
    f = fut[pos]
    latent = train.encode_pseudo_videos(p.vae, lay, data, r, f, dev).to(dev).float()  # (n, C, T, H, W)
    proprio = li.normalize(torch.from_numpy(data["proprio"][:, :lay.proprio_dim]).to(dev), *p.stats["proprio"])
    chunk = li.normalize(train.action_chunks(data, r, chunk_rows[pos], p.relative_actions).to(dev), *p.stats["action"])
    x = li.inject_vectors(latent, lay, proprio=proprio[r], action=chunk, future_proprio=proprio[f])
    kind = "value_sprime" if p.value_sprime else "value"
    value = torch.cat([li.read_value(diffusion.sample(network(p), xb, li.condition_mask(lay, [kind] * len(xb)),
                                                      num_steps, noise=noise_like(xb.shape[1:], [seed] * len(xb), dev)),
                                     lay) for xb in x.split(batch)])  # (n,)
    label = (li.value_target(to_go[pos], lay.gamma, success[pos]) + 1) / 2  # V(s') in [0, 1], as read_value
    return value.float().cpu(), label, success[pos].bool()


def run_batch(cfg, p, planner, seeds, rollouts, offset, bar):
    env = sim_env.VecPushEnv(p.task, len(seeds), image_size=p.image_size)
    bar_end = bar.n + env.cfg.max_steps
    obs, info = env.reset(seeds)
    start_angle, start_distance = env.approach_angle(), env.goal_distance()
    done = np.zeros(len(seeds), bool)
    max_cov, success = info["coverage"].copy(), info["is_success"].copy()
    trace = [dict(obs={k: [v[i]] for k, v in obs.items()}, action=[], queries=[]) for i in range(len(seeds))]
    gains = np.zeros((len(seeds), 5))  # per env, summed over its planning queries: how much closer to the goal pose
    # the base candidate brought the block (candidate_distance), the chosen and the best candidate more, switched, 1
    query = 0
    while not done.all():
        qseeds = query_seeds(seeds, query)
        if cfg.best_of > 1:
            judge = (lambda c: -candidate_distance(env, c, cfg.action_steps)) if cfg.oracle else None
            actions, values, best, x0, candidates = plan_best_of_n(p, planner, obs, cfg, qseeds, judge)
            left = (-values.cpu().numpy() if cfg.oracle  # the judge has already played them
                    else candidate_distance(env, candidates.float().cpu().numpy(), cfg.action_steps))  # (B, N)
            chosen = best.cpu().numpy()
            base = left[:, 0]
            gains[~done] += np.stack([env.goal_distance() - base, base - left[np.arange(len(seeds)), chosen],
                                      base - left.min(1), chosen > 0, np.ones(len(seeds))], 1)[~done]
        else:
            actions, x0, value = act(p, obs, cfg.num_steps, seed=qseeds, sigma_min=cfg.sigma_min)
            values, best = value[:, None], torch.zeros(len(seeds), dtype=torch.long)
        if rollouts is not None:
            imagined = imagine(p, obs, x0) if cfg.gifs else None
            for i in np.nonzero(~done)[0]:
                if offset + i < cfg.gifs:
                    trace[i]["queries"].append((len(trace[i]["action"]), imagined[i], values[i].tolist(), int(best[i])))
        actions = actions.cpu().numpy()
        for k in range(min(cfg.action_steps, actions.shape[1])):
            was_done = done.copy()
            obs, reward, term, trunc, info = env.step(actions[:, k])
            bar.update()
            max_cov = np.maximum(max_cov, np.where(was_done, 0, info["coverage"]))
            success |= info["is_success"] & ~was_done
            done |= term | trunc
            if rollouts is not None:
                for i in np.nonzero(~was_done)[0]:
                    trace[i]["action"].append(actions[i, k])
                    for name, v in obs.items():
                        trace[i]["obs"][name].append(v[i])
            if done.all():
                break
        query += 1
    bar.update(bar_end - bar.n)  # episodes that all ended early skip the rest of the step budget
    for i, t in enumerate(trace):
        if rollouts is not None:
            acts = np.stack(t["action"] + t["action"][-1:])  # the final row repeats the last action (demo format)
            rollouts.append(dict(**{k: np.stack(v) for k, v in t["obs"].items()}, action=acts,
                                 success=bool(success[i]), seed=seeds[i]))
        if offset + i < cfg.gifs:
            write_gif(cfg, p, t, seeds[i], bool(success[i]))
    return [dict(zip(EPISODE_FIELDS, (bool(s), float(c), g.tolist(), float(a), float(d0), float(d1))))
            for s, c, g, a, d0, d1 in zip(success, max_cov, gains, start_angle, start_distance, env.goal_distance())]


EPISODE_FIELDS = ("success", "max_coverage", "planning_gains", "start_angle", "start_distance", "final_distance")


# Where the pusher starts, seen from the block (sim_env.VecPushEnv.approach_angle): on the goal's side it must first
# go around the block, where most policies measured succeed in 2-7% of episodes against 48-80% from behind (README).
START_ANGLES = ((0, 30, "on the goal's side: around the block first"), (30, 90, "beside it"),
                (90, 180, "behind it"))


def by_start(results):
    """Success per START_ANGLES bucket, and how far the failures' blocks end from the goal pose against where they
    started (median, table units: sim_env.VecPushEnv.goal_distance): failures that pushed the block away, into the
    rim, end further than they began."""
    angle, ok = (np.array([r[k] for r in results]) for k in ("start_angle", "success"))
    which = np.digitize(angle, [lo for lo, _, _ in START_ANGLES[1:]])  # (E,) bucket index; 180 falls in the last
    buckets = [{"degrees": [lo, hi], "start": name, "episodes": int(m.sum()),
                "success_rate": float(ok[m].mean()) if m.any() else None}
               for j, (lo, hi, name) in enumerate(START_ANGLES) for m in [which == j]]
    failed = [r for r in results if not r["success"]]
    ends = {f"failures_median_{k}": float(np.median([r[k] for r in failed])) if failed else None
            for k in ("start_distance", "final_distance")}
    return {"buckets": buckets, "failures": len(failed), **ends}


@torch.no_grad()
def imagine(p, obs, x0):
    """Decode the predicted future images: restore the non-image latents first (undo_injection), then decode."""
    x = li.undo_injection(x0, condition_latent(p, obs, full=True), p.layout)
    video = p.vae.decode(x).float().clamp(-1, 1)  # (B, 3, 1+4(T-1), S, S); latent k >= 1 decodes to frames 4(k-1)+1..4k
    frames = {s.name: video[:, :, 4 * (p.layout.index(s.name) - 1) + 1] for s in p.layout.slots
              if s.kind == "image" and s.future}
    return [{k: ((v[i].permute(1, 2, 0) + 1) * 127.5).round().byte().cpu().numpy() for k, v in frames.items()}
            for i in range(x0.shape[0])]


def write_gif(cfg, p, trace, seed, success, scale=3):
    """Each frame, both cameras three times: now | imagined at the last query's t+K | real at that t+K, with every
    candidate's predicted value (the executed one starred). Panels are upscaled `scale` times."""
    os.makedirs(os.path.join(os.path.dirname(os.path.abspath(cfg.ckpt)), "gifs"), exist_ok=True)
    k, obs, last = p.layout.action_chunk, trace["obs"], len(trace["obs"]["primary"]) - 1
    s = p.image_size * scale
    frames, queries, current = [], {q[0]: q for q in trace["queries"]}, None
    big = lambda a: Image.fromarray(a).resize((s, s), Image.NEAREST)  # noqa: E731
    for t in range(last + 1):
        current = queries.get(t, current)
        canvas = Image.new("RGB", (6 * s, s + 28), "white")
        draw = ImageDraw.Draw(canvas)
        for j, label in enumerate(("now: primary, wrist", "imagined t+K", "real t+K")):
            draw.text((2 * j * s + 2, 14), label, fill="black")
        for c, cam in enumerate(("primary", "wrist")):
            canvas.paste(big(obs[cam][t]), (c * s, 28))
            if current is not None:
                canvas.paste(big(current[1]["future_" + cam]), ((2 + c) * s, 28))
                canvas.paste(big(obs[cam][min(current[0] + k, last)]), ((4 + c) * s, 28))
        text = f"seed {seed} t={t} K={k}"
        if current is not None:
            text += "  V(s'): " + " ".join(("*" if i == current[3] else "") + f"{v:.2f}"
                                           for i, v in enumerate(current[2]))
        draw.text((2, 1), text, fill="black")
        frames.append(canvas)
    path = os.path.join(os.path.dirname(os.path.abspath(cfg.ckpt)), "gifs",
                        f"seed{seed}_{'success' if success else 'fail'}.gif")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


# ----------------------------------------------------------------------------- full scale: the released LIBERO model

LIBERO_FILES = {"dit": "Cosmos-Policy-LIBERO-Predict2-2B.pt", "vae": "tokenizer.pth",
                "stats": "libero_dataset_statistics.json", "t5": "libero_t5_embeddings.pkl"}


def libero_files(folder):
    """{dit, vae, stats, t5} paths of the four released files in `folder` (tokenizer.pth there or in tokenizer/)."""
    paths = {k: os.path.join(folder, name) for k, name in LIBERO_FILES.items()}
    if not os.path.exists(paths["vae"]):
        paths["vae"] = os.path.join(folder, "tokenizer", LIBERO_FILES["vae"])
    missing = [p for p in paths.values() if not os.path.exists(p)]
    assert not missing, f"missing {missing}; expected {sorted(LIBERO_FILES.values())} in {folder}"
    return paths


def _storage_from_bytes(b):
    # Stands in for torch.storage._load_from_bytes, which would torch.load these bytes with weights_only=False.
    return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only what pickle.dump of {str: torch tensor or numpy array} emits: pickles call every global they need
    through find_class, so a global outside this table (os.system, builtins.eval, any class) is refused unbuilt.
    The table is what torch 2.13 and numpy 2 write (checked with pickletools); numpy 1 names its module numpy.core."""

    ALLOWED = {("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
               ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
               ("collections", "OrderedDict"): collections.OrderedDict,  # a tensor's (empty) backward-hook table
               # numpy's array reconstructor, under its numpy 2 and numpy 1 module names
               ("numpy._core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
               ("numpy.core.multiarray", "_reconstruct"): np.zeros(1).__reduce__()[0],
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            allowed = ", ".join(".".join(k) for k in self.ALLOWED)
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a T5 embedding file holds only "
                                         f"{{str: tensor}} (allowed: {allowed})")
        return self.ALLOWED[(module, name)]


def load_t5_embeddings(path):
    """{instruction: (L, D) tensor} from a pickled {str: (1, L, D) or (L, D) tensor or array} (the official
    *_t5_embeddings.pkl: bf16 (1, 512, 1024)). The file is untrusted input: only tensors and arrays are built."""
    with open(path, "rb") as f:
        data = _RestrictedUnpickler(f).load()
    assert isinstance(data, dict) and data, f"{path}: expected a non-empty {{instruction: embedding}} dict"
    out = {}
    for text, emb in data.items():
        assert isinstance(text, str) and isinstance(emb, (torch.Tensor, np.ndarray)), \
            f"{path}: entry {text!r} is {type(emb).__name__}, not a tensor or array"
        emb = torch.as_tensor(emb).detach()  # detach: no autograd state or hooks from the file survive
        emb = emb[0] if emb.ndim == 3 and emb.shape[0] == 1 else emb  # (L, D)
        assert emb.ndim == 2 and emb.is_floating_point(), f"{path}: {text!r} has shape {tuple(emb.shape)}"
        out[text] = emb
    return out


def load_libero_stats(path, layout):
    """{"action": (lo (A,), hi (A,)), "proprio": (lo (P,), hi (P,))} from the released dataset statistics JSON."""
    with open(path) as f:
        js = json.load(f)
    stats = {}
    for name, key, dim in (("action", "actions", layout.action_dim), ("proprio", "proprio", layout.proprio_dim)):
        missing = [k for k in (f"{key}_min", f"{key}_max") if k not in js]
        assert not missing, f"{path}: missing {missing} (has {sorted(js)})"
        lo, hi = (torch.tensor(js[f"{key}_{m}"], dtype=torch.float32) for m in ("min", "max"))
        assert lo.shape == hi.shape == (dim,), f"{path}: {key}_min/max must hold {dim} numbers, got {lo.shape}"
        stats[name] = (lo, hi)
    return stats


def load_libero(dit, vae, stats, t5, device="cpu", dtype=torch.bfloat16, dit_cfg=None, vae_cfg=None, layout=None,
                image_size=224):
    """Policy from the released files (paths): the DiT checkpoint (`net.` keys), the Wan2.1 tokenizer.pth, the
    dataset statistics and the T5 embeddings. Configs default to the real ones; tests pass tiny ones."""
    dit_cfg, vae_cfg = dit_cfg or DiTConfig.cosmos_predict2_2b(), vae_cfg or VAEConfig.wan21()
    layout = layout or li.Layout.libero()
    assert image_size % 16 == 0, f"image_size {image_size}: the VAE (x8) and the DiT patch (x2) need a multiple of 16"
    instructions = load_t5_embeddings(t5)
    width = {e.shape[1] for e in instructions.values()}
    assert width == {dit_cfg.crossattn_emb_channels}, f"T5 widths {width} != DiT {dit_cfg.crossattn_emb_channels}"
    return Policy(dit=load_dit(dit, dit_cfg, device=device, dtype=dtype),
                  vae=load_vae(vae, vae_cfg, device=device, dtype=dtype), layout=layout,
                  stats={k: (lo.to(device), hi.to(device)) for k, (lo, hi) in load_libero_stats(stats, layout).items()},
                  task_emb=None, task="", image_size=image_size,
                  instructions={k: v.to(device) for k, v in instructions.items()})


def for_instruction(p, instruction):
    """The policy conditioned on one instruction: its T5 embedding becomes the task embedding."""
    if instruction not in p.instructions:
        close = difflib.get_close_matches(instruction, list(p.instructions), n=3)
        raise KeyError(f"no T5 embedding for {instruction!r} ({len(p.instructions)} known; closest: {close})")
    return dataclasses.replace(p, task_emb=p.instructions[instruction], task=instruction)


def libero_image(img, size=224):
    """(H, W, 3) uint8 -> (size, size, 3) uint8, the official test-time path: resize to `size` with PIL's default
    filter (resize_images), then the centre crop of 90% of the area, int(size * sqrt(0.9)) = 212 px, resized back
    bilinearly (apply_image_transforms: training used random 90%-area crops)."""
    assert img.ndim == 3 and img.shape[2] == 3 and img.dtype == np.uint8, f"want (H, W, 3) uint8, got {img.shape}"
    if img.shape[:2] != (size, size):
        img = np.asarray(Image.fromarray(img).resize((size, size)))
    crop = int(size * 0.9 ** 0.5)
    top = int(round((size - crop) / 2))  # torchvision center_crop's offset
    x = torch.from_numpy(np.ascontiguousarray(img[top:top + crop, top:top + crop])).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)  # (1, 3, S, S)
    return x[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


@torch.no_grad()
def libero_act(p, primary, wrist, proprio, instruction, cfg=None, seed=0, planner=None):
    """One LIBERO query in parallel mode (5 steps: action chunk, future images and value from one generation), or
    best-of-N when cfg.best_of > 1 (the planner defaults to the policy itself). Images: (H, W, 3) uint8 after the
    caller's flip and JPEG; proprio: (9,). Returns numpy actions (K, A), future images, the value (and planning)."""
    cfg = cfg or PlanConfig()
    p = for_instruction(p, instruction)
    proprio = np.asarray(proprio, dtype=np.float32)
    assert proprio.shape == (p.layout.proprio_dim,), f"proprio must be ({p.layout.proprio_dim},), got {proprio.shape}"
    obs = {"primary": libero_image(primary, p.image_size)[None], "wrist": libero_image(wrist, p.image_size)[None],
           "proprio": proprio[None]}  # batch of one
    out = {}
    if cfg.best_of > 1:
        planner = p if planner is None else for_instruction(planner, instruction)
        actions, values, best, x0, _ = plan_best_of_n(p, planner, obs, cfg, seed=seed)
        out.update(values=values[0].cpu().numpy(), best=int(best[0]))
    else:
        actions, x0, _ = act(p, obs, cfg.num_steps, seed=seed, sigma_min=cfg.sigma_min)
    return {"actions": actions[0].float().cpu().numpy(), "future_images": imagine(p, obs, x0)[0],
            "value": float(li.read_value(x0, p.layout)[0]), **out}


def libero_main(cfg):
    """--libero: one query from image files; prints JSON and writes the predicted future images."""
    dev = device_of(cfg)
    p = load_libero(**libero_files(cfg.libero), device=dev)
    images = [np.asarray(Image.open(f).convert("RGB")) for f in (cfg.primary, cfg.wrist)]
    res = libero_act(p, *images, cfg.proprio, cfg.instruction, cfg, seed=cfg.seed)
    if cfg.out:
        os.makedirs(cfg.out, exist_ok=True)
        for name, img in res["future_images"].items():
            Image.fromarray(img).save(os.path.join(cfg.out, f"{name}.png"))
    print(json.dumps({"instruction": cfg.instruction, "actions": res["actions"].round(5).tolist(),
                      "value": res["value"], **({"values": res["values"].tolist(), "best": res["best"]}
                                                 if "best" in res else {})}))


def parse_args(argv):
    """The command line as a PlanConfig, its files checked; bad or missing options raise AssertionError, and --help
    prints every option with its default and exits."""
    if train.HELP & set(argv):
        print(train.cli_help(PlanConfig, PlanConfig(), "usage: python plan.py --ckpt=runs/<run>/policy.pt "
                             "[--field=value ...] (see this file's docstring for the four ways to run it). Options:"))
        sys.exit(0)
    c = PlanConfig(**train.cli_overrides(argv, PlanConfig))
    train.check_device(c.device)
    if c.libero:
        assert c.instruction and c.primary and c.wrist and len(c.proprio) == 9, \
            "usage: python plan.py --libero=DIR --instruction=... --primary=a.png --wrist=b.png --proprio=[9 numbers]"
        libero_files(c.libero)
        return c
    assert c.ckpt, "usage: python plan.py --ckpt=runs/<run>/policy.pt [--episodes=200 --best_of=8 ...]"
    assert not c.planning_ckpt or os.path.isfile(c.planning_ckpt), f"--planning_ckpt: no file {c.planning_ckpt}"
    ckpts = checkpoint_paths(c.ckpt)  # names what matches nothing
    for path in ckpts + [c.planning_ckpt] * bool(c.planning_ckpt):
        assert {"dit_config", "vae"} <= set(train.load_file(path, mmap=True)), \
            f"{path} is not a policy checkpoint written by train.py (policy.pt, planner.pt, policy_step<N>.pt, ...)"
    if c.open_loop:
        assert len(ckpts) == 1, f"--open_loop scores one checkpoint; --ckpt={c.ckpt} names {len(ckpts)}"
        ck = train.load_file(ckpts[0], mmap=True)
        train.check_episode_file("open_loop", c.open_loop, ck["task"], ck["image_size"])
    folder = os.path.dirname(os.path.abspath(c.collect_rollouts))
    assert not c.collect_rollouts or os.path.isdir(folder), f"--collect_rollouts: no folder {folder}"
    return c


def main(c):
    if c.libero:
        libero_main(c)
    elif c.open_loop:
        pol = load_policy(c.ckpt, device_of(c))
        demos = sim_env.load_demos(c.open_loop, task=pol.task, image_size=pol.image_size)
        print(json.dumps(open_loop(pol, demos, c.episodes, c.action_steps, c.num_steps, c.seed, c.batch, c.samples,
                                   c.sigma_min)))
    else:
        ckpts = checkpoint_paths(c.ckpt)
        if len(ckpts) > 1:
            evaluate_checkpoints(ckpts, **{k: v for k, v in dataclasses.asdict(c).items() if k != "ckpt"})
        else:
            evaluate(**dataclasses.asdict(c))


if __name__ == "__main__":
    train.run_cli(parse_args, main, "plan.py")
