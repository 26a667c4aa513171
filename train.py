"""Training: the tiny Wan VAE, video pretraining, and Cosmos Policy's single-stage fine-tuning, in one loop.

Paper: Cosmos Policy (arXiv 2601.16163) §3. Official counterpart: the imaginaire trainer driving
`CosmosPolicyVideo2WorldModel.training_step` (NVlabs/cosmos-policy, cosmos_policy/models/policy_video2world_model.py)
with the LIBERO dataset of cosmos_policy/datasets/libero_dataset.py. Here all of it is one file and one loop.

Stages (`--stage=all` runs them in order, skipping what is already done in the run folder):
  demos  : scripted-expert demonstrations (sim_env.collect_demos) and action-free "play" videos for pretraining.
  vae    : train the tiny Wan-architecture VAE (reconstruction + small KL; --vae_long_steps ends it on clips as long
           as the pseudo-videos), then measure the per-channel latent mean/std that normalise latents (the role of
           Wan2.1's 16 constants); vae_recon.png shows what it keeps, and a warning says when every view reconstructs
           no better than the images' average (a blind VAE).
  video  : pretrain the DiT as a plain video model on 1+4(T-1) consecutive real frames, the first latent frames as
           conditioning: our stand-in for Cosmos-Predict2's pretraining.
  policy : the paper's fine-tuning. Each sample is a pseudo-video (Layout.toy(): blank, proprio, wrist, primary,
           action, future proprio, future wrist, future primary, value) encoded by the VAE, with proprio, action and
           value injected as latent frames. Batches mix 50% policy, 25% world-model and 25% value samples.
  eval   : plan.evaluate on held-out seeds. One run's checkpoints differ by tens of points (README), so with kept
           checkpoints (--keep_every) it can evaluate the average of the last N's weights (--average=N, policy_avg.pt).

Letters: B batch, C latent channels, T latent frames, H/W latent height/width, K chunk length, A action dim,
P proprio dim, L text tokens, D text width. Checkpoints are plain dicts (config inside), written atomically; an
interrupted run (Ctrl-C, SIGTERM) saves its exact state and `python train.py` with the same flags resumes it. Each
stage's logged losses are kept in its checkpoint and drawn into <stage>_loss.png (plot_history).
"""
import ast
import contextlib
import dataclasses
import glob
import hashlib
import inspect
import os
import pickle
import re
import signal
import sys
import time
import zlib
from dataclasses import asdict, dataclass

from einops import rearrange
import numpy as np
from PIL import Image, ImageDraw
import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from tqdm import tqdm

import diffusion
import latent_injection as li
import sim_env
from dit import DiT, DiTConfig, load_dit
from vae import VAEConfig, WanVAE, load_vae


@dataclass
class TrainConfig:
    task: str = "push_block"  # push_block | push_t
    run_dir: str = ""  # default: runs/<preset>_<task>
    stage: str = "all"  # all | demos | vae | video | policy | eval
    init: str = "video"  # policy init: video (our pretraining) | scratch | path to a DiT checkpoint (official .pt too)
    rollouts: tuple = ()  # rollout .npz files (plan.py --collect_rollouts), comma-separated: trains a planner
    relative_actions: bool = True  # chunks as offsets from the pusher's position at the chunk's start (action_chunks)
    proprio_dim: int = 2  # the pusher's position, as Push-T's agent_pos; 4 adds its velocity, a shortcut (README)
    action_quantile: float = 0.0  # action range: min/max of the demos (0, official) or their q..1-q quantiles, clipped
    action_loss_multiplier: int = 1  # official option: weight of the action frame in the loss (paper configs: 1)
    demo_prob: float = 0.5  # share of policy samples; the rest are rollouts, half world-model, half value (paper)
    value_sprime: bool = False  # value samples see s' only, loss on the value frame (official ALOHA planning model)
    device: str = "auto"  # auto (a GPU when there is one) | cpu | cuda | cuda:1 ...
    bf16: bool = False  # bf16 autocast (GPU)
    compile: bool = False  # torch.compile the DiT
    fsdp: bool = False  # under torchrun: shard the DiT with FSDP2 (per block) instead of DDP; for the 2B model
    grad_accum: int = 1  # micro-steps per optimizer step
    grad_checkpointing: bool = False  # recompute each DiT block in backward: activation memory for compute
    dit: str = "toy"  # toy (width/blocks/heads below) | cosmos_predict2_2b (the released architecture)
    seed: int = 0  # demos, VAE, video model and policy: every draw of a run
    image_size: int = 64  # pixels per side, both cameras
    n_demos: int = 200  # expert episodes attempted; only successes are kept
    n_play: int = 200  # action-free episodes (a noisier expert) for video pretraining
    play_noise: float = 0.1  # expert target noise (table units): ~50% success, long episodes full of pushing
    demo_explore: float = 0.0  # DART: noise on the demos' executed targets, recorded clean (sim_env.collect_demos)
    demo_margin: float = 0.0  # the expert's extra clearance from the block on its way round it (sim_env.expert_actions)
    n_clips: int = 4000  # 33-frame video clips encoded for pretraining
    vae: str = ""  # path to the official Wan2.1 tokenizer.pth: use it instead of training a VAE (with --dit=...2b)
    vae_dim: int = 8  # the VAE's base channel width (Wan2.1: 96)
    vae_dim_mult: tuple = (1, 2, 4, 4)  # Wan2.1's; (1, 2, 4) keeps a 4x finer latent grid (x4 in space, not x8)
    width: int = 128  # DiT model_channels
    blocks: int = 4  # DiT blocks
    heads: int = 4  # DiT attention heads
    action_chunk: int = 16  # K; plan.py executes the first `action_steps` of each chunk
    vae_steps: int = 2000  # VAE training steps
    vae_batch: int = 8  # 9-frame clips; the VAE, not the DiT, dominates CPU time
    vae_lr: float = 3e-3  # the VAE's peak learning rate
    vae_long_steps: int = 0  # then VAE steps on clips as long as the pseudo-videos, at a tenth of the rate (README)
    video_steps: int = 2000  # video pretraining steps
    policy_steps: int = 4000  # policy (or planner) steps; raising it continues a finished run
    batch_size: int = 32  # DiT samples per process and micro-step (the global batch: x processes x grad_accum)
    lr: float = 3e-4  # the DiT's peak learning rate (AdamW)
    warmup: int = 200  # linear warm-up steps, at most a tenth of a stage's steps
    lr_final: float = 0.3  # the policy's linear decay ends at lr_final x lr (official LambdaLinearScheduler: 0.3)
    weight_decay: float = 0.1  # the official AdamW applies it to every parameter
    log_every: int = 100  # steps between loss prints (each the mean since the last)
    ckpt_every: int = 500  # steps between checkpoints (also at the end and on Ctrl-C or SIGTERM)
    keep_every: int = 0  # > 0: also keep policy_step<N>.pt (planner_...) every N steps and the last (weights only)
    average: int = 0  # > 0: eval scores the uniform average of the last N kept checkpoints' weights (<name>_avg.pt)
    eval_episodes: int = 200  # the closing evaluation, on the held-out test seeds (plan.py, 100000 up)
    eval_steps: int = 5  # denoising steps per action chunk (the paper's LIBERO setting)

    def __post_init__(self):
        assert self.task in ("push_block", "push_t"), f"unknown task {self.task!r}"
        assert self.stage in ("all", "demos", "vae", "video", "policy", "eval"), f"unknown stage {self.stage!r}"
        assert self.dit in ("toy", "cosmos_predict2_2b"), f"unknown dit {self.dit!r}"
        assert 0.0 <= self.lr_final <= 1.0, f"lr_final {self.lr_final} must be in [0, 1] (a fraction of lr)"
        assert self.proprio_dim in (2, 4), f"proprio_dim {self.proprio_dim}: 2 (position) or 4 (and velocity)"
        assert self.action_loss_multiplier >= 1, "action_loss_multiplier must be >= 1 (official: an integer upweight)"
        counts = ("n_demos", "n_play", "n_clips", "vae_steps", "video_steps", "policy_steps", "batch_size",
                  "grad_accum", "width", "blocks", "heads", "action_chunk", "log_every", "ckpt_every", "eval_episodes",
                  "eval_steps")
        small = {k: getattr(self, k) for k in counts if getattr(self, k) < 1}
        assert not small, f"{small}: these must be >= 1"
        negative = {k: getattr(self, k) for k in ("warmup", "keep_every", "average", "demo_margin", "vae_long_steps")
                    if getattr(self, k) < 0}
        assert not negative, f"{negative}: these must be >= 0"
        assert self.vae_batch >= 2 and self.vae_batch % 2 == 0, \
            f"vae_batch {self.vae_batch}: an even number >= 2 (half pseudo-video clips, half real ones)"
        assert self.width % self.heads == 0, f"width {self.width} must be divisible by heads {self.heads}"
        multiple = 2 ** len(self.vae_dim_mult)  # the VAE's spatial factor, 2^(levels - 1), times the DiT's 2x2 patch
        assert self.image_size % multiple == 0, \
            f"image_size {self.image_size} must be a multiple of {multiple} with vae_dim_mult {self.vae_dim_mult}"
        assert not self.average or self.keep_every or self.stage != "all", \
            "--average averages kept checkpoints: add --keep_every=N (or --average=0)"
        self.rollouts = tuple(self.rollouts.split(",") if isinstance(self.rollouts, str) else self.rollouts)
        self.vae_dim_mult = tuple(self.vae_dim_mult)
        assert all(isinstance(m, int) and m >= 1 for m in self.vae_dim_mult), \
            f"vae_dim_mult {self.vae_dim_mult}: channel multipliers, positive integers such as (1, 2, 4)"
        kept = self.policy_steps // self.keep_every if self.keep_every else 0
        assert kept <= 50, f"--keep_every={self.keep_every} would keep {kept} checkpoints of {self.policy_steps} " \
            f"policy steps: raise it (e.g. --keep_every={-(-self.policy_steps // 5)})"

    @classmethod
    def smoke(cls):  # the whole pipeline in well under a minute on 2 CPU cores: proves it runs, learns nothing
        return cls(n_demos=3, n_play=2, n_clips=16, image_size=32, vae_dim=4, width=32, blocks=1, heads=2,
                   vae_steps=5, video_steps=5, policy_steps=5, batch_size=4, warmup=2, log_every=5, ckpt_every=5,
                   keep_every=3, average=2, eval_episodes=2, eval_steps=1)

    @classmethod
    def cpu(cls):  # a newcomer's run on 2 CPU cores, measured in the README
        # The VAE sits on a plateau (empty table, no block) for the first ~200 steps (batch 4; ~350 at batch 8). The
        # policy is optimisation-bound here (success grows with steps): batch 8 runs as many samples per second as 16
        # and twice the steps (17% vs 9% for 1600 x 16, README; batch 4 loses samples/s). 40 demos fit the 15-minute
        # budget; more help most (6400 steps: 42.5% with 160 vs 24.5% with 40; 12800 steps on 40: 21.0%, README).
        # push_t's thin T needs more: with --vae_batch=8 --vae_steps=4000 its VAE keeps the colours and the angle.
        # One run's checkpoints differ by tens of points. Kept every 800 steps, only 2400 and the last (3200) ever did
        # best on validation seeds. Their weights' average beat the better of the two chosen on 50 validation seeds,
        # and annealing the rate to 0 instead of the official 0.3x narrowed the spread over training seeds 0-5 from
        # 7.5-30.5% to 10.0-19.5%: all six clearly above random, where the 0.3x ending left one touching it (README).
        return cls(n_demos=40, n_play=40, n_clips=600, image_size=32, vae_dim_mult=(1, 2, 4), width=128, blocks=4,
                   heads=4, vae_steps=800, vae_batch=4, video_steps=600, policy_steps=3200, batch_size=8, lr=7e-4,
                   warmup=100, lr_final=0.0, keep_every=2400, average=2, eval_episodes=100)

    @classmethod
    def gpu(cls):  # the results-table size
        return cls(n_demos=300, n_play=300, n_clips=8000, image_size=64, vae_dim=16, width=256, blocks=8, heads=8,
                   vae_steps=4000, video_steps=10000, policy_steps=20000, batch_size=64, lr=2e-4, warmup=1000)


# ----------------------------------------------------------------------------- models and data


def task_embedding(task, tokens=8, width=32):
    """(L, D) fixed text embedding per task: the stand-in for the T5 instruction embedding (no T5 at toy scale)."""
    g = torch.Generator().manual_seed(zlib.crc32(task.encode()))
    return torch.randn(tokens, width, generator=g)  # (L, D)


def dit_config(cfg):
    if cfg.dit == "cosmos_predict2_2b":
        return dataclasses.replace(DiTConfig.cosmos_predict2_2b(), grad_checkpointing=cfg.grad_checkpointing)
    return dataclasses.replace(DiTConfig.tiny(), model_channels=cfg.width, num_blocks=cfg.blocks, num_heads=cfg.heads,
                               adaln_lora_dim=cfg.width // 4, crossattn_emb_channels=32,
                               grad_checkpointing=cfg.grad_checkpointing)


def vae_config(cfg):
    """The toy VAE before training: latent statistics 0/1 until stage_vae measures them."""
    return dataclasses.replace(VAEConfig.tiny(), dim=cfg.vae_dim, dim_mult=cfg.vae_dim_mult, latent_mean=(0.0,) * 16,
                               latent_std=(1.0,) * 16,  # x4 in time always: the last two levels halve T
                               temperal_downsample=(False,) * (len(cfg.vae_dim_mult) - 3) + (True, True))


def episode_index(data, chunk):
    """Per-row bookkeeping of a demo/rollout file: sample rows, their future row, chunk rows, value targets."""
    lens = torch.as_tensor(data["episode_len"])
    last = torch.repeat_interleave(torch.cumsum(lens, 0) - 1, lens)  # (R,) last row of each row's episode
    ep = torch.repeat_interleave(torch.arange(len(lens)), lens)  # (R,)
    rows = torch.nonzero(torch.arange(len(last)) < last).squeeze(1)  # every row but the final observation
    fut = torch.minimum(rows + chunk, last[rows])  # s' is K steps ahead, or the episode's end
    chunk_rows = torch.minimum(rows[:, None] + torch.arange(chunk), last[rows, None])  # (N, K): last action repeats
    success = torch.as_tensor(data["success"])[ep[rows]]
    return rows, fut, chunk_rows, last[rows] - fut, success


def action_chunks(data, rows, chunk_rows, relative):
    """(N, K, A) the demonstrated chunk of each sample. relative: minus the current position (the first A proprio
    numbers), as LIBERO's actions are displacements; plan.env_actions adds it back. Standing still is then 0 for every
    state, so the DiT learns where to push next rather than copying the pusher's absolute position into 16 targets
    (measured: 17% vs 4% success at equal steps, README)."""
    chunk = torch.from_numpy(data["action"])[chunk_rows]  # (N, K, A)
    if relative:
        chunk = chunk - torch.from_numpy(data["proprio"])[rows, None, :chunk.shape[-1]]
    return chunk


@torch.no_grad()
def encode_pseudo_videos(vae, layout, data, rows, fut, device, batch=8, partial=None):
    """VAE latents (N, C, T, H, W) of each sample's pseudo-video: current images at `rows`, future ones at `fut`.

    Batches of 8, not more: on CPU, bigger ones spend more time in the kernel's page faults than in convolutions
    (256 samples on 2 cores: 7.1 s at batch 32, 3.4 s at 8, the same latents bit for bit).
    """
    def video(i, j):
        r, f = rows[i:j].numpy(), fut[i:j].numpy()
        images = {"wrist": data["wrist"][r], "primary": data["primary"][r],
                  "future_wrist": data["wrist"][f], "future_primary": data["primary"][f]}
        return li.raw_frames(layout, {k: torch.from_numpy(v).to(device) for k, v in images.items()})
    return encode_batches(vae, len(rows), batch, video, "encode pseudo-videos", partial)  # (N, C, T, H, W)


def clip_starts(episode_len, frames):
    """(W,) first rows of every window of `frames` consecutive rows that stays inside one episode."""
    lens = torch.as_tensor(episode_len)
    return torch.cat([torch.arange(s, s + n - frames + 1) for s, n in zip(torch.cumsum(lens, 0) - lens, lens)
                      if n >= frames] or [torch.zeros(0, dtype=torch.long)])


@torch.no_grad()
def encode_clips(vae, data, n_clips, frames, device, gen, batch=8, partial=None):
    """VAE latents of `n_clips` random windows of `frames` consecutive real frames of either camera."""
    starts = clip_starts(data["episode_len"], frames)
    assert len(starts), f"no episode has {frames} frames for video pretraining"
    pick = starts[torch.randint(len(starts), (n_clips,), generator=gen)]
    cams = torch.randint(2, (n_clips,), generator=gen)

    def video(i, j):
        idx = (pick[i:j, None] + torch.arange(frames)).numpy()  # (b, F) rows
        clip = np.stack([data[("wrist", "primary")[c]][r] for c, r in zip(cams[i:j].tolist(), idx)])
        return torch.from_numpy(clip).to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # (b, 3, F, S, S)
    return encode_batches(vae, n_clips, batch, video, "encode video clips", partial)  # (N, C, T, H, W)


@torch.no_grad()
def encode_batches(vae, n, batch, video, desc, partial=None):
    """torch.cat of vae.encode(video(i, j)), in half precision on the CPU, over the slices [i, j) of range(n), `batch`
    at a time. With `partial`, the finished batches are saved there each minute and on an interruption, and the next
    call resumes from them: an encode of many minutes loses at most one."""
    out = load_file(partial) if partial and os.path.exists(partial) else []
    saved = time.perf_counter()
    try:
        for i in tqdm(range(len(out) * batch, n, batch), initial=len(out), total=-(-n // batch), desc=desc,
                      leave=False):
            out.append(vae.encode(video(i, min(i + batch, n))).half().cpu())
            if partial and time.perf_counter() - saved > 60:
                save_atomic(out, partial)
                saved = time.perf_counter()
    except BaseException:  # Ctrl-C too: keep what is done, then stop as asked
        if partial:
            save_atomic(out, partial)
        raise
    return torch.cat(out)


def rank_world():
    """(rank, world size): (0, 1) unless torchrun started us and main() joined the process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def cached(path, make):
    """Load `path`, building it first with `make(partial)` (rank 0 only) if absent: an encode is never done twice,
    and an interrupted one resumes from `<path>.partial` (encode_batches)."""
    rank, world = rank_world()
    if rank == 0 and not os.path.exists(path):
        save_atomic(make(f"{path}.partial"), path)
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{path}.partial")
    if world > 1:
        dist.barrier()
    return load_file(path)


def save_atomic(obj, path):
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: two runs writing the same file never share a temp file
    torch.save(obj, tmp)
    os.replace(tmp, path)  # a crash mid-write never leaves a truncated checkpoint


def load_file(path, **kwargs):
    """The checkpoint at `path`, loaded on the CPU with weights_only=True. A file that is no torch file (cut short by
    a full disk or a copy, or of another format) raises AssertionError naming it and the fix, not the unpickler's
    riddle."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except (RuntimeError, pickle.UnpicklingError, EOFError, KeyError, ValueError) as e:
        raise AssertionError(f"{path} is not a readable torch file ({type(e).__name__}: {str(e)[:100]}); if it was "
                             f"cut short, delete it and rerun to rebuild it") from e


# ----------------------------------------------------------------------------- the one training loop


# The options a stage's checkpoint is built from (its step count aside: raising it continues training); the data's
# and the VAE's are checked once, at the VAE. A checkpoint already in the run folder is resumed or reused as it is,
# whatever the command line now says, so a difference is reported: `--seed=1` in seed 0's folder would re-score seed 0.
DIT_OPTIONS = ("dit", "width", "blocks", "heads", "action_chunk", "batch_size", "lr", "warmup", "weight_decay",
               "grad_accum")
BUILT_FROM = {"vae": ("task", "seed", "image_size", "n_demos", "n_play", "play_noise", "demo_explore", "demo_margin",
                      "vae", "vae_dim", "vae_dim_mult", "vae_batch", "vae_lr"),
              "video": ("n_clips",) + DIT_OPTIONS,
              "policy": ("init", "rollouts", "relative_actions", "proprio_dim", "action_quantile",
                         "action_loss_multiplier", "demo_prob", "value_sprime", "lr_final") + DIT_OPTIONS}


def changed_options(cfg, saved, stage):
    """{option: (saved value, value now)} over BUILT_FROM[stage], for a checkpoint whose train_config is `saved`."""
    return {k: (saved[k], getattr(cfg, k)) for k in BUILT_FROM[stage] if k in saved and saved[k] != getattr(cfg, k)}


def learning_rate(step, steps, lr, warmup, final):
    """The rate of 0-based `step`: linear warm-up over `warmup` steps, then linear decay that would reach final * lr
    one step after the last (the official LambdaLinearScheduler's first cycle, final 0.3)."""
    decay = (1.0 - final) * max(0, step - warmup) / max(1, steps - warmup)
    return lr * min((step + 1) / warmup, 1.0 - decay)


def train_loop(cfg, name, model, steps, lr, batch_size, make_batch, compute_loss, extra, device):
    """The loop shared by all stages: batch -> loss -> backward -> clip -> AdamW step -> log -> checkpoint.

    Resumes from `<run_dir>/<name>.pt` if present; on SIGINT/SIGTERM saves the exact state and exits, so a rerun
    continues bit-for-bit. `extra` (configs, stats) is stored in the checkpoint for plan.py. Under torchrun the
    model is wrapped in DDP, or sharded with FSDP2 (`--fsdp=True`, per DiT block); each rank draws its own batches;
    `batch_size` is per rank and per micro-step, so the global batch is batch_size * world * grad_accum. With
    cfg.keep_every = N the policy's weights of every N-th step and the last also stay, as `<name>_step<N>.pt`, to
    compare checkpoints (Diffusion Policy reports the best and the last k's mean: plan.evaluate_checkpoints) or
    average the last few (average_checkpoints). No running EMA of the weights: the Cosmos Policy configs keep none,
    and evaluating one lost points here (README, "Two things that did not help").
    """
    path = os.path.join(cfg.run_dir, f"{name}.pt")
    fine_tune = name in ("policy", "planner")
    keep = cfg.keep_every > 0 and fine_tune  # the VAE and the video model are never compared
    final = cfg.lr_final if fine_tune else TrainConfig.lr_final  # pretraining keeps the official end, the default
    rank, world = rank_world()
    net = model
    fsdp = world > 1 and cfg.fsdp and hasattr(model, "blocks")  # the DiT only: the small VAE stays on DDP
    if fsdp:
        from torch.distributed.fsdp import fully_shard
        for block in getattr(model, "blocks", []):
            fully_shard(block)
        fully_shard(model)
    elif world > 1:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-8, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed + rank)  # batches, sigmas and noise: saved, so resume is exact
    full = StateDictOptions(full_state_dict=True, cpu_offload=True)
    step, history = 0, []  # history: one {"step", loss, parts...} per log print, drawn into <name>_loss.png
    if os.path.exists(path):
        ck = load_file(path)
        set_state_dict(model, opt, model_state_dict=ck["model"], optim_state_dict=ck["optimizer"], options=full)
        step, history = ck["step"], ck.get("history", [])
        changed = changed_options(cfg, ck["train_config"], "policy" if fine_tune else name)
        if changed and rank == 0:
            then, now = (", ".join(f"{k}={v[i]!r}" for k, v in changed.items()) for i in (0, 1))
            print(f"[{name}] WARNING: {path} was made with {then}, not {now}; it and the files around it are kept "
                  f"as they are (a new --run_dir builds them anew)")
        if len(ck["rng"]) == world:
            gen.set_state(ck["rng"][rank])
        elif step < steps:
            print(f"[{name}] saved by {len(ck['rng'])} processes, resumed by {world}: batches will differ")
        print(f"[{name}] resumed from step {step}")
    if step >= steps:
        return model.eval()

    def save(s):
        model_sd, opt_sd = get_state_dict(model, opt, options=full)  # collective under FSDP: every rank calls it
        rngs = [gen.get_state()] * world
        if world > 1:
            dist.all_gather_object(rngs, gen.get_state())
        if rank == 0:
            weights = {"model": model_sd, "step": s, "done": s >= steps, "train_config": asdict(cfg), **extra}
            save_atomic({**weights, "optimizer": opt_sd, "rng": rngs, "history": history}, path)
            if history:
                plot_history(history, path.removesuffix(".pt") + "_loss.png")
            if keep and (s % cfg.keep_every == 0 or s >= steps):  # the last weights too, for a choice or an average
                save_atomic(weights, path.removesuffix(".pt") + f"_step{s}.pt")

    stop = torch.zeros(1)
    handlers = {s: signal.signal(s, lambda *_: stop.fill_(1)) for s in (signal.SIGINT, signal.SIGTERM)}
    net = torch.compile(net) if cfg.compile else net
    warmup = min(cfg.warmup, max(1, steps // 10))
    model.train()
    t0, seen, log = time.perf_counter(), 0, {}
    # disable only on other ranks: an explicit disable=False would override TQDM_DISABLE=1 on rank 0 (plan.py obeys it)
    bar = tqdm(range(step, steps), initial=step, total=steps, desc=name, **({"disable": True} if rank else {}))
    for step in bar:
        rate = learning_rate(step, steps, lr, warmup, final)
        for group in opt.param_groups:
            group["lr"] = rate
        opt.zero_grad(set_to_none=True)
        for micro in range(cfg.grad_accum):
            last = micro == cfg.grad_accum - 1  # gradients are all-reduced once, on the last micro-step
            if fsdp:
                model.set_requires_gradient_sync(last)
            with net.no_sync() if isinstance(net, torch.nn.parallel.DistributedDataParallel) and not last \
                    else contextlib.nullcontext():
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                    loss, parts = compute_loss(net, make_batch(gen), gen)
                (loss / cfg.grad_accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        seen += batch_size * cfg.grad_accum * world
        for k, v in {"loss": loss.detach(), **parts}.items():
            log.setdefault(k, []).append(float(v))
        if (step + 1) % cfg.log_every == 0 and rank == 0:
            means = {k: sum(v) / len(v) for k, v in log.items()}  # since the last print, or since a resume
            tqdm.write(f"[{name}] step {step + 1} " + " ".join(f"{k} {v:.4f}" for k, v in means.items())
                       + f" lr {rate:.2e} {seen / (time.perf_counter() - t0):.0f} samples/s")
            history.append({"step": step + 1, **means})
            t0, seen, log = time.perf_counter(), 0, {}
        if world > 1:
            dist.all_reduce(stop)  # a signal seen by one rank stops all of them at the same step
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == steps or stop.item() or \
                (keep and (step + 1) % cfg.keep_every == 0):
            save(step + 1)
        if stop.item():
            bar.close()
            print(f"[{name}] interrupted: state saved at step {step + 1}; rerun the same command to resume")
            sys.exit(130)
    for s, h in handlers.items():
        signal.signal(s, h)
    if world > 1 and not fsdp:  # DDP keeps a full copy per rank: prove they never drifted apart
        digest = hashlib.sha1(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
        digests = [None] * world
        dist.all_gather_object(digests, digest)
        assert len(set(digests)) == 1, f"[{name}] ranks ended with different weights: {digests}"
        print(f"[{name}] rank {rank}: weights identical on all {world} ranks ({digest[:12]})")
    return model.eval()


def plot_history(history, path, width=240, height=150, columns=4):
    """The logged losses against the step, one log-scale panel per quantity, `columns` to a row -> PNG."""
    keys = [k for k in history[0] if k != "step"]
    rows = -(-len(keys) // columns)
    img = Image.new("RGB", (width * min(columns, len(keys)), height * rows), "white")
    draw = ImageDraw.Draw(img)
    steps = np.array([h["step"] for h in history], float)
    x = 10 + (width - 20) * (steps - steps[0]) / max(1.0, steps[-1] - steps[0])  # (N,) pixels within a panel
    for i, k in enumerate(keys):
        left, top, bottom = width * (i % columns), height * (i // columns) + 30, height * (i // columns + 1) - 20
        y = np.log10(np.maximum([h.get(k, np.nan) for h in history], 1e-9))  # (N,)
        lo, hi = np.nanmin(y), np.nanmax(y) + 1e-9
        draw.rectangle([left + 10, top, left + width - 10, bottom], outline="grey")
        draw.line([(left + a, bottom - (bottom - top) * (b - lo) / (hi - lo)) for a, b in zip(x, y)], fill="blue",
                  width=2)
        draw.text((left + 10, top - 28), f"{k}: last {history[-1].get(k, np.nan):.4g}", fill="black")
        draw.text((left + 10, top - 15), f"log scale, {10 ** lo:.3g} to {10 ** hi:.3g}", fill="grey")
        draw.text((left + 10, bottom + 4), f"steps {int(steps[0])} to {int(steps[-1])}", fill="grey")
    img.save(path)


# ----------------------------------------------------------------------------- stages


def stage_demos(cfg):
    demos, play = (os.path.join(cfg.run_dir, f) for f in ("demos.npz", "play.npz"))
    rank, world = rank_world()
    if rank == 0 and not os.path.exists(demos):
        print(sim_env.collect_demos(cfg.task, cfg.n_demos, cfg.seed, demos, image_size=cfg.image_size,
                                    explore=cfg.demo_explore, margin=cfg.demo_margin))
    if rank == 0 and not os.path.exists(play):
        print(sim_env.collect_demos(cfg.task, cfg.n_play, cfg.seed + 10**6, play, image_size=cfg.image_size,
                                    noise=cfg.play_noise, keep_failures=True))
    if world > 1:
        dist.barrier()
    return [sim_env.load_demos(p, task=cfg.task, image_size=cfg.image_size) for p in (demos, play)]


def stage_vae(cfg, demos, play, device):
    """Reconstruction + small KL on 9-frame clips, pseudo-video-like [black, 4x image, 4x image] and real ones, whose
    variety of images per step gets the VAE off its plateau soonest; then, with `vae_long_steps`, on clips as long as
    the pseudo-videos and video clips it will encode. Its causal convolutions see back to the first frame, so a latent
    position it never trained on codes its image badly: after 9-frame clips alone, a VAE coded the primary view at
    latent 3 of 9, where the layout puts it, 3x worse than at latent 2 (README: the VAE's slot positions)."""
    if cfg.vae:  # the released tokenizer, whose latents the released DiT was trained on
        return load_vae(cfg.vae, VAEConfig.wan21(), device=device)
    vcfg = vae_config(cfg)
    vae = WanVAE(vcfg).to(device)
    layout = li.Layout.toy(action_chunk=cfg.action_chunk, proprio_dim=cfg.proprio_dim)
    length = 1 + li.FRAMES_PER_LATENT * (layout.num_frames - 1)  # 33
    frames = np.concatenate([d[c] for d in (demos, play) for c in ("wrist", "primary")])  # (N, S, S, 3)
    starts = {n: clip_starts(play["episode_len"], n) for n in (9, length)}
    assert len(starts[length]) or not cfg.vae_long_steps, \
        f"no play episode has the {length} frames of a long VAE clip: collect more (--n_play) or --vae_long_steps=0"

    def real_clips(n, b, gen):  # (b, 3, n, S, S) consecutive frames of one camera
        rows = (starts[n][torch.randint(len(starts[n]), (b,), generator=gen)][:, None] + torch.arange(n)).numpy()
        real = play[("wrist", "primary")[int(torch.randint(2, (1,), generator=gen))]][rows]  # (b, n, S, S, 3)
        return rearrange(torch.from_numpy(real), "b n h w c -> b c n h w").float() / 127.5 - 1

    def make_batch(gen):
        b = cfg.vae_batch // 2
        img = frames[torch.randint(len(frames), (2 * b,), generator=gen).numpy()]  # (2b, S, S, 3)
        img[torch.rand(2 * b, generator=gen).numpy() < 0.2] = 0  # black frames, as the non-image slots
        pseudo = np.concatenate([np.zeros_like(img[:b, None]), img[:b, None].repeat(4, 1),
                                 img[b:, None].repeat(4, 1)], 1)  # (b, 9, S, S, 3)
        pseudo = rearrange(torch.from_numpy(pseudo), "b n h w c -> b c n h w").float() / 127.5 - 1
        return torch.cat([pseudo, real_clips(9, b, gen)]).to(device)  # (B, 3, 9, S, S)

    def make_long_batch(gen):  # half as many clips, each 33 frames: a pseudo-video of the layout and a real clip
        b, slots = max(1, cfg.vae_batch // 4), layout.image_slots
        img = torch.from_numpy(frames[torch.randint(len(frames), (b * len(slots),), generator=gen).numpy()])  # (bI,..)
        pseudo = li.raw_frames(layout, {s: img[k::len(slots)] for k, s in enumerate(slots)})  # (b, 3, 33, S, S)
        return torch.cat([pseudo, real_clips(length, b, gen)]).to(device)  # (2b, 3, 33, S, S)

    def compute_loss(net, video, gen):
        recon, mu, log_var = net(video, gen)
        rec = (recon - video).square().mean()
        kl = 0.5 * (mu.square() + log_var.exp() - 1 - log_var).mean()
        return rec + 1e-3 * kl, {"recon": rec.detach(), "kl": kl.detach()}

    extra = {"vae_config": asdict(vcfg)}
    vae = train_loop(cfg, "vae", vae, cfg.vae_steps, cfg.vae_lr, cfg.vae_batch, make_batch, compute_loss, extra, device)
    if cfg.vae_long_steps:  # a fresh model and optimizer resume from vae.pt, as a rerun's would
        if rank_world()[0] == 0:
            print(f"[vae] then {cfg.vae_long_steps} steps on {length}-frame clips, the pseudo-videos' length")
        vae = train_loop(cfg, "vae", WanVAE(vcfg).to(device), cfg.vae_steps + cfg.vae_long_steps, cfg.vae_lr / 10,
                         2 * max(1, cfg.vae_batch // 4), make_long_batch, compute_loss, extra, device)
    with torch.no_grad():  # per-channel statistics of the posterior mean, the role of Wan2.1's 16 constants
        mu = vae.encode_moments(make_batch(torch.Generator().manual_seed(1)))[0]
        vae.cfg = dataclasses.replace(vcfg, latent_mean=tuple(mu.mean((0, 2, 3, 4)).tolist()),
                                      latent_std=tuple(mu.std((0, 2, 3, 4)).clamp_min(1e-3).tolist()))
    picture = os.path.join(cfg.run_dir, "vae_recon.png")
    if rank_world()[0] == 0 and not os.path.exists(picture):  # once per trained VAE, not on every resume
        save_reconstructions(vae, demos, picture, device, short=cfg.vae_steps < 400)
    return vae


@torch.no_grad()
def save_reconstructions(vae, demos, path, device, n=8, short=False):
    """Demo images above their reconstructions through the pseudo-video path, wrist rows then primary rows -> PNG.
    A VAE that has not learned the scene returns the empty table: it warns when that holds in every view, unless
    `short` training (the smoke preset) makes that the expected outcome."""
    layout = li.Layout.toy()
    rows = np.linspace(0, len(demos["primary"]) - 1, n).astype(int)
    video = li.raw_frames(layout, {s: torch.from_numpy(demos[s.removeprefix("future_")][rows]).to(device)
                                   for s in layout.image_slots})  # (n, 3, F, S, S)
    recon = vae.decode(vae.encode(video)).clamp(-1, 1)
    current = layout.frames("image", future=False)
    last = [li.FRAMES_PER_LATENT * k for k in current]  # each slot's last raw copy
    real, recon = video[:, :, last], recon[:, :, last]  # (n, 3, slots, S, S)
    # A decoder that ignores its latent can do no better than the images' average: at or above it, a view is blind.
    # Only every view blind is a reason to stop: a VAE blind in the primary view alone made a 31% policy (README).
    err, spread = (recon - real).square(), real.var(0, unbiased=False)  # (n, 3, slots, S, S), the average's (3, ...)
    mse, average = err.mean().item(), spread.mean().item()
    per_view = err.mean((0, 1, 3, 4)) / spread.mean((0, 2, 3))  # (slots,)
    pairs = torch.stack([real, recon], 0)  # (2, n, 3, slots, S, S)
    grid = rearrange(pairs, "r n c s h w -> (s r h) (n w) c")  # per slot: originals over reconstructions
    img = Image.fromarray(((grid.cpu().numpy() + 1) * 127.5).round().astype(np.uint8))
    img.resize((img.width * 4, img.height * 4), Image.NEAREST).save(path)
    views = ", ".join(f"{layout.slots[k].name} {r:.2f}" for k, r in zip(current, per_view.tolist()))
    print(f"[vae] reconstruction MSE on demo images {mse:.4f} (their average image: {average:.4f}; pixels in [-1, 1]); "
          f"per view, as a share of the average image's: {views}; picture: {path}")
    if (per_view >= 1).all() and short:
        print("[vae] blind in every view, as expected this early: the VAE leaves its plateau after ~200-750 steps")
    elif (per_view >= 1).all():
        print("[vae] WARNING: in every view the VAE reconstructs no better than the average image, so the policy "
              "will see only the proprio. Stop it (Ctrl-C) and rerun with another --seed in a new --run_dir")


def diffusion_loss(emb, slots=None):
    """The DiT as the callable diffusion.py expects: (x_in, timesteps (B, T), cond mask) -> velocity. Batches are
    (x0, cond (B, T), frame weights (B, T) or None)."""
    def compute_loss(net, batch, gen):
        x0, cond, weights = batch
        fn = lambda x, t, m: net(x, t, emb.expand(x.shape[0], *emb.shape), m)  # noqa: E731
        return diffusion.training_loss(fn, x0, cond, generator=gen, slots=slots, frame_weights=weights)
    return compute_loss


def stage_video(cfg, vae, demos, play, emb, device):
    """Plain video-model pretraining: random 1-3 leading latent frames are conditioning, the rest are denoised."""
    frames = 1 + 4 * (li.Layout.toy(action_chunk=cfg.action_chunk).num_frames - 1)  # 33 raw frames
    both = {k: np.concatenate([demos[k], play[k]]) for k in ("wrist", "primary")}
    both["episode_len"] = np.concatenate([demos["episode_len"], play["episode_len"]])
    clips = cached(os.path.join(cfg.run_dir, "video_latents.pt"), lambda partial: encode_clips(
        vae, both, cfg.n_clips, frames, device, torch.Generator().manual_seed(cfg.seed), partial=partial))
    model = DiT(dit_config(cfg)).to(device)

    def make_batch(gen):
        x0 = clips[torch.randint(len(clips), (cfg.batch_size,), generator=gen)].to(device).float()
        n_cond = torch.randint(1, 4, (cfg.batch_size, 1), generator=gen)
        return x0, (torch.arange(x0.shape[2]) < n_cond).to(device), None  # (B, C, T, H, W), (B, T)

    extra = {"dit_config": asdict(model.cfg)}
    return train_loop(cfg, "video", model, cfg.video_steps, cfg.lr, cfg.batch_size, make_batch, diffusion_loss(emb),
                      extra, device)


def stage_policy(cfg, vae, demos, emb, device):
    layout = li.Layout.toy(action_chunk=cfg.action_chunk, proprio_dim=cfg.proprio_dim)
    sources = [demos] + [sim_env.load_demos(p, task=cfg.task, image_size=cfg.image_size) for p in cfg.rollouts]
    table = {k: [] for k in ("latent", "proprio", "action", "future_proprio", "value", "success", "rollout")}
    for i, data in enumerate(sources):
        rows, fut, chunk_rows, to_go, success = episode_index(data, layout.action_chunk)
        name = "demo_latents.pt" if i == 0 else f"rollout{i}_latents_{zlib.crc32(cfg.rollouts[i - 1].encode())}.pt"
        table["latent"].append(cached(os.path.join(cfg.run_dir, name), lambda partial: encode_pseudo_videos(
            vae, layout, data, rows, fut, device, partial=partial)))
        proprio = torch.from_numpy(data["proprio"][:, :layout.proprio_dim])  # (R, P)
        chunks = action_chunks(data, rows, chunk_rows, cfg.relative_actions)
        if i == 0:  # the demos set the ranges; rollouts are normalised with them
            lo_a, hi_a = li.minmax_stats(chunks.flatten(0, 1), q=cfg.action_quantile)  # over (N*K, A)
            lo_p, hi_p = li.minmax_stats(proprio)
        action = li.normalize(chunks, lo_a, hi_a)  # (N, K, A)
        table["proprio"].append(li.normalize(proprio[rows], lo_p, hi_p))  # (N, P)
        table["action"].append(action.clamp(-1, 1) if cfg.action_quantile > 0 else action)
        table["future_proprio"].append(li.normalize(proprio[fut], lo_p, hi_p))
        table["value"].append(li.value_target(to_go, layout.gamma, success).float())  # V(s'), in [-1, 1]
        table["success"].append(success)
        table["rollout"].append(torch.full((len(rows),), i > 0))
    table = {k: torch.cat(v) for k, v in table.items()}
    demo_rows = torch.nonzero(~table["rollout"]).squeeze(1)
    # Without rollouts the demos double as successful rollouts (the official ALOHA base recipe), which keeps the
    # 50/25/25 mixture; with rollouts, successes and failures are drawn half and half when both exist.
    pools = [torch.nonzero(table["rollout"] & (table["success"] == s)).squeeze(1) for s in (True, False)]
    pools = [p for p in pools if len(p)] or [demo_rows]

    value_kind = "value_sprime" if cfg.value_sprime else "value"
    weights = torch.ones(layout.num_frames)  # (T,)
    weights[layout.frames("action")] = cfg.action_loss_multiplier
    value_only = (torch.arange(layout.num_frames) == layout.index("value")).float()  # (T,): noised s, a carry no loss

    def make_batch(gen):
        n = cfg.batch_size
        u = torch.rand(n, generator=gen)
        pool = torch.randint(len(pools), (n,), generator=gen)
        idx = torch.stack([demo_rows[torch.randint(len(demo_rows), (1,), generator=gen)][0] if u[i] < cfg.demo_prob
                           else pools[pool[i]][torch.randint(len(pools[pool[i]]), (1,), generator=gen)][0]
                           for i in range(n)])
        kinds = ["policy" if u[i] < cfg.demo_prob else "world_model" if u[i] < (1 + cfg.demo_prob) / 2 else value_kind
                 for i in range(n)]
        x0 = li.inject_vectors(table["latent"][idx].float(), layout, proprio=table["proprio"][idx],
                               action=table["action"][idx], future_proprio=table["future_proprio"][idx],
                               value=table["value"][idx])
        w = torch.stack([value_only if k == "value_sprime" else weights for k in kinds])  # (B, T)
        return x0.to(device), li.condition_mask(layout, kinds).to(device), w.to(device)

    model = DiT(dit_config(cfg)).to(device)
    if cfg.init == "video":
        model.load_state_dict(load_file(os.path.join(cfg.run_dir, "video.pt"))["model"], strict=True)
    elif cfg.init != "scratch":  # one of our checkpoints (a planner starts from the policy) or an official .pt
        ck = load_file(cfg.init, mmap=True)
        model = load_dit(ck["model"] if "train_config" in ck else ck, model.cfg, device=device)
    slots = {"action": layout.frames("action"), "future": layout.frames("proprio", future=True)
             + layout.frames("image", future=True), "value": layout.frames("value")}
    extra = {"dit_config": asdict(model.cfg), "vae_config": asdict(vae.cfg), "vae": vae.state_dict(),
             "layout": asdict(layout), "stats": {"action": (lo_a, hi_a), "proprio": (lo_p, hi_p)}, "task_emb": emb,
             "task": cfg.task, "image_size": cfg.image_size, "relative_actions": cfg.relative_actions,
             "value_sprime": cfg.value_sprime}
    name = "policy" if not cfg.rollouts else "planner"
    return train_loop(cfg, name, model, cfg.policy_steps, cfg.lr, cfg.batch_size, make_batch,
                      diffusion_loss(emb, slots), extra, device)


def average_checkpoints(cfg, name):
    """The uniform average of the last `cfg.average` kept checkpoints' weights, as `<name>_avg.pt` (its path is
    returned; the rest of the dict is the last one's). Weights 800 steps apart succeed up to tens of points apart,
    and their average scored between its two ends or above both (README), with no episodes spent on a choice (the
    checkpoint best on validation seeds did no better: README)."""
    import plan
    kept = os.path.join(cfg.run_dir, f"{name}_step*.pt")
    assert glob.glob(kept), f"--average needs kept checkpoints ({kept}): train with --keep_every=N"
    paths = plan.checkpoint_paths(kept)[-cfg.average:]  # in step order
    cks = [load_file(p) for p in paths]
    model = {k: sum(c["model"][k] for c in cks) / len(cks) if v.is_floating_point() else v
             for k, v in cks[-1]["model"].items()}
    names = [os.path.basename(p) for p in paths]
    path = os.path.join(cfg.run_dir, f"{name}_avg.pt")
    save_atomic(dict(cks[-1], model=model, averaged=names), path)
    print(f"[average] the weights of {', '.join(names)} averaged into {path}; evaluating it on the test seeds")
    return path


def cli_overrides(argv, cls, extra=()):
    """`--field=value` arguments -> {field: value} for the dataclass `cls` (plus the names in `extra`). A str field
    takes the text as it is; the others parse it with ast.literal_eval and must then have their field's type (an int
    is a float too; a tuple field also takes a list, or text its config splits). Dashes in a name read as
    underscores (--planning-ckpt is --planning_ckpt), as argparse has it. Unknown or malformed arguments raise."""
    bad = [a for a in argv if not (a.startswith("--") and "=" in a)]
    assert not bad, f"arguments must look like --field=value, got {bad}"
    kv = {k.replace("-", "_"): v for k, v in (a[2:].split("=", 1) for a in argv)}
    types = {f.name: f.type for f in dataclasses.fields(cls)}
    unknown = sorted(set(kv) - set(types) - set(extra))
    assert not unknown, f"unknown option(s) {unknown}; valid: {sorted(set(types) | set(extra))}"
    out = {}
    for k, text in kv.items():
        kind, v = types.get(k), text
        if kind is not str:
            with contextlib.suppress(ValueError, SyntaxError):
                v = ast.literal_eval(text)
        number = isinstance(v, (int, float)) and not isinstance(v, bool)
        ok = {int: number and isinstance(v, int), float: number, bool: isinstance(v, bool),
              tuple: isinstance(v, (tuple, list, str))}.get(kind, True)
        assert ok, f"--{k}={text}: expected {'True or False' if kind is bool else kind.__name__}"
        out[k] = float(v) if kind is float else v
    return out


def cli_help(cls, defaults, usage):
    """The --help text: `usage`, then every field of the dataclass `cls` as --name=value, the value taken from
    `defaults`, beside the comment that the field's definition carries."""
    comments = dict(re.findall(r"^    (\w+): [^\n#]*#\s*(.*)$", inspect.getsource(cls), re.M))
    shown = {f.name: getattr(defaults, f.name) for f in dataclasses.fields(cls)}
    shown = {k: v if isinstance(v, str) else repr(v) for k, v in shown.items()}  # --task=push_t, as typed
    return "\n".join([usage] + [f"  --{k}={v}".ljust(32) + " " + comments.get(k, "") for k, v in shown.items()])


HELP = {"-h", "--help"}


def run_cli(parse, run, program):
    """run(parse(command-line arguments)); a bad option, the user's to fix, ends it with its message, no traceback.
    A kill (SIGTERM) stops it as Ctrl-C does, so that an encode or an evaluation keeps what it has done."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        config = parse(sys.argv[1:])
    except AssertionError as e:
        sys.exit(f"{program}: {e}")
    try:
        run(config)
    except KeyboardInterrupt:
        print(f"{program}: interrupted; what is done is kept, and the same command resumes", file=sys.stderr)
        sys.exit(130)


def check_device(name):
    assert not name.startswith("cuda") or torch.cuda.is_available(), \
        f"--device={name}: this torch ({torch.__version__}) sees no CUDA device; use --device=auto or --device=cpu"


def check_episode_file(flag, path, task, image_size):
    """A demo or rollout file given on the command line must exist and hold `task` at `image_size` (sim_env's
    format): checked in a second or so, before any stage spends minutes on the ones before it."""
    assert os.path.isfile(path), f"--{flag}: no file {path}"
    try:
        sim_env.load_demos(path, task=task, image_size=image_size)
    except ValueError as e:
        raise AssertionError(f"--{flag}: {e}") from e


def parse_args(argv):
    """`--preset=` picks the starting point (default cpu), then `--field=value` overrides its fields. Bad options
    raise AssertionError; --help prints every option with the preset's value and exits."""
    kv = cli_overrides([a for a in argv if a not in HELP], TrainConfig, extra=("preset",))
    preset = kv.pop("preset", "cpu")
    assert preset in ("smoke", "cpu", "gpu"), f"unknown preset {preset!r} (smoke | cpu | gpu)"
    if HELP & set(argv):
        print(cli_help(TrainConfig, getattr(TrainConfig, preset)(),
                       "usage: python train.py [--preset=cpu|smoke|gpu] [--field=value ...]\n"
                       "Runs the stages demos, vae, video, policy and eval into one run folder, resuming what is "
                       f"there. Options, with the {preset} preset's values:"))
        sys.exit(0)
    cfg = dataclasses.replace(getattr(TrainConfig, preset)(), **kv)
    cfg.run_dir = cfg.run_dir or f"runs/{preset}_{cfg.task}"
    check_device(cfg.device)
    # Files the later stages need, checked before the earlier ones spend minutes.
    assert not cfg.vae or os.path.isfile(cfg.vae), f"--vae: no file {cfg.vae}"
    for path in cfg.rollouts:
        check_episode_file("rollouts", path, cfg.task, cfg.image_size)
    video = os.path.join(cfg.run_dir, "video.pt")
    assert cfg.stage != "policy" or cfg.init != "video" or os.path.isfile(video), \
        f"--stage=policy starts from {video}, which is not there: run --stage=video first, or pass --init=scratch"
    if cfg.init not in ("video", "scratch"):
        assert os.path.isfile(cfg.init), f"--init: no file {cfg.init}"
        ck = load_file(cfg.init, mmap=True)
        assert "train_config" not in ck or "dit_config" in ck, \
            f"--init={cfg.init} holds no DiT: give a policy, video.pt or an official .pt"
    return cfg


def main(cfg):
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # started by torchrun
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank, world = rank_world()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device)
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)  # set_device needs an index
        torch.cuda.set_device(device)
    torch.manual_seed(cfg.seed)
    os.makedirs(cfg.run_dir, exist_ok=True)
    print(f"run folder {cfg.run_dir} on {device}" + (f", rank {rank} of {world}" if world > 1 else ""))
    demos, play = stage_demos(cfg)
    if cfg.stage == "demos":
        return
    emb = task_embedding(cfg.task, width=dit_config(cfg).crossattn_emb_channels).to(device)
    vae = stage_vae(cfg, demos, play, device)
    if cfg.stage != "vae":
        if cfg.init == "video" and cfg.stage in ("all", "video"):
            stage_video(cfg, vae, demos, play, emb, device)
        if cfg.stage in ("all", "policy"):
            stage_policy(cfg, vae, demos, emb, device)
    if cfg.stage in ("all", "eval") and rank == 0:
        import plan
        name = "planner" if cfg.rollouts else "policy"
        ckpt = os.path.join(cfg.run_dir, f"{name}.pt")
        if cfg.average:
            ckpt = average_checkpoints(cfg, name)
        plan.evaluate(ckpt, episodes=cfg.eval_episodes, num_steps=cfg.eval_steps, device=device)
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    run_cli(parse_args, main, "train.py")
