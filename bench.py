"""Benchmarks as one JSON object, one dict per section: medians of 5 repeats after a warm-up (perf_counter, CUDA
synchronised), one torch thread, pinned to one CPU core where there is no GPU (on a GPU machine torch.compile's
workers use the rest); each section adds its peak RSS (and peak CUDA memory).

python bench.py [section ...]  default: env dit policy vae diffusers; by name only: expert, load2b (a 3.9 GB file)
  env/expert  sim_env steps/s and observations/s; the scripted expert and random targets on 200 held-out seeds
  dit     fwd+bwd tokens/s, TFLOP/s (dit_flops), MFU vs the GPU's dense bf16 peak or, on CPU, a measured fp32 matmul
  policy  one action chunk (act, 5 steps, batch 1); best-of-8 (ensemble, lean) in one batch vs 8 sequential calls
  vae     encode / decode frames/s of the 33-frame pseudo-video;  diffusers: our DiT vs CosmosTransformer3DModel
  load2b  peak RSS of load_dit(dtype=bf16) on CPU, in subprocesses, of a synthetic official-format 2B checkpoint
The 2B DiT, the LIBERO-size policy and the Wan2.1 VAE at 224 px run only where CUDA is available.
"""
import os

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # before numpy loads, so that every number is one core's
import contextlib
import dataclasses
import json
import pickle
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import numpy as np
import torch

import latent_injection as li
import plan
import sim_env
import train
from dit import DiT, DiTConfig, RMSNorm
from vae import VAEConfig, WanVAE

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12}  # dense (not 2:4 sparse) bf16 FLOP/s per GPU
CPU_PRESET = train.TrainConfig.cpu()
TOY_DIT, TOY_VAE = train.dit_config(CPU_PRESET), train.vae_config(CPU_PRESET)  # the networks the cpu preset trains
TOY_LATENT = CPU_PRESET.image_size // 2 ** (len(CPU_PRESET.vae_dim_mult) - 1)  # 8: 32 px through three levels


def _median_s(fn, repeats=5, warmup=1):
    sync, times = (torch.cuda.synchronize if CUDA else lambda: None), []
    for i in range(warmup + repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times += [time.perf_counter() - start] * (i >= warmup)
    return statistics.median(times)


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
            out[f"{task}/physics_env_steps_per_s/N={n}"] = round(n * steps / _median_s(physics, repeats, 0))
            calls = max(1, 200 // n)
            out[f"{task}/obs_pairs_per_s/N={n}"] = round(n * calls / _median_s(
                lambda: [env.observe() for _ in range(calls)], repeats, 0))
    return out


def bench_expert(tasks=("push_block", "push_t"), episodes=200, first_seed=100_000, noises=(0.0, 0.01)) -> dict:
    """The results table's reference rows on plan.py's evaluation seeds, batched and without rendering: the scripted
    expert (its constants were tuned on seeds 0-199; noise 0.01 is collect_demos' default) and a random policy
    (uniform targets on the table), with Push-T's two numbers: success rate and mean max coverage."""
    out = {}
    for task in tasks:
        for name, noise in [(f"expert/noise={n}", n) for n in noises] + [("random", None)]:
            rng, start = np.random.default_rng(0), time.perf_counter()
            ctrl = sim_env.random_targets(rng) if noise is None else lambda env: sim_env.expert_actions(env, noise, rng)
            ok, max_cov, steps = sim_env.score_controller(task, range(first_seed, first_seed + episodes), ctrl)
            out[f"{task}/{name}"] = {
                "success_rate": float(ok.mean()), "mean_max_coverage": round(float(max_cov.mean()), 3),
                "seeds": f"{first_seed}-{first_seed + episodes - 1}",
                "max_steps": getattr(sim_env.EnvConfig, task)().max_steps,
                "mean_len_success": float(steps[ok].mean()) if ok.any() else None,
                "wall_s": round(time.perf_counter() - start, 1)}
    return out


def dit_flops(cfg, B, T, H, W, S):
    """Matmul FLOPs of one DiT forward on a (B, C, T, H, W) latent with S text tokens: 2*M*N*K per linear layer, plus
    attention's QK^T and AV (2*L*L*D each in self-attention, 2*L*S*D in cross-attention); norms, RoPE, softmax and
    elementwise ops are left out. A training step is 3x (backward = 2 forwards). The 2B at LIBERO's (9, 28, 28) with
    512 text tokens: 6.85 TFLOP per sample, 3.88 GFLOP per token."""
    D, E, r, p = cfg.model_channels, cfg.crossattn_emb_channels, cfg.adaln_lora_dim, cfg.patch_spatial
    L, hidden = T * (H // p) * (W // p), int(D * cfg.mlp_ratio)
    block = (2 * L * D * D * 4 + 2 * L * L * D * 2  # self-attention: q, k, v, out; QK^T, AV
             + 2 * L * D * D * 2 + 2 * S * E * D * 2 + 2 * L * S * D * 2  # cross: q, out; k, v of the text; QK^T, AV
             + 2 * L * D * hidden * 2 + 3 * 2 * T * (D * r + r * 3 * D))  # MLP; 3 adaLN-LoRA modulations per frame
    embed = 2 * L * (cfg.in_channels + 2) * p * p * D + 2 * T * (D * D + D * 3 * D)  # patches (+2 masks); t-MLP
    final = 2 * T * (D * r + r * 2 * D) + 2 * L * D * p * p * cfg.out_channels
    return B * (cfg.num_blocks * block + embed + final)


def bench_dit() -> dict:
    if CUDA:
        gpu = torch.cuda.get_device_name()
        peak, peak_is = next((v for k, v in PEAK_BF16.items() if k in gpu), None), f"dense bf16 peak of {gpu}"
    else:  # what this core's fp32 matmul really reaches, not a datasheet number
        a = torch.randn(1024, 1024)
        peak, peak_is = 2 * 1024 ** 3 / _median_s(lambda: a @ a, 9), "measured fp32 1024^3 matmul, one core"
    out = {"peak_tflops": peak and round(peak / 1e12, 3), "peak_is": peak_is}
    big = DiTConfig.cosmos_predict2_2b()  # eager, then under torch.compile
    cases = [("tiny", DiTConfig.tiny(), 32, 8), ("cpu_preset", TOY_DIT, CPU_PRESET.batch_size, TOY_LATENT)]
    cases += [("cosmos_predict2_2b", big, 4, 28), ("cosmos_predict2_2b_compiled", big, 4, 28)] * CUDA
    for name, cfg, B, H in cases:
        T, S = 9, (512 if cfg.crossattn_emb_channels == 1024 else 8)
        with torch.device(DEV):
            model = DiT(cfg).to(torch.bfloat16 if CUDA else torch.float32).train()
            x, t, emb = torch.randn(B, 16, T, H, H), torch.rand(B, T), torch.randn(B, S, cfg.crossattn_emb_channels)
            mask = (torch.arange(T) < 4).float().view(1, 1, T, 1, 1).expand(B, 1, T, H, H)
        net = torch.compile(model) if name.endswith("_compiled") else model
        step = lambda: net(x, t, emb, mask).square().mean().backward()  # noqa: E731 (grads accumulate: same cost)
        start = time.perf_counter()
        step()  # the first call compiles; _median_s warms up again
        first_s = time.perf_counter() - start
        sec, flop, tokens = _median_s(step), 3 * dit_flops(cfg, B, T, H, H, S), B * T * (H // 2) ** 2
        out[name] = {"batch": B, "latent_THW": [T, H, H], "tokens": tokens, "first_call_s": round(first_s, 1),
                     "fwd_bwd_ms": round(sec * 1e3, 2),
                     "tokens_per_s": round(tokens / sec), "gflop_per_step": round(flop / 1e9, 3),
                     "achieved_tflops": round(flop / sec / 1e12, 4), "mfu": peak and round(flop / sec / peak, 4)}
        del model, net, step
    return out


def bench_policy() -> dict:
    """Latency per action chunk, batch 1. Best-of-8 in two sizes: "ensemble", PlanConfig's default (the official
    ALOHA 3 futures x 5 values, 5 action steps: 59 DiT calls per candidate), and "lean", the official defaults of one
    future and one value sample of 1 step each (7 calls), each in one batch and as 8 sequential calls. On CUDA, the
    LIBERO-size policy's peak memory for one query (act) is measured alone: the official figure is 6.8 GB."""
    out, lay2b = {}, li.Layout.libero()
    toy = ("cpu_preset", TOY_DIT, TOY_VAE, li.Layout.toy(), CPU_PRESET.image_size, (8, 32), torch.float32, 5)
    libero = ("libero_2b", DiTConfig.cosmos_predict2_2b(), VAEConfig.wan21(), lay2b, 224, (512, 1024), torch.bfloat16,
              3)  # a 2B ensemble plan is seconds: 3 repeats
    plans = {"ensemble": plan.PlanConfig(best_of=8),
             "lean": plan.PlanConfig(best_of=8, wm_steps=(1,), value_steps=(1,))}
    for name, dcfg, vcfg, lay, s, text, dtype, repeats in [toy] + [libero] * CUDA:
        with torch.device(DEV):  # random weights, stats [0, 1]
            stats = {k: (torch.zeros(n), torch.ones(n)) for k, n in (("action", lay.action_dim),
                                                                     ("proprio", lay.proprio_dim))}
            p = plan.Policy(DiT(dcfg).to(dtype).eval(), WanVAE(vcfg).to(dtype).eval(), lay, stats, torch.randn(text),
                            "bench", s)
        rng = np.random.default_rng(0)
        obs = {c: rng.integers(0, 256, (1, s, s, 3), dtype=np.uint8) for c in ("primary", "wrist")}
        obs["proprio"] = rng.uniform(0, 1, (1, lay.proprio_dim)).astype(np.float32)
        row = out[name] = {}

        def put(key, value):  # each number also goes to stderr at once: a run cut off at its time limit keeps them
            row[key] = value
            print(f"policy/{name}/{key}: {value}", file=sys.stderr, flush=True)
        put("act_ms", round(_median_s(lambda: plan.act(p, obs, 5)) * 1e3, 1))
        if CUDA:
            torch.cuda.reset_peak_memory_stats()
            plan.act(p, obs, 5)
            put("act_cuda_peak_mb", round(torch.cuda.max_memory_allocated() / 2 ** 20))
        for kind, cfg in plans.items():
            seq = dataclasses.replace(cfg, best_of=1)
            put(f"{kind}_dit_calls_per_candidate", cfg.num_steps + sum(cfg.wm_steps) + len(cfg.wm_steps) * sum(
                cfg.value_steps))
            put(f"best_of_8_{kind}_one_batch_ms", round(_median_s(
                lambda: plan.plan_best_of_n(p, p, obs, cfg), repeats) * 1e3, 1))
            put(f"best_of_8_{kind}_sequential_ms", round(_median_s(
                lambda: [plan.plan_best_of_n(p, p, obs, seq, seed=i) for i in range(8)], repeats) * 1e3, 1))
        if CUDA:  # last: compiling the 2B is slow (its training step took 200 s on an H100)
            fast = dataclasses.replace(p, dit=torch.compile(p.dit))  # batch 1 only, so it compiles once
            plan.act(fast, obs, 5)
            put("act_compiled_dit_ms", round(_median_s(lambda: plan.act(fast, obs, 5)) * 1e3, 1))
        del p
    return out


def bench_vae() -> dict:
    out = {}
    for name, cfg, size, dtype in [("cpu_preset", TOY_VAE, CPU_PRESET.image_size, torch.float32)] + \
            [("wan21_224px", VAEConfig.wan21(), 224, torch.bfloat16)] * CUDA:
        with torch.device(DEV), torch.no_grad():
            vae, video = WanVAE(cfg).to(dtype).eval(), torch.rand(1, 3, 33, size, size) * 2 - 1
            latent = vae.encode(video)
            out[name] = {"frames": 33, "encode_frames_per_s": round(33 / _median_s(lambda: vae.encode(video)), 1),
                         "decode_frames_per_s": round(33 / _median_s(lambda: vae.decode(latent)), 1)}
    return out


def bench_diffusers() -> dict:
    """Our DiT against diffusers' CosmosTransformer3DModel with the same weights, converted by diffusers' own Cosmos
    converter: DiTConfig.tiny() in fp32 on CPU (8, 16, 9, 8, 8); on CUDA also the 2B in bf16 at LIBERO's latent
    (1, 16, 9, 28, 28) with 512 text tokens. Every weight is random (the official init zeroes the adaLN
    up-projections); no fps (it would switch on the modulation the policy config disables); diffusers' q/k RMSNorm eps
    (1e-5) set to the official 1e-6. Eager forwards, both through torch SDPA."""
    try:
        import diffusers
        import diffusers.models.transformers.transformer_cosmos as tc
        from diffusers.loaders.single_file_utils import convert_cosmos_transformer_checkpoint_to_diffusers
    except ImportError:
        return {"skipped": "diffusers not installed"}
    if not hasattr(tc, "transforms"):  # no torchvision: diffusers resizes the (all-zero) padding mask with it
        tc.transforms = SimpleNamespace(InterpolationMode=SimpleNamespace(NEAREST=None), functional=SimpleNamespace(
            resize=lambda m, size, interpolation: torch.nn.functional.interpolate(m, size=size)))
    out = {"diffusers": diffusers.__version__}
    cases = [("tiny_fp32_cpu", DiTConfig.tiny(), (8, 9, 8, 8, 8), torch.device("cpu"), torch.float32)]
    cases += [("cosmos_predict2_2b_bf16_cuda", DiTConfig.cosmos_predict2_2b(), (1, 9, 28, 28, 512), DEV,
               torch.bfloat16)] * CUDA
    for name, cfg, (B, T, H, W, S), dev, dtype in cases:
        gen = torch.Generator().manual_seed(0)
        ours = DiT(cfg).eval()
        for m in ours.modules():  # Linear: N(0, 1/fan_in); RMSNorm gains: N(1, 1/dim)
            if isinstance(m, (torch.nn.Linear, RMSNorm)):
                torch.nn.init.normal_(m.weight, float(m.weight.ndim == 1), m.weight.shape[-1] ** -0.5, generator=gen)
        theirs = tc.CosmosTransformer3DModel(  # in_channels: + the condition mask (diffusers adds the padding mask)
            cfg.in_channels + 1, cfg.out_channels, cfg.num_heads, cfg.model_channels // cfg.num_heads,
            cfg.num_blocks, cfg.mlp_ratio, cfg.crossattn_emb_channels, cfg.adaln_lora_dim,
            (cfg.max_frames, cfg.max_img_h, cfg.max_img_w), (cfg.patch_temporal, cfg.patch_spatial, cfg.patch_spatial),
            (cfg.rope_t_extrapolation_ratio, cfg.rope_h_extrapolation_ratio, cfg.rope_w_extrapolation_ratio),
            concat_padding_mask=cfg.concat_padding_mask, extra_pos_embed_type=None).eval()
        theirs.load_state_dict(convert_cosmos_transformer_checkpoint_to_diffusers(
            {f"net.{k}": v for k, v in ours.state_dict().items()}), strict=True)
        for m in (m for n, m in theirs.named_modules() if n.endswith(("norm_q", "norm_k"))):
            m.eps = 1e-6
        ours, theirs = ours.to(dev, dtype), theirs.to(dev, dtype)
        x = torch.randn(B, cfg.in_channels, T, H, W, generator=gen).to(dev, dtype)
        emb = torch.randn(B, S, cfg.crossattn_emb_channels, generator=gen).to(dev, dtype)
        t = (torch.rand(B, T, generator=gen) * (torch.arange(T) >= 4)).to(dev)  # clean conditioning frames: t = 0
        mask = (torch.arange(T, device=dev) < 4).to(dtype).view(1, 1, T, 1, 1).expand(B, 1, T, H, W)
        pad = torch.zeros(1, 1, H, W, device=dev, dtype=dtype)
        with torch.no_grad():
            run_ours = lambda: ours(x, t, emb, mask)  # noqa: E731
            run_theirs = lambda: theirs(x, t.view(B, 1, T, 1, 1).to(dtype), emb, condition_mask=mask,  # noqa: E731
                                        padding_mask=pad, return_dict=False)[0]
            a, b = run_ours().float(), run_theirs().float()
            ms_ours, ms_theirs = (_median_s(f) * 1e3 for f in (run_ours, run_theirs))
        out[name] = {"input_BCTHW": [B, cfg.in_channels, T, H, W], "text_tokens": S, "dtype": str(dtype),
                     "max_abs_diff": (a - b).abs().max().item(),
                     "rel_l2_diff": round(((a - b).norm() / b.norm()).item(), 6),
                     "ours_fwd_ms": round(ms_ours, 2), "diffusers_fwd_ms": round(ms_theirs, 2),
                     "diffusers_over_ours": round(ms_theirs / ms_ours, 3)}
        del ours, theirs
    return out


_LOAD_CHILD = """import sys, torch, dit
path, mode = sys.argv[1:]
if mode != 'baseline':  # baseline: the imports alone
    model = dit.load_dit(torch.load(path, weights_only=True) if mode == 'no_mmap' else path,
                         dit.DiTConfig.cosmos_predict2_2b(), dtype=torch.bfloat16)
    for p in model.parameters() if mode == 'mmap_read_all' else ():
        float(p.abs().max())  # float() drops the result, which would otherwise keep p.abs()'s buffer alive
print(next(int(line.split()[1]) / 1024 for line in open('/proc/self/status') if line.startswith('VmHWM')))"""


def bench_load2b() -> dict:
    """Peak RSS (MB) of a fresh process: built on meta, mmap'd, assigned, already bf16, loading reads no weight, whose
    pages become resident (file-backed, reclaimable) only when used; then every weight read; then without mmap."""
    path = os.path.join(tempfile.gettempdir(), "bench_synthetic_2b.pt")
    with torch.device("meta"):
        model = DiT(DiTConfig.cosmos_predict2_2b())
    sd = {f"net.{k}": torch.empty(v.shape, dtype=torch.bfloat16).uniform_(-0.02, 0.02)
          for k, v in model.state_dict().items()}  # bf16, `net.` keys, TE bytes (a pickled {}), accum_* counters
    sd.update({f"net.{n}._extra_state": torch.frombuffer(bytearray(pickle.dumps({})), dtype=torch.uint8).clone()
               for n, m in model.named_modules() if isinstance(m, RMSNorm)})
    sd.update({f"net.accum_{k}": torch.tensor(0) for k in ("video_sample_counter", "image_sample_counter",
                                                          "iteration")})
    sd["net.accum_train_in_hours"] = torch.tensor(0.0, dtype=torch.bfloat16)
    try:
        torch.save(sd, path)
        del sd
        out = {"file_mb": round(os.path.getsize(path) / 2 ** 20)}
        for mode in ("baseline", "mmap", "mmap_read_all", "no_mmap"):
            out[f"{mode}_peak_rss_mb"] = round(float(subprocess.run(
                [sys.executable, "-c", _LOAD_CHILD, path, mode], capture_output=True, text=True, check=True,
                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.splitlines()[-1]))
            out[f"{mode}_over_file"] = round(out[f"{mode}_peak_rss_mb"] / out["file_mb"], 3)
        return out
    finally:
        if os.path.exists(path):
            os.remove(path)


SECTIONS = {"env": bench_env, "expert": bench_expert, "dit": bench_dit, "policy": bench_policy, "vae": bench_vae,
            "diffusers": bench_diffusers, "load2b": bench_load2b}


def main(names):
    if {"-h", "--help"} & set(names):
        print(__doc__)
        return
    if set(names) - set(SECTIONS):
        sys.exit(f"unknown sections {sorted(set(names) - set(SECTIONS))}; choose from {list(SECTIONS)}")
    if hasattr(os, "sched_setaffinity") and not CUDA:  # on a GPU, torch.compile's workers need the other cores
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    torch.set_num_threads(1)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    report = {"machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
                          "numpy": np.__version__, "torch": torch.__version__, "cores_used": cores, "torch_threads": 1,
                          "cuda": torch.cuda.get_device_name() if CUDA else None}}
    for name in names or ("env", "dit", "policy", "vae", "diffusers"):
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM, so the peak below is this section's
        torch.cuda.reset_peak_memory_stats() if CUDA else None
        report[name] = SECTIONS[name]()
        report[name]["peak_rss_mb"] = round(next(int(line.split()[1]) / 1024 for line in open("/proc/self/status")
                                                 if line.startswith("VmHWM")))
        if CUDA:
            report[name]["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
