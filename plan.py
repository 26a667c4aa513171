"""Inference: the policy, best-of-N planning with the model's own world model and value, and evaluation.

Paper: Cosmos Policy (arXiv 2601.16163) §3.3-3.4. Official counterparts (NVlabs/cosmos-policy):
`get_action` / `get_future_state_prediction` / `get_value_prediction` / `aggregate_value_predictions` in
cosmos_policy/experiments/robot/cosmos_utils.py and the best-of-N loop of cosmos_policy/experiments/robot/aloha/deploy.py.

Letters: B environments, N candidates, M world-model samples, V value samples per future, C latent channels,
T latent frames, H/W latent height/width, K chunk length, A action dim, S image size.

One policy query (`act`): encode the current observation as the conditioning prefix of the pseudo-video
(blank, proprio, wrist, primary), then sample the rest (action, future state, value) in `num_steps` network calls.
Best-of-N (`plan_best_of_n`): N candidate chunks in one batch (candidate i uses seed + i); for each, M world-model
samples of s' (action frame clean) and V value samples per s' (everything but the value clean); the M*V values are
aggregated by "majority mean"; the best candidate replaces candidate 0 only if strictly better.

Public: evaluate(ckpt, ...) -> dict (success rate with a 95% Wilson interval, mean max coverage, Push-T score);
load_policy(path) -> Policy; act(policy, obs) -> (actions (B, K, A), x0 (B, C, T, H, W), value (B,));
plan_best_of_n(policy, planner, obs, ...) -> (actions (B, K, A), values (B, N)).
CLI: python plan.py --ckpt=runs/cpu_push_block/policy.pt --episodes=200 [--best_of=8 --planning_ckpt=...]
"""
import ast
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

import diffusion
import latent_injection as li
import sim_env
from dit import DiTConfig, load_dit
from vae import VAEConfig, load_vae


@dataclass
class PlanConfig:
    ckpt: str = ""  # policy checkpoint written by train.py (policy.pt)
    planning_ckpt: str = ""  # a planning model (train.py with rollouts) for futures and values; default: ckpt
    episodes: int = 200
    seed: int = 100_000  # evaluation seeds seed..seed+episodes-1; demos use seeds from 0, so these are held out
    num_steps: int = 5  # denoising steps per action chunk (the paper's LIBERO setting)
    action_steps: int = 8  # actions executed per chunk before re-planning
    best_of: int = 1  # N candidates; 1 = the plain policy
    wm_steps: tuple = (1, 3, 5)  # one world-model sample per entry, with that many steps (official ALOHA planning)
    value_steps: tuple = (1, 2, 3, 4, 5)  # one value sample per entry and per world-model sample
    batch: int = 200  # environments stepped together
    gifs: int = 0  # write a GIF for the first `gifs` episodes
    collect_rollouts: str = ""  # save every episode (successes and failures) to this .npz, in the demo format
    device: str = "auto"

    def __post_init__(self):
        self.wm_steps, self.value_steps = tuple(self.wm_steps), tuple(self.value_steps)
        assert self.best_of >= 1 and self.action_steps >= 1 and self.num_steps >= 1
        assert self.wm_steps and self.value_steps, "need at least one world-model and one value sample"


@dataclass
class Policy:
    dit: torch.nn.Module
    vae: torch.nn.Module
    layout: li.Layout
    stats: dict  # name -> (lo, hi) min-max statistics
    task_emb: torch.Tensor  # (L, D)
    task: str
    image_size: int


def load_policy(path, device="cpu"):
    ck = torch.load(path, map_location="cpu", weights_only=True)
    assert "dit_config" in ck and "vae" in ck, f"{path} is not a policy checkpoint written by train.py"
    lay = ck["layout"]
    layout = li.Layout(**{**lay, "slots": tuple(li.Slot(**s) for s in lay["slots"])})
    return Policy(dit=load_dit(ck["model"], DiTConfig(**ck["dit_config"]), device=device),
                  vae=load_vae(ck["vae"], VAEConfig(**ck["vae_config"]), device=device), layout=layout,
                  stats={k: (lo.to(device), hi.to(device)) for k, (lo, hi) in ck["stats"].items()},
                  task_emb=ck["task_emb"].to(device), task=ck["task"], image_size=ck["image_size"])


def network(p):
    """The DiT as the callable diffusion.sample expects, with the task embedding bound."""
    return lambda x, t, m: p.dit(x, t, p.task_emb.expand(x.shape[0], *p.task_emb.shape), m)


def noise_like(shape, seeds, device):
    """Initial noise, one generator per seed: a candidate's sample depends on its seed, not on the batch it is in."""
    return torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(int(s))) for s in seeds]).to(device)


@torch.no_grad()
def condition_latent(p, obs, full=False):
    """(B, C, T, H, W) latent whose conditioning prefix holds the encoded current state; the rest is zero.

    The future image slots are filled with the current images, as the official get_action does; since the VAE is
    causal, encoding only the prefix's 1+4(num_cond-1) raw frames gives the same prefix latents (full=True encodes
    all frames: the original latents that undo_injection restores before decoding imagined futures).
    """
    dev = p.task_emb.device
    images = {s.name: torch.from_numpy(obs[s.name.removeprefix("future_")]).to(dev) for s in p.layout.slots
              if s.kind == "image"}
    video = li.raw_frames(p.layout, images)  # (B, 3, 1+4(T-1), S, S)
    n = video.shape[2] if full else 1 + 4 * (p.layout.num_cond - 1)
    lat = p.vae.encode(video[:, :, :n])  # (B, C, T or num_cond, H, W)
    x = torch.zeros(lat.shape[:2] + (p.layout.num_frames,) + lat.shape[3:], device=dev)
    x[:, :, :lat.shape[2]] = lat
    proprio = li.normalize(torch.from_numpy(obs["proprio"]).to(dev), *p.stats["proprio"])
    return li.inject_vectors(x, p.layout, proprio=proprio)


@torch.no_grad()
def act(p, obs, num_steps=5, seed=0, x_cond=None):
    """Policy query in parallel mode: action, future state and value from one generation."""
    x_cond = condition_latent(p, obs) if x_cond is None else x_cond
    b = x_cond.shape[0]
    x0 = diffusion.sample(network(p), x_cond, li.condition_mask(p.layout, ["policy"] * b), num_steps,
                          noise=noise_like(x_cond.shape[1:], [seed] * b, x_cond.device))
    actions = li.unnormalize(li.read_action(x0, p.layout), *p.stats["action"])  # (B, K, A)
    return actions, x0, li.read_value(x0, p.layout)


def majority_mean(values, threshold=0.05):
    """(..., S) value samples in [0, 1] -> (...): mean of the samples above `threshold` if they are the majority,
    else 0 (official aggregate_value_predictions, scheme "majority_mean")."""
    above = values > threshold
    mean = (values * above).sum(-1) / above.sum(-1).clamp_min(1)
    return torch.where(above.float().mean(-1) >= 0.5, mean, torch.zeros_like(mean)).clamp(0, 1)


@torch.no_grad()
def plan_best_of_n(p, planner, obs, cfg, seed=0):
    """Best-of-N: returns the chosen chunks (B, K, A), every candidate's aggregated value (B, N) and the chosen
    index (B,). Candidate 0 (the base seed) is kept unless another is strictly better (official deploy.py)."""
    x_cond = condition_latent(p, obs)  # the planner shares the policy's VAE (it is fine-tuned from it)
    b, n = x_cond.shape[0], cfg.best_of
    xc = x_cond.repeat_interleave(n, 0)  # (B*N, C, T, H, W)
    cand = noise_like(xc.shape[1:], [seed + i for _ in range(b) for i in range(n)], xc.device)
    x0 = diffusion.sample(network(p), xc, li.condition_mask(p.layout, ["policy"] * b * n), cfg.num_steps, noise=cand)
    values = []
    for j, wm_steps in enumerate(cfg.wm_steps):
        fut = diffusion.sample(network(planner), x0, li.condition_mask(p.layout, ["world_model"] * b * n), wm_steps,
                               noise=noise_like(xc.shape[1:], [seed + j] * b * n, xc.device))
        for k, v_steps in enumerate(cfg.value_steps):
            v = diffusion.sample(network(planner), fut, li.condition_mask(p.layout, ["value"] * b * n), v_steps,
                                 noise=noise_like(xc.shape[1:], [seed + k] * b * n, xc.device))
            values.append(li.read_value(v, p.layout))
    value = majority_mean(torch.stack(values, -1)).view(b, n)  # (B, N)
    best = value.argmax(1)
    best = torch.where(value.gather(1, best[:, None])[:, 0] > value[:, 0], best, torch.zeros_like(best))
    actions = li.unnormalize(li.read_action(x0, p.layout), *p.stats["action"])  # (B*N, K, A)
    actions = actions.view(b, n, *actions.shape[1:])[torch.arange(b), best]  # (B, K, A)
    return actions, value, best, x0.view(b, n, *x0.shape[1:])[torch.arange(b), best]


def wilson(k, n, z=1.96):
    """95% Wilson score interval of a success rate k/n."""
    if n == 0:
        return 0.0, 0.0
    c, h = (k + z * z / 2) / (n + z * z), z * math.sqrt(k * (n - k) / n + z * z / 4) / (n + z * z)
    return max(0.0, c - h), min(1.0, c + h)


def evaluate(ckpt, episodes=200, device="auto", **overrides):
    """Roll out `episodes` seeded episodes, environments stepped together and queries batched. Prints one line."""
    cfg = PlanConfig(ckpt=ckpt, episodes=episodes, device=str(device), **overrides)
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    p = load_policy(cfg.ckpt, dev)
    planner = load_policy(cfg.planning_ckpt, dev) if cfg.planning_ckpt else p
    record = bool(cfg.gifs or cfg.collect_rollouts)
    results, rollouts, t0 = [], [], time.perf_counter()
    for start in tqdm(range(0, cfg.episodes, cfg.batch), desc="evaluate", disable=cfg.episodes <= cfg.batch):
        seeds = list(range(cfg.seed + start, cfg.seed + min(start + cfg.batch, cfg.episodes)))
        results += run_batch(cfg, p, planner, seeds, rollouts if record else None, start)
    success = np.array([r["success"] for r in results])
    lo, hi = wilson(int(success.sum()), len(success))
    summary = {"task": p.task, "episodes": len(results), "success_rate": float(success.mean()), "ci95": [lo, hi],
               "mean_max_coverage": float(np.mean([r["max_coverage"] for r in results])),
               "pusht_score": float(np.mean([min(r["max_coverage"] / 0.95, 1.0) for r in results])),
               "best_of": cfg.best_of, "seconds": round(time.perf_counter() - t0, 1)}
    print(f"eval {p.task}: success {summary['success_rate']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over {len(results)} "
          f"episodes, mean max coverage {summary['mean_max_coverage']:.3f}, best-of-{cfg.best_of}")
    if cfg.collect_rollouts:
        sim_env.save_episodes(cfg.collect_rollouts, rollouts, p.task, p.image_size)
    return summary


def run_batch(cfg, p, planner, seeds, rollouts, offset):
    env = sim_env.VecPushEnv(p.task, len(seeds), image_size=p.image_size)
    obs, info = env.reset(seeds)
    done = np.zeros(len(seeds), bool)
    max_cov, success = info["coverage"].copy(), info["is_success"].copy()
    trace = [dict(obs={k: [v[i]] for k, v in obs.items()}, action=[], frames=[], queries=[]) for i in range(len(seeds))]
    query = 0
    while not done.all():
        if cfg.best_of > 1:
            actions, values, best, x0 = plan_best_of_n(p, planner, obs, cfg, seed=cfg.seed + query)
        else:
            actions, x0, value = act(p, obs, cfg.num_steps, seed=cfg.seed + query)
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
    for i, t in enumerate(trace):
        if rollouts is not None:
            acts = np.stack(t["action"] + t["action"][-1:])  # the final row repeats the last action (demo format)
            rollouts.append(dict(**{k: np.stack(v) for k, v in t["obs"].items()}, action=acts,
                                 success=bool(success[i]), seed=seeds[i]))
        if offset + i < cfg.gifs:
            write_gif(cfg, p, t, seeds[i], bool(success[i]))
    return [dict(success=bool(s), max_coverage=float(c)) for s, c in zip(success, max_cov)]


@torch.no_grad()
def imagine(p, obs, x0):
    """Decode the predicted future images: restore the non-image latents first (undo_injection), then decode."""
    x = li.undo_injection(x0, condition_latent(p, obs, full=True), p.layout)
    video = p.vae.decode(x).clamp(-1, 1)  # (B, 3, 1+4(T-1), S, S); latent k >= 1 decodes to frames 4(k-1)+1..4k
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
        for j, label in enumerate(("now", "imagined t+K", "real t+K")):
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


def parse_args(argv):
    kv = dict(a[2:].split("=", 1) for a in argv if a.startswith("--") and "=" in a)
    fields = {f.name for f in dataclasses.fields(PlanConfig)}
    unknown = sorted(set(kv) - fields)
    assert not unknown, f"unknown option(s) {unknown}; valid: {sorted(fields)}"
    vals = {}
    for k, v in kv.items():
        try:
            vals[k] = ast.literal_eval(v)
        except (ValueError, SyntaxError):
            vals[k] = v
    return PlanConfig(**vals)


if __name__ == "__main__":
    c = parse_args(sys.argv[1:])
    assert c.ckpt, "usage: python plan.py --ckpt=runs/<run>/policy.pt [--episodes=200 --best_of=8 ...]"
    evaluate(**dataclasses.asdict(c))
