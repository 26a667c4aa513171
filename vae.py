"""Wan2.1 causal video VAE: the frozen tokenizer that turns Cosmos Policy's frame sequence into latent frames.

Paper concept (Cosmos Policy, arXiv 2601.16163; method dossier §1.2 and §5.3): the policy builds one raw sequence of
1 + 4(K-1) frames (a blank frame, then 4 copies of each image or placeholder slot), encodes it once with the
Cosmos-Predict2 tokenizer into K latent frames, and overwrites the non-image latents afterwards. The encoder is causal:
latent frame k sees raw frames 0 .. 4k only, so placeholders for the future never leak into earlier latents.

Mirrors Wan-Video/Wan2.1 `wan/modules/vae.py` class `WanVAE_` (the same module code is vendored in NVlabs/cosmos-policy
as `cosmos_policy/_src/predict2/tokenizers/wan2pt1.py` `WanVAE_`), plus the latent normalisation of
`CosmosPolicyWanVAE`. Parameter names and nn.Sequential index layouts are the official ones, so the real
`tokenizer.pth` (= Wan2.1_VAE.pth, a flat state dict without prefix) loads strictly, with no key mapping.

The one structural difference: the official code streams the video (encode frame 0 alone, then chunks of 4 frames;
decode one latent frame at a time) through per-conv caches indexed by call order. Here the whole sequence runs at once
and every temporal convolution pads zeros on the past side only. That is the same function, because each cached
convolution sees exactly the frames it would see in one pass. The two places where the chunked schedule is not a plain
causal convolution are the temporal resamplers; `Resample.forward` spells out what the official first chunk does.

Dimension letters:
    B batch, C channels, T video frames (1 + 4k), H W pixel height and width (multiples of 8),
    Z latent channels (z_dim, 16), T' latent frames (1 + k), h w latent height and width (H/8, W/8).
    The factors 4 and 8 are those of the presets: 2**sum(temperal_downsample) and 2**(len(dim_mult) - 1).

Frame bookkeeping of the presets (temperal_downsample = (False, True, True)):
    encoder   T = 1+4k  -> downsample2d -> 1+4k -> downsample3d -> 1+2k -> downsample3d -> 1+k = T'
    decoder   T' = 1+k  -> upsample3d   -> 1+2k -> upsample3d   -> 1+4k -> upsample2d   -> 1+4k = T
    Frame 0 always passes through the temporal resamplers on its own, which is why T is 1 + 4k and not 4k.

Public API:
    VAEConfig(dim, ...), VAEConfig.wan21() (dim 96, the real tokenizer), VAEConfig.tiny() (dim 8, CPU tests),
        VAEConfig.from_official(kwargs) (the `WanVAE_` constructor kwargs)
    WanVAE(cfg).encode_moments(video (B,3,T,H,W)) -> mu, log_var   each (B,Z,T',h,w), raw posterior moments
    WanVAE(cfg).encode(video (B,3,T,H,W) in [-1,1]) -> latent       (B,Z,T',h,w) = (mu - mean[z]) / std[z]
    WanVAE(cfg).decode(latent (B,Z,T',h,w)) -> video                (B,3,1+4(T'-1),8h,8w), not clamped
    load_vae(path_or_state_dict, cfg, device=None, dtype=None) -> WanVAE in eval mode (strict load)
"""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

# The 16 Wan2.1 latent statistics (per channel), literals in the official `WanVAE` wrapper and `CosmosPolicyWanVAE`.
WAN21_LATENT_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)
WAN21_LATENT_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)

# -----------------------------------------------------------------------------
# Config


@dataclass
class VAEConfig:
    """Constructor arguments of the official `WanVAE_`, plus the latent normalisation constants."""

    dim: int  # base channel width (96 in Wan2.1)
    z_dim: int = 16  # latent channels Z
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)  # channel multiplier per resolution stage
    num_res_blocks: int = 2  # residual blocks per encoder stage (the decoder has one more)
    attn_scales: tuple[float, ...] = ()  # resolutions (1.0 = input) that get extra attention blocks
    # Official spelling, kept so that the official constructor kwargs map onto this config one to one.
    temperal_downsample: tuple[bool, ...] = (False, True, True)  # which spatial downsamples also halve time
    dropout: float = 0.0  # in the residual blocks (the official checkpoints: 0)
    latent_mean: tuple[float, ...] = WAN21_LATENT_MEAN  # per-channel mean (Z,) subtracted from the encoder's mu
    latent_std: tuple[float, ...] = WAN21_LATENT_STD  # per-channel std (Z,) it is then divided by (toy: measured)

    def __post_init__(self):
        # JSON and kwargs give lists; tuples keep the config hashable and make asdict -> VAEConfig(**d) round-trip.
        self.dim_mult = tuple(int(m) for m in self.dim_mult)
        self.attn_scales = tuple(float(s) for s in self.attn_scales)
        self.temperal_downsample = tuple(bool(t) for t in self.temperal_downsample)
        self.latent_mean = tuple(float(m) for m in self.latent_mean)
        self.latent_std = tuple(float(s) for s in self.latent_std)
        assert self.dim > 0 and self.z_dim > 0, f"dim and z_dim must be positive, got {self.dim}, {self.z_dim}"
        assert len(self.dim_mult) >= 1 and min(self.dim_mult) > 0, f"bad dim_mult {self.dim_mult}"
        assert self.num_res_blocks >= 1, f"num_res_blocks must be >= 1, got {self.num_res_blocks}"
        assert len(self.temperal_downsample) == len(self.dim_mult) - 1, (
            f"temperal_downsample needs one flag per downsample, i.e. len(dim_mult) - 1 = {len(self.dim_mult) - 1}, "
            f"got {self.temperal_downsample}")
        assert 0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}"
        assert len(self.latent_mean) == self.z_dim and len(self.latent_std) == self.z_dim, (
            f"latent_mean and latent_std need z_dim = {self.z_dim} values, "
            f"got {len(self.latent_mean)} and {len(self.latent_std)}")
        assert min(self.latent_std) > 0, "latent_std must be positive"

    @classmethod
    def wan21(cls):
        """The real Wan2.1 VAE of Cosmos-Predict2 / Cosmos Policy (tokenizer.pth, 126.9M parameters)."""
        return cls(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                   temperal_downsample=(False, True, True), dropout=0.0)

    @classmethod
    def tiny(cls):
        """Same layout at width 8 (0.92M parameters): CPU tests, parity fixture A and the toy task."""
        return cls(dim=8, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2, attn_scales=(),
                   temperal_downsample=(False, True, True), dropout=0.0)

    @classmethod
    def from_official(cls, kwargs):
        """Config from the official `WanVAE_(**kwargs)` constructor kwargs.

        `temporal_window` (the encode chunk size of the official streaming loop) is accepted and has no effect:
        this module encodes the whole sequence causally at once, and every chunk size gives the same latents.
        """
        known = {"dim", "z_dim", "dim_mult", "num_res_blocks", "attn_scales", "temperal_downsample", "dropout",
                 "temporal_window"}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise ValueError(f"unknown WanVAE_ kwargs {unknown}; expected a subset of {sorted(known)}")
        return cls(**{k: v for k, v in kwargs.items() if k != "temporal_window"})


# -----------------------------------------------------------------------------
# Building blocks


class CausalConv3d(nn.Conv3d):
    """Conv3d that pads 2 * pad_t zero frames on the past side only (and pad_h, pad_w symmetrically)."""

    def __init__(self, in_dim, out_dim, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=0)
        pad_t, pad_h, pad_w = (padding,) * 3 if isinstance(padding, int) else padding
        # F.pad order is (W left, W right, H top, H bottom, T past, T future): output frame t sees input frames <= t.
        self.causal_padding = (pad_w, pad_w, pad_h, pad_h, 2 * pad_t, 0)

    def forward(self, x):  # (B, C, T, H, W) -> (B, C', T_out, H_out, W_out)
        return super().forward(F.pad(x, self.causal_padding))


class RMS_norm(nn.Module):
    """Normalise over channels to unit L2 norm, times sqrt(C) and a learned per-channel gain (no bias)."""

    def __init__(self, dim, images=True):
        super().__init__()
        # images=True: per-frame (N, C, H, W) inputs in the attention block; otherwise (B, C, T, H, W) video.
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1) if images else torch.ones(dim, 1, 1, 1))
        self.scale = dim ** 0.5

    def forward(self, x):  # (B, C, ...) -> same
        # The L2 form (eps 1e-12 on the norm) is the official F.normalize; rsqrt(mean(x^2) + 1e-6) drifts by ~1e-4.
        # Written as sum-sqrt because torch's CPU vector norm over a strided channel axis is 4x slower.
        norm = x.square().sum(1, keepdim=True).sqrt().clamp_min(1e-12)  # (B, 1, ...)
        return x / norm * self.scale * self.gamma


class Upsample(nn.Module):
    """Nearest-exact x2 spatial upsampling of per-frame images."""

    def forward(self, x):  # (N, C, H, W) -> (N, C, 2H, 2W)
        # Computed in float32 because nearest-exact lacks bfloat16 kernels on some devices; a copy loses nothing.
        return F.interpolate(x.float(), scale_factor=2.0, mode="nearest-exact").to(x.dtype)


class Resample(nn.Module):
    """x2 spatial down/upsampling, plus x2 in time for the "3d" modes."""

    def __init__(self, dim, mode):
        super().__init__()
        assert mode in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"), f"unknown mode {mode}"
        self.mode = mode
        # Index 0 of `resample` holds the parameter-free op, so the conv is `resample.1` as in the checkpoint.
        if mode.startswith("upsample"):
            self.resample = nn.Sequential(Upsample(), nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:
            # Padding right and bottom only makes the stride-2 conv map H to ceil(H / 2), aligned at the top left.
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x):  # (B, C, T, H, W)
        if self.mode == "upsample3d" and x.shape[2] > 1:
            # The official decoder streams latent frames and marks its first call with the 'Rep' sentinel: frame 0
            # skips time_conv and stays 1 frame, and the next call zero-pads instead of using frame 0. So frames 1..
            # form their own causal sequence that never sees frame 0; each yields 2 frames (channel halves r = 0, 1).
            rest = self.time_conv(x[:, :, 1:])  # (B, 2C, T-1, H, W)
            rest = rearrange(rest, "b (r c) t h w -> b c (t r) h w", r=2)  # (B, C, 2(T-1), H, W)
            x = torch.cat([x[:, :, :1], rest], dim=2)  # (B, C, 1 + 2(T-1), H, W)
        t = x.shape[2]
        x = rearrange(x, "b c t h w -> (b t) c h w")  # (B*T, C, H, W)
        x = self.resample(x)  # (B*T, C', H', W')
        x = rearrange(x, "(b t) c h w -> b c t h w", t=t)  # (B, C', T, H', W')
        if self.mode == "downsample3d" and t > 1:
            # The official encoder runs frame 0 alone (time_conv skipped, frame 0 cached), then prepends the cached
            # last frame to each chunk: windows (0,1,2), (2,3,4), ... which is the unpadded stride-2 conv of the
            # whole sequence, behind frame 0 passed through.
            x = torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)  # (B, C', 1 + (T-1)/2, H', W')
        return x


class ResidualBlock(nn.Module):
    """Two causal 3x3x3 convs with pre-norm and SiLU, plus a 1x1x1 shortcut when the width changes."""

    def __init__(self, in_dim, out_dim, dropout=0.0):
        super().__init__()
        # SiLU and Dropout take Sequential slots, so the checkpoint names the convs residual.2 and residual.6.
        self.residual = nn.Sequential(
            RMS_norm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMS_norm(out_dim, images=False), nn.SiLU(), nn.Dropout(dropout),
            CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):  # (B, C_in, T, H, W) -> (B, C_out, T, H, W)
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame separately (so it is causal in time)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMS_norm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)
        # Official init: a zero output projection makes a freshly built block the identity.
        nn.init.zeros_(self.proj.weight)

    def forward(self, x):  # (B, C, T, H, W) -> same
        b, c, t, h, w = x.shape
        y = rearrange(x, "b c t h w -> (b t) c h w")  # (B*T, C, H, W)
        qkv = self.to_qkv(self.norm(y))  # (B*T, 3C, H, W)
        q, k, v = rearrange(qkv, "n (r c) h w -> r n 1 (h w) c", r=3)  # each (B*T, 1, H*W, C)
        y = F.scaled_dot_product_attention(q, k, v)  # (B*T, 1, H*W, C)
        y = rearrange(y, "n 1 (h w) c -> n c h w", h=h)  # (B*T, C, H, W)
        y = self.proj(y)
        return x + rearrange(y, "(b t) c h w -> b c t h w", t=t)  # (B, C, T, H, W)


# -----------------------------------------------------------------------------
# Encoder and decoder


class Encoder3d(nn.Module):
    """Video (B, 3, T, H, W) -> posterior moments before `WanVAE.conv1`, (B, 2Z, T', h, w)."""

    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temporal_downsample, dropout):
        super().__init__()
        dims = [dim * m for m in (1, *dim_mult)]  # width entering each stage, then the final width
        scale = 1.0  # current resolution relative to the input, for attn_scales
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "downsample3d" if temporal_downsample[i] else "downsample2d"))
                scale /= 2
        self.downsamples = nn.Sequential(*blocks)
        self.middle = nn.Sequential(ResidualBlock(out_dim, out_dim, dropout), AttentionBlock(out_dim),
                                    ResidualBlock(out_dim, out_dim, dropout))
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(),
                                  CausalConv3d(out_dim, z_dim, 3, padding=1))

    def forward(self, x):  # (B, 3, T, H, W) -> (B, 2Z, T', h, w)
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder3d(nn.Module):
    """Latent (B, Z, T', h, w) after `WanVAE.conv2` -> video (B, 3, 1 + 4(T'-1), 8h, 8w)."""

    def __init__(self, dim, z_dim, dim_mult, num_res_blocks, attn_scales, temporal_upsample, dropout):
        super().__init__()
        dims = [dim * m for m in (dim_mult[-1], *reversed(dim_mult))]  # widest first
        scale = 1.0 / 2 ** (len(dim_mult) - 2)  # current resolution relative to the output, for attn_scales
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(dims[0], dims[0], dropout), AttentionBlock(dims[0]),
                                    ResidualBlock(dims[0], dims[0], dropout))
        blocks = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim //= 2  # the upsample conv that closed the previous stage halved its width
            for _ in range(num_res_blocks + 1):
                blocks.append(ResidualBlock(in_dim, out_dim, dropout))
                if scale in attn_scales:
                    blocks.append(AttentionBlock(out_dim))
                in_dim = out_dim
            if i < len(dim_mult) - 1:
                blocks.append(Resample(out_dim, "upsample3d" if temporal_upsample[i] else "upsample2d"))
                scale *= 2
        self.upsamples = nn.Sequential(*blocks)
        self.head = nn.Sequential(RMS_norm(out_dim, images=False), nn.SiLU(),
                                  CausalConv3d(out_dim, 3, 3, padding=1))

    def forward(self, x):  # (B, Z, T', h, w) -> (B, 3, T, H, W)
        return self.head(self.upsamples(self.middle(self.conv1(x))))


# -----------------------------------------------------------------------------
# The VAE


class WanVAE(nn.Module):
    """Deterministic causal video tokenizer: `encode` returns the normalised posterior mean, `decode` inverts it."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        self.cfg = cfg
        self.time_factor = 2 ** sum(cfg.temperal_downsample)  # 4 for Wan2.1
        self.space_factor = 2 ** (len(cfg.dim_mult) - 1)  # 8 for Wan2.1
        self.encoder = Encoder3d(cfg.dim, 2 * cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.attn_scales,
                                 cfg.temperal_downsample, cfg.dropout)
        self.conv1 = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, 1)  # -> (mu || log_var)
        self.conv2 = CausalConv3d(cfg.z_dim, cfg.z_dim, 1)
        self.decoder = Decoder3d(cfg.dim, cfg.z_dim, cfg.dim_mult, cfg.num_res_blocks, cfg.attn_scales,
                                 cfg.temperal_downsample[::-1], cfg.dropout)

    def _latent_scale(self, like):
        # Built in the latent's dtype, as the reference builds [mean, 1/std]: in bf16 that is the rounded mean and
        # the bf16 reciprocal of the bf16 std, the values the real pipeline applies.
        mean = torch.tensor(self.cfg.latent_mean, dtype=like.dtype, device=like.device)
        inv_std = 1.0 / torch.tensor(self.cfg.latent_std, dtype=like.dtype, device=like.device)
        return rearrange(mean, "z -> 1 z 1 1 1"), rearrange(inv_std, "z -> 1 z 1 1 1")

    def encode_moments(self, video):
        """Raw posterior (mu, log_var), each (B, Z, T', h, w), of a video (B, 3, T, H, W) in [-1, 1]."""
        assert video.ndim == 5, f"video must be (B, 3, T, H, W), got shape {tuple(video.shape)}"
        _, c, t, h, w = video.shape
        assert c == 3, f"video must have 3 (RGB) channels in dim 1, got {c} (shape {tuple(video.shape)})"
        assert t % self.time_factor == 1, (
            f"video needs 1 + {self.time_factor}k frames (the first frame is encoded alone), got T = {t}")
        assert h % self.space_factor == 0 and w % self.space_factor == 0, (
            f"H and W must be multiples of {self.space_factor}, got {h} x {w}")
        video = video.to(self.conv1.weight.dtype)
        moments = self.conv1(self.encoder(video))  # (B, 2Z, T', h, w)
        mu, log_var = moments.chunk(2, dim=1)  # each (B, Z, T', h, w)
        return mu, log_var

    def encode(self, video):
        """Video (B, 3, T, H, W) in [-1, 1] -> normalised latent (B, Z, T', h, w) = (mu - mean) / std."""
        mu, _ = self.encode_moments(video)
        mean, inv_std = self._latent_scale(mu)
        return (mu - mean) * inv_std

    def decode(self, latent):
        """Normalised latent (B, Z, T', h, w) -> video (B, 3, 1 + 4(T'-1), 8h, 8w), not clamped to [-1, 1]."""
        assert latent.ndim == 5 and latent.shape[1] == self.cfg.z_dim, (
            f"latent must be (B, {self.cfg.z_dim}, T', h, w), got shape {tuple(latent.shape)}")
        latent = latent.to(self.conv2.weight.dtype)
        mean, inv_std = self._latent_scale(latent)
        z = latent / inv_std + mean  # (B, Z, T', h, w), the reference's exact inverse
        return self.decoder(self.conv2(z))

    def forward(self, video, generator=None):
        """Training pass (ours; the official forward is unusable): reconstruct `video` from a posterior sample
        z = mu + eps * exp(log_var / 2) -> (reconstruction (B, 3, T, H, W), mu, log_var)."""
        mu, log_var = self.encode_moments(video)
        eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator else mu.device)
        z = mu + eps.to(mu) * (0.5 * log_var).exp()  # (B, Z, T', h, w)
        mean, inv_std = self._latent_scale(z)
        return self.decode((z - mean) * inv_std), mu, log_var


# -----------------------------------------------------------------------------
# Loading


def load_vae(path_or_state_dict, cfg: VAEConfig, device=None, dtype=None) -> WanVAE:
    """Strictly load a flat Wan2.1 VAE state dict (e.g. tokenizer.pth) into a `WanVAE` in eval mode.

    The model is built on the meta device, so no memory is spent on an initialisation that is overwritten. Any
    mismatch raises one ValueError naming every missing, unexpected and mis-shaped key. `dtype` casts floating tensors
    only; dtype=None keeps the checkpoint's dtype.
    """
    if isinstance(path_or_state_dict, dict):
        state_dict = path_or_state_dict
    else:
        state_dict = torch.load(path_or_state_dict, map_location="cpu", weights_only=True, mmap=True)
    with torch.device("meta"):
        model = WanVAE(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(expected.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - expected.keys())
    wrong_shape = [f"{k}: checkpoint {tuple(state_dict[k].shape)}, model {expected[k]}"
                   for k in expected if k in state_dict and tuple(state_dict[k].shape) != expected[k]]
    if missing or unexpected or wrong_shape:
        problems = [f"{name} ({len(keys)}): " + ", ".join(keys) for name, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)) if keys]
        raise ValueError(f"state dict does not fit WanVAE(dim={cfg.dim}, z_dim={cfg.z_dim}, "
                         f"dim_mult={cfg.dim_mult}):\n  " + "\n  ".join(problems))
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval()
