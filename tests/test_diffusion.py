"""diffusion.py: preconditioning identities, the training sigma distribution, frame-replace denoising, the loss,
the N-call Karras schedule, sampler correctness against exact solutions, determinism, and a tiny learning run."""
import math

import pytest
import torch

from diffusion import (LOSS_SCALE, denoise, karras_sigmas, rf_scalings, sample, sample_training_sigma,
                       training_loss)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


class Recorder:
    """A network that returns a fixed function of its input and records every call."""

    def __init__(self):
        self.calls = []

    def __call__(self, x_in, timesteps, mask):
        self.calls.append((x_in.clone(), timesteps.clone(), mask.clone()))
        return 0.1 * x_in


def gaussian_oracle(std):
    """Exact velocity for data ~ N(0, std^2) per element: x0_hat = x_sigma std^2/(std^2 + sigma^2)."""
    def net(x_in, timesteps, mask):
        t = timesteps[:, None, :, None, None]
        sigma = t / (1 - t)
        x0_hat = x_in / (1 - t) * std ** 2 / (std ** 2 + sigma ** 2)
        return (x_in - x0_hat) / t
    return net


def test_rf_scalings_are_the_flow_interpolant():
    sigma = torch.tensor([[0.5, 4.0], [21.0, 80.0]], dtype=torch.float64)
    c_skip, c_out, c_in, c_noise = rf_scalings(sigma)
    t = sigma / (1 + sigma)
    assert all(c.shape == (2, 2) for c in (c_skip, c_out, c_in, c_noise))
    assert torch.allclose(c_noise, t) and torch.allclose(c_out, -t) and torch.allclose(c_skip, 1 - t)
    x0, eps = (torch.randn(2, 2, generator=_gen(i), dtype=torch.float64) for i in range(2))
    assert torch.allclose(c_in * (x0 + sigma * eps), (1 - t) * x0 + t * eps)
    # F = eps - x0 is the target: it reproduces x0 exactly.
    assert torch.allclose(c_skip * (x0 + sigma * eps) + c_out * (eps - x0), x0)


def test_training_sigma_quantiles_match_spec():
    sigma = sample_training_sigma(100_000, 9, _gen(0))
    assert sigma.shape == (100_000,) and sigma.dtype == torch.float32
    q = torch.quantile(sigma.double(), torch.tensor([0.01, 0.10, 0.50, 0.90, 0.99], dtype=torch.float64)).tolist()
    spec = [0.87, 3.3, 21.0, 178.0, 250.0]  # method.md section 3.3 (LIBERO, x3)
    tolerance = [0.15, 0.08, 0.05, 0.05, 0.03]
    for got, want, tol in zip(q, spec, tolerance):
        assert abs(got - want) < tol * want, (q, spec)
    assert sigma.max() > 255.0  # the log-normal branch is not clipped (the uniform one stops at 85 * 3)
    assert torch.equal(sigma, sample_training_sigma(100_000, 9, _gen(0)))
    assert torch.allclose(sample_training_sigma(1000, 1, _gen(3)) * 3.0, sample_training_sigma(1000, 9, _gen(3)))


def test_denoise_frame_replacement():
    B, C, T, H, W = 2, 3, 4, 2, 2
    g = _gen(0)
    x_sigma, x_cond = torch.randn(B, C, T, H, W, generator=g), torch.randn(B, C, T, H, W, generator=g)
    cond = torch.tensor([[True, True, False, False], [True, False, True, False]])
    sigma = torch.tensor([4.0, 20.0])
    net = Recorder()
    x0 = denoise(net, x_sigma, sigma, x_cond, cond)
    x_in, timesteps, mask = net.calls[0]
    t = sigma / (1 + sigma)
    for b in range(B):
        for f in range(T):
            if cond[b, f]:
                assert torch.equal(x_in[b, :, f], x_cond[b, :, f]) and timesteps[b, f] == 0.0
                assert torch.equal(x0[b, :, f], x_cond[b, :, f]) and mask[b, 0, f].eq(1.0).all()
            else:
                assert torch.allclose(x_in[b, :, f], (1 - t[b]) * x_sigma[b, :, f]) and timesteps[b, f] == t[b]
                expect = (1 - t[b]) * x_sigma[b, :, f] - t[b] * 0.1 * x_in[b, :, f]
                assert torch.allclose(x0[b, :, f], expect) and mask[b, 0, f].eq(0.0).all()
    assert mask.shape == (B, 1, T, H, W) and mask.dtype == x_sigma.dtype


def test_training_loss_is_velocity_mse():
    B, C, T, H, W = 3, 2, 4, 2, 2
    x0, noise, F = (torch.randn(B, C, T, H, W, generator=_gen(i), dtype=torch.float64) for i in range(3))
    cond = torch.tensor([[True, False, False, False], [True, True, False, False], [True, True, True, False]])
    sigma = torch.tensor([0.7, 5.0, 60.0], dtype=torch.float64)
    loss, _ = training_loss(lambda x, t, m: F, x0, cond, sigma_B=sigma, noise=noise)
    generated = (~cond)[:, None, :, None, None].double()
    expect = LOSS_SCALE * ((F - (noise - x0)) ** 2 * generated).mean()  # cond frames count in the mean with 0
    assert torch.allclose(loss, expect, rtol=1e-10)
    # action_loss_multiplier: frame 2's squared errors count 4 times, the mean's denominator is unchanged.
    w = torch.tensor([1.0, 1.0, 4.0, 1.0])
    weighted, _ = training_loss(lambda x, t, m: F, x0, cond, sigma_B=sigma, noise=noise, frame_weights=w)
    expect = LOSS_SCALE * ((F - (noise - x0)) ** 2 * generated * w.double().view(1, 1, T, 1, 1)).mean()
    assert torch.allclose(weighted, expect, rtol=1e-10) and weighted > loss
    # Per-sample weights: sample 0 is a V(s') sample, only its last frame counts; the others keep w.
    w_bt = torch.stack([torch.tensor([0.0, 0.0, 0.0, 1.0]), w, w])  # (B, T)
    per_sample, _ = training_loss(lambda x, t, m: F, x0, cond, sigma_B=sigma, noise=noise, frame_weights=w_bt)
    expect = LOSS_SCALE * ((F - (noise - x0)) ** 2 * generated * w_bt.double().view(B, 1, T, 1, 1)).mean()
    assert torch.allclose(per_sample, expect, rtol=1e-10) and per_sample < weighted


def test_training_loss_parts_and_determinism():
    B, C, T, H, W = 4, 2, 9, 2, 2
    x0 = torch.randn(B, C, T, H, W, generator=_gen(9))
    cond = torch.zeros(B, T, dtype=torch.bool)
    cond[:, :4] = True
    cond[2:, 4] = True  # samples 2 and 3 are world-model samples: the action is given
    slots = {"action": [4], "future": [5, 6, 7], "value": [8], "current": [1, 2, 3]}

    def net(x_in, timesteps, mask):
        return torch.sin(x_in)

    loss, parts = training_loss(net, x0, cond, generator=_gen(0), slots=slots)
    loss2, parts2 = training_loss(net, x0, cond, generator=_gen(0), slots=slots)
    assert torch.equal(loss, loss2) and all(torch.equal(parts[k], parts2[k]) for k in parts)
    assert not torch.equal(loss, training_loss(net, x0, cond, generator=_gen(1))[0])
    assert "current" not in parts and "current_l1" not in parts  # conditioning in every sample
    assert set(parts) == {"action", "action_l1", "future", "future_l1", "value", "value_l1"}
    assert not any(v.requires_grad for v in parts.values())
    # Recompute the action part by hand from given draws: only samples 0 and 1 predict the action.
    sigma, noise = torch.tensor([0.5, 3.0, 20.0, 80.0]), torch.randn(x0.shape, generator=_gen(2))
    _, parts = training_loss(net, x0, cond, sigma_B=sigma, noise=noise, slots=slots)
    x0_pred = denoise(net, x0 + sigma.view(B, 1, 1, 1, 1) * noise, sigma, x0, cond)
    per_sample = ((x0 - x0_pred)[:, :, 4] ** 2).mean(dim=(1, 2, 3)) * ((1 + sigma) / sigma) ** 2
    assert torch.allclose(parts["action"], LOSS_SCALE * per_sample[:2].mean())
    assert torch.allclose(parts["action_l1"], (x0 - x0_pred)[:2, :, 4].abs().mean())
    per_sample = ((x0 - x0_pred)[:, :, 5:8] ** 2).mean(dim=(1, 2, 3, 4)) * ((1 + sigma) / sigma) ** 2
    assert torch.allclose(parts["future"], LOSS_SCALE * per_sample.mean())
    # A frame weighted 0 in a sample (a V(s') sample's noised action) is not a prediction: the part skips it.
    w = torch.ones(B, T)
    w[1, 4] = 0.0
    _, parts = training_loss(net, x0, cond, sigma_B=sigma, noise=noise, slots=slots, frame_weights=w)
    per_sample = ((x0 - x0_pred)[:, :, 4] ** 2).mean(dim=(1, 2, 3)) * ((1 + sigma) / sigma) ** 2
    assert torch.allclose(parts["action"], LOSS_SCALE * per_sample[0])


def test_karras_sigmas_match_spec():
    assert torch.allclose(karras_sigmas(5), torch.tensor([80, 42.29, 20.97, 9.62, 4], dtype=torch.float64), atol=0.01)
    spec10 = [80, 60.70, 45.53, 33.73, 24.66, 17.77, 12.60, 8.77, 5.99, 4]  # method.md section 3.5
    assert torch.allclose(karras_sigmas(10), torch.tensor(spec10, dtype=torch.float64), atol=0.01)
    assert karras_sigmas(1).tolist() == [80.0]
    assert torch.allclose(karras_sigmas(2), torch.tensor([80.0, 4.0], dtype=torch.float64))
    assert (karras_sigmas(7).diff() < 0).all()


@pytest.mark.parametrize("num_steps", [1, 2, 5])
def test_sample_calls_net_once_per_step_at_the_schedule(num_steps):
    cond = torch.tensor([[True, True, False], [True, False, False]])
    x_cond = torch.randn(2, 2, 3, 2, 2, generator=_gen(1))
    net = Recorder()
    out = sample(net, x_cond, cond, num_steps, generator=_gen(0))
    assert len(net.calls) == num_steps
    sigmas = karras_sigmas(num_steps)
    for (x_in, timesteps, mask), s in zip(net.calls, sigmas.tolist()):
        expect = torch.where(cond, 0.0, s / (1 + s))
        assert torch.allclose(timesteps, expect.float())
        assert torch.equal(mask[:, 0, :, 0, 0], cond.float())
    assert out.shape == x_cond.shape and torch.equal(out[:, :, 0], x_cond[:, :, 0])
    assert torch.equal(out[0, :, 1], x_cond[0, :, 1]) and not torch.equal(out[1, :, 1], x_cond[1, :, 1])


def test_sample_is_deterministic_and_batch_independent():
    cond = torch.tensor([[True, False, False]]).expand(3, 3)
    x_cond = torch.randn(3, 2, 3, 2, 2, generator=_gen(1))
    net = gaussian_oracle(1.0)
    a = sample(net, x_cond, cond, 5, generator=_gen(7))
    assert torch.equal(a, sample(net, x_cond, cond, 5, generator=_gen(7)))
    assert not torch.equal(a, sample(net, x_cond, cond, 5, generator=_gen(8)))
    noise = torch.randn(x_cond.shape, generator=_gen(7))
    assert torch.equal(a, sample(net, x_cond, cond, 5, noise=noise))  # generator == its noise
    one = sample(net, x_cond[1:2], cond[1:2], 5, noise=noise[1:2])  # candidates do not interact
    assert torch.allclose(one, a[1:2], atol=1e-6)
    assert torch.equal(a[:, :, 0], x_cond[:, :, 0])


def test_sample_takes_a_cpu_condition_mask_for_latents_on_another_device():
    # latent_injection.condition_mask builds masks on the CPU; plan.py passes them with CUDA latents (this crashed
    # on the first GPU run). The meta device stands in for CUDA on a CPU-only machine: same device check, no data.
    x_cond = torch.zeros(2, 16, 3, 4, 4, device="meta")
    out = sample(lambda x, t, m: x, x_cond, torch.tensor([[1, 0, 0], [1, 1, 0]]), 3, noise=torch.zeros_like(x_cond))
    assert out.device.type == "meta" and out.shape == x_cond.shape


@pytest.mark.parametrize("num_steps", [1, 2, 5, 10])
def test_sample_recovers_a_single_point(num_steps):
    """Data = one point x*: the exact velocity is (x_in - x*)/t, so every x0 prediction is x*."""
    point = torch.randn(1, 2, 4, 3, 3, generator=_gen(1)).expand(4, -1, -1, -1, -1)
    cond = torch.tensor([[True, False, False, False]]).expand(4, 4)
    x_cond = torch.randn(4, 2, 4, 3, 3, generator=_gen(2))

    def net(x_in, timesteps, mask):
        t = timesteps[:, None, :, None, None]
        return torch.where(t > 0, (x_in - point) / t.clamp_min(1e-12), 0.0)

    out = sample(net, x_cond, cond, num_steps, generator=_gen(3))
    assert torch.allclose(out[:, :, 1:], point[:, :, 1:], atol=1e-5)
    assert torch.equal(out[:, :, 0], x_cond[:, :, 0])


def test_sampler_is_second_order_on_gaussian_data():
    """Data ~ N(0, 1): the probability-flow ODE is solved exactly by x(sigma) = x(80) sqrt((1 + sigma^2)/(1 + 80^2)),
    and the final call returns x(4)/(1 + 16). Halving the step must cut the error ~4x (Euler alone gives ~2x)."""
    noise = torch.randn(4, 3, 1, 2, 2, generator=_gen(0), dtype=torch.float64)
    exact = noise * 80 * math.sqrt((1 + 16) / (1 + 80 ** 2)) / (1 + 16)
    cond = torch.zeros(4, 1, dtype=torch.bool)
    errors = [((sample(gaussian_oracle(1.0), torch.zeros_like(noise), cond, n, noise=noise) - exact).abs().max()
               / exact.abs().max()).item() for n in (10, 20, 40)]
    assert errors[0] < 3e-3, errors
    assert errors[0] / errors[1] > 3.0 and errors[1] / errors[2] > 3.0, errors


class TinyDenoiser(torch.nn.Module):
    """MLP on (clean 2-D code in frame 0, noisy 2-D point in frame 1, ln sigma of frame 1) -> velocity of frame 1."""

    def __init__(self, width=64):
        super().__init__()
        self.mlp = torch.nn.Sequential(torch.nn.Linear(5, width), torch.nn.SiLU(), torch.nn.Linear(width, width),
                                       torch.nn.SiLU(), torch.nn.Linear(width, 2))

    def forward(self, x_in, timesteps, mask):
        t = timesteps[:, 1:]  # (B, 1)
        v = self.mlp(torch.cat([x_in[:, :, 0, 0, 0], x_in[:, :, 1, 0, 0], torch.log(t / (1 - t))], dim=1))  # (B, 2)
        return torch.stack([torch.zeros_like(v), v], dim=2)[..., None, None]  # (B, 2, 2, 1, 1)


@pytest.fixture
def one_thread():
    # Tensors of a few hundred numbers: on a busy 2-core machine, intra-op thread hand-offs cost 20x the math.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_denoiser_learns_a_conditional_gaussian_mixture(one_thread):
    """A policy in miniature: frame 0 (clean) tells which of 4 modes, frame 1 (generated) is the 2-D point.
    A bare 2-D point is used, not a tiled one, so the final sigma = 4 call only resolves the mode that conditioning
    picked: the posterior mean at sigma = 4 of an unconditional 2-D mixture would sit between the modes."""
    torch.manual_seed(0)
    codes = torch.tensor([[1.0, 1.0], [-1.0, 1.0], [-1.0, -1.0], [1.0, -1.0]])
    modes = torch.tensor([[1.0, 0.5], [-0.5, 1.0], [-1.0, -0.5], [0.5, -1.0]])

    def batch(n, g):
        k = torch.randint(0, 4, (n,), generator=g)
        point = modes[k] + 0.05 * torch.randn(n, 2, generator=g)
        return torch.stack([codes[k], point], dim=2)[..., None, None], k  # (n, 2, 2, 1, 1)

    cond = torch.tensor([[True, False]])
    net, g = TinyDenoiser(), _gen(0)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(300):
        x0, _ = batch(256, g)
        loss, parts = training_loss(net, x0, cond.expand(256, 2), generator=g, slots={"point": [1]})
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.05 * first, (first, last)
    assert parts["point_l1"] < 0.1, parts
    x0, k = batch(512, _gen(5))
    for num_steps in (5, 10):
        out = sample(net, x0, cond.expand(512, 2), num_steps, generator=_gen(num_steps))
        dist = (out[:, :, 1, 0, 0] - modes[k]).norm(dim=1)
        assert (dist < 0.2).float().mean() > 0.9, dist.median()
        assert torch.equal(out[:, :, 0], x0[:, :, 0])
