"""Diffusion: noise levels, preconditioning, the training loss and the few-step sampler, as pure functions.

Paper concept (Cosmos Policy, arXiv 2601.16163, inherited from Cosmos-Predict2): the model is written in EDM's sigma
language, but the configs select `RectifiedFlowScaling` with sigma_data = 1, so it is a rectified-flow / velocity
model: the network sees (1 - t) x0 + t eps with t = sigma / (1 + sigma) and is trained to output eps - x0. Video
frames that are given (the conditioning frames) are fed clean with timestep 0 and copied to the output
("frame replace"). Sampling runs from sigma 80 down to 4 with a second-order multistep solver, and "N steps" means
exactly N network calls.

Mirrors (official NVlabs/cosmos-policy): `RectifiedFlowScaling` (_src/imaginaire/modules/denoiser_scaling.py),
`HybridEDMSDE.sample_t` (modules/hybrid_edm_sde.py), `CosmosPolicyVideo2WorldModel.denoise`
(models/policy_video2world_model.py), `compute_loss_with_epsilon_and_sigma` (models/policy_text2world_model.py),
`CosmosPolicySampler` (modules/cosmos_sampler.py) with `get_rev_ts`, `order2_fn`, `reg_x0_euler_step`,
`res_x0_rk2_step` (_src/imaginaire/modules/res_sampler.py, functional/multi_step.py, functional/runge_kutta.py).

Letters: B batch (samples or planning candidates), C latent channels, T latent frames, H W latent height/width.

The network is any callable net(x_in (B,C,T,H,W), timesteps (B,T), cond_mask (B,1,T,H,W) float) -> F (B,C,T,H,W),
the raw velocity output; bind text embeddings etc. with a closure. This file never imports the network.

Public functions:
    rf_scalings(sigma (any shape)) -> c_skip, c_out, c_in, c_noise (same shape)
    sample_training_sigma(B, T, generator) -> (B,) float32
    denoise(net, x_sigma (B,C,T,H,W), sigma (B,), x_cond (B,C,T,H,W), cond (B,T) bool) -> x0_pred (B,C,T,H,W)
    training_loss(net, x0 (B,C,T,H,W), cond (B,T) bool, ...) -> loss (scalar), parts {name: scalar}
    karras_sigmas(N) -> (N,) float64
    sample(net, x_cond (B,C,T,H,W), cond (B,T) bool, N, ...) -> x0 (B,C,T,H,W)
"""
import math

import torch
from einops import rearrange

# Training noise (HybridEDMSDE, hybrid_sigma_distribution=True): 70% log-normal, 30% uniform for more high-noise
# samples, which the authors credit for precise actions.
LOGNORMAL_PROB = 0.7
P_MEAN, P_STD = math.log(4.0), 1.2
UNIFORM_LOW, UNIFORM_HIGH = 1.0, 85.0
SIGMA_MAX, SIGMA_MIN = 80.0, 4.0  # the official sampler's range (CosmosPolicySampler)
LOSS_SCALE = 10.0  # `loss_scale` of the Cosmos-Predict2 base config; only rescales the gradient, kept for parity


def rf_scalings(sigma):
    """Rectified-flow preconditioning with sigma_data = 1 (official: `RectifiedFlowScaling.__call__`):
    t = sigma/(1+sigma); c_skip = 1-t, c_out = -t, c_in = 1-t, c_noise = t. So c_in * (x0 + sigma*eps) is the flow
    interpolant (1-t) x0 + t eps, the timestep is t in [0, 1), and x0 = c_skip x_sigma + c_out F makes F = eps - x0."""
    t = sigma / (1.0 + sigma)
    return 1.0 - t, -t, 1.0 - t, t


def sample_training_sigma(batch_size, num_latent_frames, generator=None):
    """One training sigma per sample (official: `HybridEDMSDE.sample_t`, then `draw_training_sigma_and_epsilon`):
    with p = 0.7 exp(N(ln 4, 1.2^2)), else U(1, 85); then times sqrt(T) (`adjust_video_noise`: more frames share
    information, so they need more noise to hide it). Not clipped. Median ~21 for T = 9. Returns (B,) float32 on the
    generator's device (CPU by default)."""
    kw = dict(generator=generator, dtype=torch.float64, device=generator.device if generator is not None else "cpu")
    use_lognormal = torch.rand(batch_size, **kw) < LOGNORMAL_PROB
    lognormal = torch.exp(P_MEAN + P_STD * torch.randn(batch_size, **kw))
    uniform = UNIFORM_LOW + (UNIFORM_HIGH - UNIFORM_LOW) * torch.rand(batch_size, **kw)
    return (torch.where(use_lognormal, lognormal, uniform) * math.sqrt(num_latent_frames)).float()


def denoise(net, x_sigma, sigma_B, x_cond, cond_B_T):
    """x0 prediction with frame replacement (official: `CosmosPolicyVideo2WorldModel.denoise`).
    Net input: clean x_cond on conditioning frames, c_in * x_sigma elsewhere; per-frame timesteps (B, T): 0 on
    conditioning frames (sigma_conditional = 0), c_noise elsewhere; the mask itself is an extra input channel.
    x0 = c_skip x_sigma + c_out F, then overwritten by x_cond on conditioning frames."""
    B, C, T, H, W = x_sigma.shape
    assert x_cond.shape == x_sigma.shape and sigma_B.shape == (B,) and cond_B_T.shape == (B, T), [
        tuple(v.shape) for v in (x_sigma, x_cond, sigma_B, cond_B_T)]
    cond_B_T = cond_B_T.to(x_sigma.device)  # masks are built on the CPU (latent_injection.condition_mask)
    cond = rearrange(cond_B_T.bool(), "b t -> b 1 t 1 1")  # (B, 1, T, 1, 1)
    c_skip, c_out, c_in, c_noise = rf_scalings(rearrange(sigma_B.to(x_sigma.device, x_sigma.dtype), "b -> b 1 1 1 1"))
    x_in = torch.where(cond, x_cond, c_in * x_sigma)  # (B, C, T, H, W)
    # t = 0 tells the net a frame is clean; AdaLN is per frame, so each frame gets its own timestep.
    timesteps = torch.where(cond_B_T.bool(), 0.0, rearrange(c_noise, "b 1 1 1 1 -> b 1"))  # (B, T)
    mask = cond.to(x_sigma.dtype).expand(B, 1, T, H, W)  # (B, 1, T, H, W)
    out = net(x_in, timesteps, mask)
    assert out.shape == x_sigma.shape, f"net returned {tuple(out.shape)}, expected {tuple(x_sigma.shape)}"
    return torch.where(cond, x_cond, c_skip * x_sigma + c_out * out.to(x_sigma.dtype))


def training_loss(net, x0, cond_B_T, sigma_B=None, noise=None, generator=None, slots=None, frame_weights=None):
    """Denoising loss (official: `compute_loss_with_epsilon_and_sigma` and `get_per_sigma_loss_weights`):
    x_sigma = x0 + sigma eps, per element (x0 - x0_pred)^2 (1+sigma)^2/sigma^2 (= |F - (eps - x0)|^2), mean over ALL
    B*C*T*H*W elements (conditioning frames count with ~0 loss), times LOSS_SCALE. sigma and eps are drawn with
    `generator` unless given. frame_weights: optional (T,) or per-sample (B, T) multipliers of each frame's elements
    before the mean (the official loss mask: `action_loss_multiplier` on the action frame, the value frame alone for
    V(s') samples); the parts below stay unweighted and skip frames of weight 0.
    slots: optional {name: [frame indices]}; parts[name] is the same weighted loss and parts[name + "_l1"] the mean
    |x0_pred - x0|, both detached and averaged only over (sample, frame) pairs that are NOT conditioning frames. A name
    whose frames are conditioning in every sample of the batch is absent from parts (nothing was predicted)."""
    B, C, T, H, W = x0.shape
    assert cond_B_T.shape == (B, T), f"cond {tuple(cond_B_T.shape)} for x0 {tuple(x0.shape)}"
    gen_device = generator.device if generator is not None else x0.device
    if sigma_B is None:
        sigma_B = sample_training_sigma(B, T, generator)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, device=gen_device, dtype=torch.float32)
    sigma = rearrange(sigma_B.to(x0.device, x0.dtype), "b -> b 1 1 1 1")  # one sigma per sample, all frames
    noise = noise.to(x0.device, x0.dtype)
    x0_pred = denoise(net, x0 + sigma * noise, sigma.flatten(), x0, cond_B_T)
    # (1+sigma)^2/sigma^2 = 1/t^2 undoes c_out = -t: every sigma then weighs like a plain velocity error.
    per_element = (x0 - x0_pred) ** 2 * ((1.0 + sigma) / sigma) ** 2  # (B, C, T, H, W)
    w = torch.ones(T) if frame_weights is None else frame_weights
    assert w.shape in ((T,), (B, T)), f"frame_weights {tuple(w.shape)} for {B} samples of {T} frames"
    w = w.to(x0).expand(B, T)  # (B, T)
    loss = (per_element * rearrange(w, "b t -> b 1 t 1 1")).mean() * LOSS_SCALE
    parts = {}
    for name, frames in (slots or {}).items():
        predicted = ~cond_B_T[:, frames].bool() & (w[:, frames] > 0)  # (B, F)
        if not predicted.any():
            continue
        sq = per_element[:, :, frames].detach().mean(dim=(1, 3, 4))  # (B, F)
        l1 = (x0_pred - x0)[:, :, frames].detach().abs().mean(dim=(1, 3, 4))  # (B, F)
        parts[name] = sq[predicted].mean() * LOSS_SCALE
        parts[name + "_l1"] = l1[predicted].mean()
    return loss, parts


def karras_sigmas(num_steps, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN, rho=7.0):
    """The sigmas of the N network calls (official: `get_rev_ts` as called by `CosmosPolicySampler`): N - 1 solver
    steps on the Karras grid sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho, i = 0..N-1, whose
    last point sigma_min = 4 is the final clean x0 call; N = 1 is a single call at sigma_max. Returns (N,) float64."""
    assert num_steps >= 1 and sigma_max > sigma_min > 0, (num_steps, sigma_max, sigma_min)
    if num_steps == 1:
        return torch.tensor([sigma_max], dtype=torch.float64)
    ramp = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)  # i / (N - 1)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def _res_multistep(x, s_prev, s, s_next, x0_prev, x0):
    """Second-order exponential multistep ("2ab") step in lambda = -ln sigma (official: `res_x0_rk2_step`).
    In lambda the probability-flow ODE reads dx/dlambda = x0(x) - x: the -x part is integrated exactly (factor e^-h)
    and x0 is modelled as linear in lambda through the previous and current predictions (Adams-Bashforth style).
    phi1(z) = (e^z - 1)/z, phi2(z) = (phi1(z) - 1)/z."""
    lam_prev, lam, lam_next = -math.log(s_prev), -math.log(s), -math.log(s_next)
    h = lam_next - lam
    c2 = (lam_prev - lam) / h  # negative: the previous point lies behind
    phi1 = math.expm1(-h) / -h  # expm1 keeps small steps accurate
    phi2 = (phi1 - 1.0) / -h
    b1, b2 = phi1 - phi2 / c2, phi2 / c2
    return math.exp(-h) * x + h * (b1 * x0 + b2 * x0_prev)


@torch.no_grad()
def sample(net, x_cond, cond_B_T, num_steps, generator=None, noise=None, sigma_max=SIGMA_MAX, sigma_min=SIGMA_MIN,
           rho=7.0):
    """Few-step deterministic sampler (official: `CosmosPolicySampler.forward`, solver "2ab", S_churn = 0).
    x starts at noise * sigma_max (noise: given, else drawn with `generator`, else the global RNG). The first step is
    Euler in x0 form, x' = x0 + (sigma'/sigma)(x - x0) (`reg_x0_euler_step`); later steps are `_res_multistep`. The
    output is the x0 prediction of the N-th call, at sigma_min (N = 1: one call at sigma_max). sigma_min = 4 is coarse
    for a single number, but every injected number is tiled over n copies, so its effective noise is 4/sqrt(n)
    (0.38 for LIBERO's 112 action copies); a bare low-dimensional point needs a smaller sigma_min. Conditioning
    frames of the output equal x_cond. The solver state is float64, as in the official sampler. Returns (B,C,T,H,W)."""
    B, C, T, H, W = x_cond.shape
    assert cond_B_T.shape == (B, T), f"cond {tuple(cond_B_T.shape)} for x_cond {tuple(x_cond.shape)}"
    if noise is None:
        device = generator.device if generator is not None else x_cond.device
        noise = torch.randn(x_cond.shape, generator=generator, device=device, dtype=torch.float32)
    assert noise.shape == x_cond.shape, f"noise {tuple(noise.shape)} vs x_cond {tuple(x_cond.shape)}"
    sigmas = karras_sigmas(num_steps, sigma_max, sigma_min, rho).tolist()

    def x0_fn(x, s):
        sigma_B = torch.full((B,), s, dtype=x_cond.dtype, device=x_cond.device)
        return denoise(net, x.to(x_cond.dtype), sigma_B, x_cond, cond_B_T).double()

    x = noise.to(x_cond.device, torch.float64) * sigma_max  # not multiplied by sqrt(T), unlike training
    history = None  # (sigma, x0) of the previous call
    for s, s_next in zip(sigmas[:-1], sigmas[1:]):
        x0 = x0_fn(x, s)
        if history is None:
            x = x0 + (s_next / s) * (x - x0)
        else:
            x = _res_multistep(x, history[0], s, s_next, history[1], x0)
        history = (s, x0)
    return x0_fn(x, sigmas[-1]).to(x_cond.dtype)


if __name__ == "__main__":
    quantiles = torch.tensor([0.01, 0.10, 0.50, 0.90, 0.99], dtype=torch.float64)
    for T in (9, 11):
        sig = sample_training_sigma(100_000, T, torch.Generator().manual_seed(0)).double()
        q = torch.quantile(sig, quantiles)
        print(f"training sigma, T={T} (x{math.sqrt(T):.3f}), quantiles {[f'{v:.0%}' for v in quantiles.tolist()]}")
        print("  sigma", " ".join(f"{v:8.2f}" for v in q.tolist()))
        print("  t    ", " ".join(f"{v:8.3f}" for v in rf_scalings(q)[3].tolist()))
    for n in (1, 5, 10):
        s = karras_sigmas(n)
        print(f"N={n:>2} sigmas:", ", ".join(f"{v:.2f}" for v in s.tolist()),
              "| t:", ", ".join(f"{v:.3f}" for v in rf_scalings(s)[3].tolist()))
