"""Cosmos-Predict2 video DiT: the denoiser that Cosmos Policy fine-tunes (arXiv 2601.16163; method.md §2.1, §5).

A diffusion transformer over latent-video tokens. Every latent frame gets its own timestep (clean conditioning frames
have t = 0), which modulates each sub-layer through adaLN-LoRA; self-attention uses 3-D RoPE, cross-attention reads
the T5 text embedding, and the MLP is a bias-free GELU MLP. Weight-for-weight (strict load) port of:

  NVlabs/cosmos-policy  cosmos_policy/_src/predict2/networks/minimal_v4_dit.py
      MiniTrainDIT, Block, Attention, GPT2FeedForward, VideoRopePosition3DEmb, Timesteps, TimestepEmbedding,
      PatchEmbed, FinalLayer
  NVlabs/cosmos-policy  cosmos_policy/_src/predict2/networks/minimal_v1_lvg_dit.py
      MinimalV1LVGDiT (the subclass that adds the condition-mask input channel)
  (the same network as nvidia-cosmos/cosmos-predict2 cosmos_predict2/models/text2image_dit.py)

Differences from the official code: one class (DiT) instead of a subclass; one attention path (torch SDPA); no
context parallelism, selective checkpointing policies, sparse attention or backend strings; a plain fp32 RMSNorm
instead of TransformerEngine's (its `._extra_state` bytes are skipped by load_dit); no `accum_*` training-statistics
buffers (skipped by load_dit); the timestep sinusoid and RoPE angles stay fp32 when the weights are bf16.

Dimension letters: B batch, C latent channels, T latent frames, H W latent height and width (inside the blocks: the
token grid T/pt x H/p x W/p), D model width, L = T*H*W video tokens, S text tokens, E text width, N heads, K head dim,
O = patch_spatial^2 * patch_temporal * out_channels (one token's output patch).

Public API
  DiTConfig                 presets .cosmos_predict2_2b(), .tiny(); .from_official(constructor kwargs)
  DiT(cfg)(x_B_C_T_H_W, timesteps_B_T, crossattn_emb, condition_video_input_mask_B_C_T_H_W=None, padding_mask=None)
      x (B, in_channels, T, H, W): the network input (1 - t) x0 + t eps, clean latents on conditioning frames
      timesteps (B, T) rectified-flow time t = sigma / (1 + sigma) in [0, 1), 0 on clean frames; or (B,) for all
      crossattn_emb (B, S, crossattn_emb_channels); condition mask (B, 1, T, H, W), 1 on clean frames
      padding_mask (B, 1, Hp, Wp) at any resolution, 1 on padded pixels
      -> velocity (B, out_channels, T, H, W) float32
  load_dit(path_or_state_dict, cfg, device=None, dtype=None, ema=False) -> DiT in eval mode
"""
import collections
import dataclasses
import math
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn
from torch.utils.checkpoint import checkpoint

# ============================================ primitives ============================================


class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight over the last dim, computed in fp32 (TransformerEngine's formula)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        y = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight.float()
        return y.to(x.dtype)


class GPT2FeedForward(nn.Module):
    """Linear(D -> mlp_ratio*D) -> exact (erf) GELU -> Linear(mlp_ratio*D -> D), bias-free."""

    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.activation = nn.GELU()
        self.layer1 = nn.Linear(d_model, d_ff, bias=False)
        self.layer2 = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer2(self.activation(self.layer1(x)))


class Timesteps(nn.Module):
    """(B, T) times -> (B, T, D) sinusoid [cos, sin](t * 10000^(-i / (D/2))), i < D/2, cos first."""

    def __init__(self, num_channels: int):
        super().__init__()
        self.num_channels = num_channels

    def forward(self, timesteps_B_T: torch.Tensor) -> torch.Tensor:
        half = self.num_channels // 2
        # Always fp32: t lives in [0, 1), where bf16 would merge neighbouring noise levels.
        exponent = -math.log(10000) * torch.arange(half, dtype=torch.float32, device=timesteps_B_T.device) / half
        angles_B_T_half = timesteps_B_T.float()[..., None] * torch.exp(exponent)
        return torch.cat([torch.cos(angles_B_T_half), torch.sin(angles_B_T_half)], dim=-1)  # (B, T, D)


class TimestepEmbedding(nn.Module):
    """adaLN-LoRA flavour: returns the raw sinusoid as the embedding, plus the LoRA base term shared by all blocks.

    (B, T, D) sinusoid -> (sinusoid (B, T, D), adaln_lora = Linear(D->3D)(SiLU(Linear(D->D)(sinusoid))) (B, T, 3D)).
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(out_features, 3 * out_features, bias=False)

    def forward(self, sample_B_T_D: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden_B_T_D = self.activation(self.linear_1(sample_B_T_D.to(self.linear_1.weight.dtype)))
        return sample_B_T_D, self.linear_2(hidden_B_T_D)


class PatchEmbed(nn.Module):
    """(B, C, T, H, W) -> (B, T/pt, H/p, W/p, D): the patch is flattened channel-major (c, r, m, n), then Linear."""

    def __init__(self, spatial_patch_size: int, temporal_patch_size: int, in_channels: int, out_channels: int):
        super().__init__()
        p, pt = spatial_patch_size, temporal_patch_size
        self.proj = nn.Sequential(  # Sequential keeps the checkpoint key `x_embedder.proj.1.weight`
            Rearrange("b c (t r) (h m) (w n) -> b t h w (c r m n)", r=pt, m=p, n=p),  # (B, T', H', W', C*pt*p*p)
            nn.Linear(in_channels * pt * p * p, out_channels, bias=False),
        )

    def forward(self, x_B_C_T_H_W: torch.Tensor) -> torch.Tensor:
        return self.proj(x_B_C_T_H_W)


# ============================================ 3-D RoPE ============================================


class VideoRopePosition3DEmb(nn.Module):
    """Rotary angles for a (T, H, W) token grid: head dim K split d_h = d_w = (K // 6) * 2, d_t = K - 2 d_h.

    forward(T, H, W) -> (L, 1, K) fp32 angles, L in t-major raster order, laid out [t, h, w, t, h, w] so that
    rotate-half pairs channel i with i + K/2. Positions are plain integer indices (fps modulation is off).
    """

    def __init__(self, *, head_dim: int, len_h: int, len_w: int, len_t: int,
                 h_extrapolation_ratio: float, w_extrapolation_ratio: float, t_extrapolation_ratio: float):
        super().__init__()
        dim_h = head_dim // 6 * 2
        dim_t = head_dim - 2 * dim_h
        # Persistent buffers, as in the checkpoints: the official bf16 cast rounds these exponents, and the angles are
        # computed from whatever values the loaded checkpoint holds, so a bf16 checkpoint reproduces bit-faithfully.
        self.register_buffer("seq", torch.arange(max(len_h, len_w, len_t), dtype=torch.float32))
        self.register_buffer("dim_spatial_range", torch.arange(0, dim_h, 2, dtype=torch.float32) / dim_h)
        self.register_buffer("dim_temporal_range", torch.arange(0, dim_t, 2, dtype=torch.float32) / dim_t)
        self.max_t, self.max_h, self.max_w = len_t, len_h, len_w
        # NTK-aware scaling: theta * ratio^(d/(d-2)) stretches the lowest frequency by exactly `ratio`, so a model
        # trained on a grid `ratio` times smaller sees familiar angles (the 2B uses 3 on H, W: theta ~ 31,694).
        self.h_theta = 10000.0 * h_extrapolation_ratio ** (dim_h / (dim_h - 2))
        self.w_theta = 10000.0 * w_extrapolation_ratio ** (dim_h / (dim_h - 2))
        self.t_theta = 10000.0 * t_extrapolation_ratio ** (dim_t / (dim_t - 2))

    def forward(self, T: int, H: int, W: int) -> torch.Tensor:
        seq = self.seq.float()
        freqs_h = 1.0 / self.h_theta ** self.dim_spatial_range.float()  # (d_h/2,)
        freqs_w = 1.0 / self.w_theta ** self.dim_spatial_range.float()  # (d_w/2,)
        freqs_t = 1.0 / self.t_theta ** self.dim_temporal_range.float()  # (d_t/2,)
        angles_T_H_W_K = torch.cat([
            repeat(torch.outer(seq[:T], freqs_t), "t d -> t h w d", h=H, w=W),
            repeat(torch.outer(seq[:H], freqs_h), "h d -> t h w d", t=T, w=W),
            repeat(torch.outer(seq[:W], freqs_w), "w d -> t h w d", t=T, h=H),
        ] * 2, dim=-1)  # (T, H, W, K)
        return rearrange(angles_T_H_W_K, "t h w k -> (t h w) 1 k")  # (L, 1, K)


def apply_rotary_pos_emb(x_B_L_N_K: torch.Tensor, angles_L_1_K: torch.Tensor) -> torch.Tensor:
    """Non-interleaved rotate-half RoPE, x*cos + [-x2, x1]*sin, in fp32 (TransformerEngine's fused kernel does too)."""
    x = x_B_L_N_K.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated_B_L_N_K = torch.cat([-x2, x1], dim=-1)  # (B, L, N, K)
    return (x * angles_L_1_K.cos() + rotated_B_L_N_K * angles_L_1_K.sin()).to(x_B_L_N_K.dtype)


# ============================================ attention ============================================


class Attention(nn.Module):
    """Multi-head attention, bias-free projections, per-head QK RMSNorm (eps 1e-6), SDPA with no mask.

    Self-attention (context_dim None): (B, L, D) -> (B, L, D), RoPE on q and k after their norms.
    Cross-attention: queries (B, L, D), keys/values from context (B, S, E) -> (B, L, D), no RoPE.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int], n_heads: int, head_dim: int):
        super().__init__()
        self.is_selfattn = context_dim is None
        context_dim = query_dim if context_dim is None else context_dim
        self.n_heads = n_heads
        self.q_proj = nn.Linear(query_dim, n_heads * head_dim, bias=False)
        self.q_norm = RMSNorm(head_dim, eps=1e-6)
        self.k_proj = nn.Linear(context_dim, n_heads * head_dim, bias=False)
        self.k_norm = RMSNorm(head_dim, eps=1e-6)
        self.v_proj = nn.Linear(context_dim, n_heads * head_dim, bias=False)
        self.output_proj = nn.Linear(n_heads * head_dim, query_dim, bias=False)

    def forward(self, x_B_L_D: torch.Tensor, context_B_S_E: Optional[torch.Tensor] = None,
                rope_L_1_K: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x_B_L_D if context_B_S_E is None else context_B_S_E
        q_B_L_N_K = rearrange(self.q_proj(x_B_L_D), "b l (n k) -> b l n k", n=self.n_heads)  # (B, L, N, K)
        k_B_S_N_K = rearrange(self.k_proj(context), "b s (n k) -> b s n k", n=self.n_heads)  # (B, S, N, K)
        v_B_S_N_K = rearrange(self.v_proj(context), "b s (n k) -> b s n k", n=self.n_heads)  # (B, S, N, K)
        q_B_L_N_K, k_B_S_N_K = self.q_norm(q_B_L_N_K), self.k_norm(k_B_S_N_K)
        if self.is_selfattn:  # text tokens have no place on the video grid, so cross-attention gets no RoPE
            q_B_L_N_K = apply_rotary_pos_emb(q_B_L_N_K, rope_L_1_K)
            k_B_S_N_K = apply_rotary_pos_emb(k_B_S_N_K, rope_L_1_K)
        out_B_N_L_K = F.scaled_dot_product_attention(
            rearrange(q_B_L_N_K, "b l n k -> b n l k"),  # (B, N, L, K)
            rearrange(k_B_S_N_K, "b s n k -> b n s k"),  # (B, N, S, K)
            rearrange(v_B_S_N_K, "b s n k -> b n s k"),  # (B, N, S, K)
        )
        return self.output_proj(rearrange(out_B_N_L_K, "b n l k -> b l (n k)"))  # (B, L, D)


# ============================================ blocks ============================================


def _adaln_lora_modulation(D: int, lora_dim: int, n_chunks: int) -> nn.Sequential:
    # The leading parameterless SiLU keeps the official indices: `.1.weight` (D -> lora), `.2.weight` (lora -> nD).
    return nn.Sequential(nn.SiLU(), nn.Linear(D, lora_dim, bias=False), nn.Linear(lora_dim, n_chunks * D, bias=False))


class Block(nn.Module):
    """Self-attention -> cross-attention -> MLP, each as x += gate * f(LN(x) * (1 + scale) + shift).

    (shift, scale, gate) per sub-layer and per latent frame = chunk3(LoRA(SiLU(emb)) + adaln_lora), broadcast over
    H, W. x (B, T, H, W, D), emb (B, T, D), crossattn_emb (B, S, E), rope (L, 1, K), adaln_lora (B, T, 3D) -> x.
    """

    def __init__(self, x_dim: int, context_dim: int, num_heads: int, mlp_ratio: float, adaln_lora_dim: int):
        super().__init__()
        self.layer_norm_self_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.self_attn = Attention(x_dim, None, num_heads, x_dim // num_heads)
        self.layer_norm_cross_attn = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = Attention(x_dim, context_dim, num_heads, x_dim // num_heads)
        self.layer_norm_mlp = nn.LayerNorm(x_dim, elementwise_affine=False, eps=1e-6)
        self.mlp = GPT2FeedForward(x_dim, int(x_dim * mlp_ratio))
        self.adaln_modulation_self_attn = _adaln_lora_modulation(x_dim, adaln_lora_dim, 3)
        self.adaln_modulation_cross_attn = _adaln_lora_modulation(x_dim, adaln_lora_dim, 3)
        self.adaln_modulation_mlp = _adaln_lora_modulation(x_dim, adaln_lora_dim, 3)

    def forward(self, x_B_T_H_W_D: torch.Tensor, emb_B_T_D: torch.Tensor, crossattn_emb_B_S_E: torch.Tensor,
                rope_L_1_K: torch.Tensor, adaln_lora_B_T_3D: torch.Tensor) -> torch.Tensor:
        B, T, H, W, D = x_B_T_H_W_D.shape

        def modulation(adaln_modulation):
            shift_scale_gate_B_T_3D = adaln_modulation(emb_B_T_D) + adaln_lora_B_T_3D
            return [rearrange(m, "b t d -> b t 1 1 d") for m in shift_scale_gate_B_T_3D.chunk(3, dim=-1)]

        def to_tokens(x):
            return rearrange(x, "b t h w d -> b (t h w) d")  # (B, L, D)

        def to_grid(x):
            return rearrange(x, "b (t h w) d -> b t h w d", t=T, h=H, w=W)  # (B, T, H, W, D)

        shift, scale, gate = modulation(self.adaln_modulation_self_attn)
        h = self.layer_norm_self_attn(x_B_T_H_W_D) * (1 + scale) + shift
        x_B_T_H_W_D = x_B_T_H_W_D + gate * to_grid(self.self_attn(to_tokens(h), None, rope_L_1_K))

        shift, scale, gate = modulation(self.adaln_modulation_cross_attn)
        h = self.layer_norm_cross_attn(x_B_T_H_W_D) * (1 + scale) + shift
        x_B_T_H_W_D = x_B_T_H_W_D + gate * to_grid(self.cross_attn(to_tokens(h), crossattn_emb_B_S_E))

        shift, scale, gate = modulation(self.adaln_modulation_mlp)
        h = self.layer_norm_mlp(x_B_T_H_W_D) * (1 + scale) + shift
        return x_B_T_H_W_D + gate * self.mlp(h)


# ============================================ final layer ============================================


class FinalLayer(nn.Module):
    """LN(x) * (1 + scale) + shift, then Linear(D -> O); (shift, scale) use the first 2D of adaln_lora.

    x (B, T, H, W, D), emb (B, T, D), adaln_lora (B, T, 3D) -> (B, T, H, W, O).
    """

    def __init__(self, hidden_size: int, spatial_patch_size: int, temporal_patch_size: int, out_channels: int,
                 adaln_lora_dim: int):
        super().__init__()
        self.hidden_size = hidden_size
        self.layer_norm = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, spatial_patch_size**2 * temporal_patch_size * out_channels, bias=False)
        self.adaln_modulation = _adaln_lora_modulation(hidden_size, adaln_lora_dim, 2)

    def forward(self, x_B_T_H_W_D: torch.Tensor, emb_B_T_D: torch.Tensor,
                adaln_lora_B_T_3D: torch.Tensor) -> torch.Tensor:
        shift_scale_B_T_2D = self.adaln_modulation(emb_B_T_D) + adaln_lora_B_T_3D[..., : 2 * self.hidden_size]
        shift, scale = [rearrange(m, "b t d -> b t 1 1 d") for m in shift_scale_B_T_2D.chunk(2, dim=-1)]
        return self.linear(self.layer_norm(x_B_T_H_W_D) * (1 + scale) + shift)


# ============================================ DiT ============================================


class DiT(nn.Module):
    """MinimalV1LVGDiT / MiniTrainDIT. forward shapes are in the module docstring."""

    def __init__(self, cfg: "DiTConfig"):
        super().__init__()
        self.cfg = cfg
        D, p, pt = cfg.model_channels, cfg.patch_spatial, cfg.patch_temporal
        # Latent channels + the condition-mask channel (MinimalV1LVGDiT) + the padding-mask channel: 16 + 1 + 1 = 18.
        in_channels = cfg.in_channels + 1 + int(cfg.concat_padding_mask)
        self.x_embedder = PatchEmbed(p, pt, in_channels, D)
        self.pos_embedder = VideoRopePosition3DEmb(
            head_dim=D // cfg.num_heads, len_h=cfg.max_img_h // p, len_w=cfg.max_img_w // p,
            len_t=cfg.max_frames // pt, h_extrapolation_ratio=cfg.rope_h_extrapolation_ratio,
            w_extrapolation_ratio=cfg.rope_w_extrapolation_ratio, t_extrapolation_ratio=cfg.rope_t_extrapolation_ratio)
        self.t_embedder = nn.Sequential(Timesteps(D), TimestepEmbedding(D, D))
        self.blocks = nn.ModuleList([
            Block(D, cfg.crossattn_emb_channels, cfg.num_heads, cfg.mlp_ratio, cfg.adaln_lora_dim)
            for _ in range(cfg.num_blocks)])
        self.final_layer = FinalLayer(D, p, pt, cfg.out_channels, cfg.adaln_lora_dim)
        self.t_embedding_norm = RMSNorm(D, eps=1e-6)
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: truncated N(0, 1/fan_in) at 3 std, unit RMSNorm gains, zero adaLN up-projections."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                std = module.in_features**-0.5
                nn.init.trunc_normal_(module.weight, std=std, a=-3 * std, b=3 * std)
            elif isinstance(module, RMSNorm):
                nn.init.ones_(module.weight)
        # Zero up-projections leave only the shared LoRA base term at init, so every block starts identically modulated.
        for block in self.blocks:
            for modulation in (block.adaln_modulation_self_attn, block.adaln_modulation_cross_attn,
                               block.adaln_modulation_mlp):
                nn.init.zeros_(modulation[2].weight)
        nn.init.zeros_(self.final_layer.adaln_modulation[2].weight)

    def unpatchify(self, x_B_T_H_W_O: torch.Tensor) -> torch.Tensor:
        # Channel-minor (p1 p2 t C), the reverse of PatchEmbed's channel-major order: the official layout.
        p, pt = self.cfg.patch_spatial, self.cfg.patch_temporal
        return rearrange(x_B_T_H_W_O, "B T H W (p1 p2 t C) -> B C (T t) (H p1) (W p2)",
                         p1=p, p2=p, t=pt)  # (B, out_channels, T*pt, H*p, W*p)

    def forward(self, x_B_C_T_H_W: torch.Tensor, timesteps_B_T: torch.Tensor, crossattn_emb: torch.Tensor,
                condition_video_input_mask_B_C_T_H_W: Optional[torch.Tensor] = None,
                padding_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        cfg = self.cfg
        p, pt = cfg.patch_spatial, cfg.patch_temporal
        assert x_B_C_T_H_W.ndim == 5 and x_B_C_T_H_W.shape[1] == cfg.in_channels, (
            f"x_B_C_T_H_W must be (B, {cfg.in_channels}, T, H, W), got {tuple(x_B_C_T_H_W.shape)}")
        B, _, T, H, W = x_B_C_T_H_W.shape
        assert T % pt == 0 and H % p == 0 and W % p == 0, (
            f"(T, H, W) = {(T, H, W)} must be divisible by the patch (patch_temporal, patch_spatial, patch_spatial) "
            f"= {(pt, p, p)}")
        Tg, Hg, Wg = T // pt, H // p, W // p  # token grid
        max_grid = (cfg.max_frames // pt, cfg.max_img_h // p, cfg.max_img_w // p)
        assert Tg <= max_grid[0] and Hg <= max_grid[1] and Wg <= max_grid[2], (
            f"token grid (T, H, W) = {(Tg, Hg, Wg)} exceeds the RoPE table {max_grid} (max_frames, max_img_h, "
            f"max_img_w over the patch size)")
        assert tuple(timesteps_B_T.shape) in ((B,), (B, Tg)), (
            f"timesteps must be (B, T) = {(B, Tg)} (one t per latent frame) or (B,) = {(B,)}, got "
            f"{tuple(timesteps_B_T.shape)}")
        E = cfg.crossattn_emb_channels
        assert crossattn_emb.ndim == 3 and (crossattn_emb.shape[0], crossattn_emb.shape[2]) == (B, E), (
            f"crossattn_emb must be (B={B}, S, {E}), got {tuple(crossattn_emb.shape)}")
        dtype = self.x_embedder.proj[1].weight.dtype

        cond_mask = condition_video_input_mask_B_C_T_H_W
        if cond_mask is None:  # the official image path: no frame is marked clean
            cond_mask = x_B_C_T_H_W.new_zeros(B, 1, T, H, W)
        assert tuple(cond_mask.shape) == (B, 1, T, H, W), (
            f"condition mask must be (B, 1, T, H, W) = {(B, 1, T, H, W)}, got {tuple(cond_mask.shape)}")
        x = torch.cat([x_B_C_T_H_W.to(dtype), cond_mask.to(dtype)], dim=1)  # (B, C+1, T, H, W)
        if cfg.concat_padding_mask:
            if padding_mask is None:
                padding_mask = x.new_zeros(B, 1, H, W)
            assert padding_mask.ndim == 4 and tuple(padding_mask.shape[:2]) == (B, 1), (
                f"padding_mask must be (B={B}, 1, Hp, Wp), got {tuple(padding_mask.shape)}")
            if tuple(padding_mask.shape[-2:]) != (H, W):  # e.g. given at pixel resolution, 8x the latent grid
                padding_mask = F.interpolate(padding_mask.float(), size=(H, W), mode="nearest")  # (B, 1, H, W)
            padding_B_1_T_H_W = repeat(padding_mask.to(dtype), "b 1 h w -> b 1 t h w", t=T)  # (B, 1, T, H, W)
            x = torch.cat([x, padding_B_1_T_H_W], dim=1)  # (B, C+2, T, H, W)

        x_B_T_H_W_D = self.x_embedder(x)  # (B, Tg, Hg, Wg, D)
        rope_L_1_K = self.pos_embedder(Tg, Hg, Wg)  # (L, 1, K) fp32
        if timesteps_B_T.ndim == 1:
            timesteps_B_T = repeat(timesteps_B_T, "b -> b t", t=Tg)  # (B, Tg)
        sinusoid_B_T_D, adaln_lora_B_T_3D = self.t_embedder(timesteps_B_T.float() * cfg.timestep_scale)
        # The per-block modulations read the normalised raw sinusoid, not the t-MLP output (method.md §9.6).
        emb_B_T_D = self.t_embedding_norm(sinusoid_B_T_D).to(dtype)
        crossattn_emb = crossattn_emb.to(dtype)

        for block in self.blocks:
            if cfg.grad_checkpointing and self.training and torch.is_grad_enabled():
                x_B_T_H_W_D = checkpoint(block, x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_L_1_K,
                                         adaln_lora_B_T_3D, use_reentrant=False)
            else:
                x_B_T_H_W_D = block(x_B_T_H_W_D, emb_B_T_D, crossattn_emb, rope_L_1_K, adaln_lora_B_T_3D)
        x_B_T_H_W_O = self.final_layer(x_B_T_H_W_D, emb_B_T_D, adaln_lora_B_T_3D)
        return self.unpatchify(x_B_T_H_W_O).float()  # (B, out_channels, T, H, W)


# ============================================ config and presets ============================================

# Official MiniTrainDIT / MinimalV1LVGDiT constructor defaults, applied to the kwargs a config leaves out.
_OFFICIAL_DEFAULTS = dict(
    concat_padding_mask=True, model_channels=768, num_blocks=10, num_heads=16, mlp_ratio=4.0,
    crossattn_emb_channels=1024, use_crossattn_projection=False, extra_image_context_dim=None, pos_emb_cls="sincos",
    use_adaln_lora=False, adaln_lora_dim=256, rope_h_extrapolation_ratio=1.0, rope_w_extrapolation_ratio=1.0,
    rope_t_extrapolation_ratio=1.0, extra_per_block_abs_pos_emb=False, rope_enable_fps_modulation=True,
    n_dense_blocks=-1, use_wan_fp32_strategy=False, timestep_scale=1.0)

# Official kwargs with no effect on the math of this network: attention backends and activation checkpointing are
# implementation choices (dense attention either way); the learnable/"crop" absolute position embedding and the
# extra_* ratios exist only with extra_per_block_abs_pos_emb; the fps bounds only with fps modulation;
# crossattn_proj_in_channels only with use_crossattn_projection; natten_parameters only with n_dense_blocks != -1.
_IGNORED_OFFICIAL_KWARGS = {
    "atten_backend", "sac_config", "pos_emb_learnable", "pos_emb_interpolation", "min_fps", "max_fps",
    "extra_h_extrapolation_ratio", "extra_w_extrapolation_ratio", "extra_t_extrapolation_ratio",
    "crossattn_proj_in_channels", "natten_parameters"}

# Official options implemented here in exactly one setting: that of the Cosmos Policy 2B.
_FIXED_OFFICIAL_KWARGS = {
    "pos_emb_cls": "rope3d", "extra_per_block_abs_pos_emb": False, "use_crossattn_projection": False,
    "extra_image_context_dim": None, "rope_enable_fps_modulation": False, "use_wan_fp32_strategy": False,
    "n_dense_blocks": -1}


@dataclasses.dataclass
class DiTConfig:
    max_img_h: int = 240  # in latent pixels; RoPE positions go up to max_img_h // patch_spatial
    max_img_w: int = 240  # the same for the width
    max_frames: int = 128  # latent frames
    in_channels: int = 16  # latent channels; DiT adds the condition-mask (and padding-mask) channel itself
    out_channels: int = 16  # channels of the predicted velocity
    patch_spatial: int = 2  # a token is patch_spatial x patch_spatial latent pixels
    patch_temporal: int = 1  # and this many latent frames
    concat_padding_mask: bool = True  # an all-zero padding-mask input channel, as the official model has
    model_channels: int = 2048  # hidden width
    num_blocks: int = 28  # transformer blocks
    num_heads: int = 16  # attention heads
    mlp_ratio: float = 4.0  # MLP hidden width / model_channels
    crossattn_emb_channels: int = 1024  # T5-11B hidden width
    use_adaln_lora: bool = True  # per-block low-rank AdaLN modulation beside a shared timestep MLP (always, officially)
    adaln_lora_dim: int = 256  # its rank
    rope_h_extrapolation_ratio: float = 3.0  # NTK-scaled RoPE: theta = 10000 * ratio ** (d / (d - 2)) along h
    rope_w_extrapolation_ratio: float = 3.0  # along w
    rope_t_extrapolation_ratio: float = 1.0  # along t (1: plain RoPE)
    timestep_scale: float = 1.0  # multiplies t before the sinusoid; 1.0 for the rectified-flow 2B
    grad_checkpointing: bool = False  # not official: recompute each block in backward (training only)

    def __post_init__(self):
        positive_ints = ("max_img_h", "max_img_w", "max_frames", "in_channels", "out_channels", "patch_spatial",
                         "patch_temporal", "model_channels", "num_blocks", "num_heads", "crossattn_emb_channels",
                         "adaln_lora_dim")
        for name in positive_ints:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive int, got {value!r}")
        for name in ("mlp_ratio", "rope_h_extrapolation_ratio", "rope_w_extrapolation_ratio",
                     "rope_t_extrapolation_ratio", "timestep_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"DiTConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if not self.use_adaln_lora:
            raise ValueError("DiTConfig.use_adaln_lora=False is not implemented (every Cosmos-Predict2 DiT uses it)")
        if self.model_channels % self.num_heads:
            raise ValueError(f"model_channels {self.model_channels} is not divisible by num_heads {self.num_heads}")
        head_dim = self.model_channels // self.num_heads
        if head_dim % 2 or head_dim < 12:  # the 3-D RoPE split needs d_h = d_w = (K // 6) * 2 > 2 and even d_t
            raise ValueError(f"head dim {head_dim} must be even and >= 12 for the 3-D RoPE split")

    @classmethod
    def cosmos_predict2_2b(cls) -> "DiTConfig":
        """The Cosmos-Predict2 2B video2world DiT that every Cosmos Policy checkpoint uses: 1,956,413,440 params."""
        return cls(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                   patch_temporal=1, concat_padding_mask=True, model_channels=2048, num_blocks=28, num_heads=16,
                   mlp_ratio=4.0, crossattn_emb_channels=1024, use_adaln_lora=True, adaln_lora_dim=256,
                   rope_h_extrapolation_ratio=3.0, rope_w_extrapolation_ratio=3.0, rope_t_extrapolation_ratio=1.0,
                   timestep_scale=1.0)

    @classmethod
    def tiny(cls) -> "DiTConfig":
        """CPU-test size; every structural setting (patching, RoPE, adaLN-LoRA, masks) is the 2B's."""
        return cls(max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16, patch_spatial=2,
                   patch_temporal=1, concat_padding_mask=True, model_channels=64, num_blocks=2, num_heads=2,
                   mlp_ratio=4.0, crossattn_emb_channels=32, use_adaln_lora=True, adaln_lora_dim=16,
                   rope_h_extrapolation_ratio=3.0, rope_w_extrapolation_ratio=3.0, rope_t_extrapolation_ratio=1.0,
                   timestep_scale=1.0)

    @classmethod
    def from_official(cls, kwargs: dict) -> "DiTConfig":
        """DiTConfig from MinimalV1LVGDiT constructor kwargs (e.g. the manifest's constructor_kwargs_full)."""
        merged = {**_OFFICIAL_DEFAULTS, **kwargs}
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "grad_checkpointing"]
        missing = [name for name in fields if name not in merged]
        if missing:
            raise ValueError(f"DiTConfig.from_official: required kwargs missing: {missing}")
        for name, value in merged.items():
            if name in _FIXED_OFFICIAL_KWARGS and value != _FIXED_OFFICIAL_KWARGS[name]:
                raise ValueError(f"DiTConfig.from_official: {name}={value!r} is not implemented "
                                 f"(only {name}={_FIXED_OFFICIAL_KWARGS[name]!r})")
            if name not in fields and name not in _FIXED_OFFICIAL_KWARGS and name not in _IGNORED_OFFICIAL_KWARGS:
                raise ValueError(f"DiTConfig.from_official: unknown kwarg {name}={value!r}")
        return cls(**{name: merged[name] for name in fields})


# ============================================ loader ============================================


def load_dit(path_or_state_dict, cfg: DiTConfig, device=None, dtype=None, ema: bool = False) -> DiT:
    """Strictly load an official (`net.` / `net_ema.` prefixed) or unprefixed DiT state_dict; returns eval mode.

    The model is built on the meta device and the checkpoint tensors are assigned in place, so a 2B checkpoint never
    needs twice its memory. dtype casts floating parameters and buffers (the RoPE buffers too, like the official bf16
    cast); integer tensors keep theirs.
    """
    sd = path_or_state_dict
    if not isinstance(sd, dict):
        sd = torch.load(sd, map_location="cpu", weights_only=True, mmap=True)
    ignored = collections.Counter()
    prefix = "net_ema." if ema else "net."
    if any(k.startswith(("net.", "net_ema.")) for k in sd):
        # A whole DiffusionModel checkpoint: keep one network, drop the others (EMA copy, logvar, ...).
        picked = {}
        for k, v in sd.items():
            if k.startswith(prefix):
                picked[k[len(prefix):]] = v
            else:
                ignored[k.split(".")[0] + ".*"] += 1
        if not picked:
            raise ValueError(f"load_dit(ema={ema}): the checkpoint has no '{prefix}' keys")
        sd = picked
    elif ema:
        raise ValueError("load_dit(ema=True): the checkpoint is an unprefixed network state_dict, no 'net_ema.' keys")
    net_sd = {}
    for k, v in sd.items():
        if k.endswith("._extra_state"):  # TransformerEngine FP8 metadata bytes, no weights
            ignored["*._extra_state"] += 1
        elif k.startswith("accum_"):  # sample / iteration counters from training, no effect on the output
            ignored["accum_*"] += 1
        else:
            net_sd[k] = v
    if ignored:
        print("load_dit: ignored " + ", ".join(f"{n} {kind}" for kind, n in ignored.items()) + " entries")

    with torch.device("meta"):
        model = DiT(cfg)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in net_sd]
    unexpected = [k for k in net_sd if k not in expected]
    misshaped = [f"{k}: checkpoint {tuple(net_sd[k].shape)} vs model {expected[k]}"
                 for k in expected if k in net_sd and tuple(net_sd[k].shape) != expected[k]]
    if missing or unexpected or misshaped:
        raise ValueError(f"load_dit: checkpoint does not match {cfg}:\n  missing: {missing}\n"
                         f"  unexpected: {unexpected}\n  wrong shape: {misshaped}")
    model.load_state_dict(net_sd, strict=True, assign=True)
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"load_dit: {n_params:,} parameters ({model.x_embedder.proj[1].weight.dtype}, "
          f"{model.x_embedder.proj[1].weight.device})")
    return model.eval()
