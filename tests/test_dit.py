"""dit.py: parity with the official MinimalV1LVGDiT (fixtures), checkpoint layout and loading, conditioning inputs."""
import dataclasses
import json
import re

import pytest
import torch

from conftest import FIXTURES, ROOT
from dit import DiT, DiTConfig, VideoRopePosition3DEmb, load_dit

PARITY_TOL = 1e-4  # reference README §3.3: a faithful float32 port lands near 1e-5
FIXTURE_FILES = sorted(FIXTURES.glob("dit_parity_*.pt"))
MANIFEST = ROOT.parent / "shared" / "reference" / "cosmos_predict2_2b_dit.keys.json"
PARAMS_2B = 1_956_413_440


def load_fixture(path):
    """Fixture dict with its state_dict cast to float32 (A stores float16 weights; buffers keep their dtype)."""
    fx = torch.load(path, weights_only=True)
    fx["state_dict"] = {k: v.float() if v.is_floating_point() else v for k, v in fx["state_dict"].items()}
    return fx


def run_fixture(model, inputs):
    return model(inputs["x_B_C_T_H_W"], inputs["timesteps_B_T"], inputs["crossattn_emb"],
                 inputs["condition_video_input_mask_B_C_T_H_W"], inputs["padding_mask"])


def assert_close(name, got, ref, tol=PARITY_TOL):
    assert tuple(got.shape) == tuple(ref.shape), f"{name}: shape {tuple(got.shape)} vs {tuple(ref.shape)}"
    diff = (got.float() - ref.float()).abs()
    assert diff.max() <= tol, f"{name}: max|diff| {diff.max():.3e} mean|diff| {diff.mean():.3e} > tol {tol:.0e}"


def tiny_model(seed=0, **overrides):
    """tiny() with fixture-style random weights: no zero-initialised layer, so every path carries signal."""
    torch.manual_seed(seed)
    model = DiT(dataclasses.replace(DiTConfig.tiny(), **overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * p.shape[1] ** -0.5 if p.ndim == 2 else 1 + 0.1 * torch.randn_like(p))
    return model.eval()


def tiny_inputs(B=2, T=4, H=6, W=10, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 16, T, H, W, generator=g)
    t = torch.rand(B, T, generator=g)
    t[:, 0] = 0.0  # frame 0 is a clean conditioning frame
    crossattn = torch.randn(B, 5, 32, generator=g)
    cond = torch.zeros(B, 1, T, H, W)
    cond[:, :, 0] = 1.0
    return x, t, crossattn, cond


# ---------------------------------------------- parity ----------------------------------------------


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.stem)
def test_parity_with_official(path):
    fx = load_fixture(path)
    model = load_dit(fx["state_dict"], DiTConfig.from_official(fx["config"]))
    seen = {}
    for name in ("x_embedder", "t_embedder", "t_embedding_norm", "final_layer"):
        getattr(model, name).register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o))
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda m, inp, o, i=i: seen.__setitem__(f"block_{i}_out_B_T_H_W_D", o))
    with torch.no_grad():
        out = run_fixture(model, fx["inputs"])
        T, H, W = fx["intermediates"]["x_embedder_out_B_T_H_W_D"].shape[1:4]
        rope = model.pos_embedder(T, H, W)
    ours = {"x_embedder_out_B_T_H_W_D": seen["x_embedder"], "rope_emb_L_1_1_D": rope.unsqueeze(1),  # (L, 1, 1, K)
            "timestep_sinusoid_B_T_D": seen["t_embedder"][0], "t_embedder_emb_B_T_D": seen["t_embedder"][0],
            "t_embedder_adaln_lora_B_T_3D": seen["t_embedder"][1],
            "t_embedding_norm_out_B_T_D": seen["t_embedding_norm"],
            **{k: v for k, v in seen.items() if k.startswith("block_")},
            "final_layer_out_B_T_H_W_O": seen["final_layer"]}
    # Stage by stage in pipeline order first, so a failure points at the first stage that drifts.
    for key in [k for k in ours if k in fx["intermediates"]]:
        assert_close(f"{path.stem} {key}", ours[key], fx["intermediates"][key])
    assert out.dtype == torch.float32
    assert_close(f"{path.stem} output", out, fx["outputs"]["out_B_C_T_H_W"])


def test_fixtures_present():
    assert FIXTURE_FILES, f"no dit_parity_*.pt in {FIXTURES}"


# ---------------------------------------------- checkpoint layout ----------------------------------------------


@pytest.mark.skipif(not MANIFEST.exists(), reason=f"2B key manifest not found at {MANIFEST}")
def test_full_size_state_dict_matches_manifest():
    manifest = json.loads(MANIFEST.read_text())
    cfg = DiTConfig.from_official(manifest["constructor_kwargs_full"])
    assert cfg == DiTConfig.cosmos_predict2_2b()
    with torch.device("meta"):
        model = DiT(cfg)
    # Our DiT has no TransformerEngine `_extra_state` and no `accum_*` statistics buffers; load_dit skips both.
    expected = [(e["key"], tuple(e["shape"])) for e in manifest["state_dict"]
                if e["kind"] != "te_extra_state" and not e["key"].startswith("accum_")]
    got = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    assert got == expected, f"first differences: {[(a, b) for a, b in zip(got, expected) if a != b][:5]}"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["parameter_count"] == PARAMS_2B


@pytest.mark.skipif(not MANIFEST.exists(), reason=f"2B key manifest not found at {MANIFEST}")
def test_rope_constants_and_buffers_match_manifest():
    rope_ref = json.loads(MANIFEST.read_text())["rope"]
    rope = VideoRopePosition3DEmb(head_dim=128, len_h=120, len_w=120, len_t=128, h_extrapolation_ratio=3.0,
                                  w_extrapolation_ratio=3.0, t_extrapolation_ratio=1.0)
    assert rope.h_theta == pytest.approx(rope_ref["theta_h"], rel=1e-12)
    assert rope.t_theta == pytest.approx(rope_ref["theta_t"], rel=1e-12)
    assert rope.dim_spatial_range.tolist() == rope_ref["dim_spatial_range_float32"]
    assert rope.dim_temporal_range.tolist() == rope_ref["dim_temporal_range_float32"]
    # The angles come from the buffers: a bf16 checkpoint's rounded exponents must change them.
    fp32_angles = rope(3, 4, 5)
    rope.dim_spatial_range.copy_(torch.tensor(rope_ref["dim_spatial_range_after_bf16_cast"]))
    assert (rope(3, 4, 5) - fp32_angles).abs().max() > 1e-4


# ---------------------------------------------- load_dit ----------------------------------------------


def test_load_dit_prefixed_file_with_te_and_stats_entries(tmp_path, capsys):
    fx = load_fixture(FIXTURE_FILES[0])
    cfg = DiTConfig.from_official(fx["config"])
    ckpt = {"net." + k: v for k, v in fx["state_dict"].items()}
    norms = [k[: -len(".weight")] for k in fx["state_dict"] if k.endswith(("q_norm.weight", "k_norm.weight"))]
    norms.append("t_embedding_norm")
    for name in norms:  # TransformerEngine's pickled empty FP8 state
        ckpt[f"net.{name}._extra_state"] = torch.zeros(5, dtype=torch.uint8)
    ckpt["logvar.0.weight"] = torch.zeros(1, 4)
    torch.save(ckpt, tmp_path / "model.pt")
    model = load_dit(tmp_path / "model.pt", cfg)
    printed = capsys.readouterr().out
    assert f"{len(norms)} *._extra_state" in printed and "4 accum_*" in printed and "1 logvar.*" in printed
    assert f"{sum(p.numel() for p in model.parameters()):,} parameters" in printed
    assert not model.training
    with torch.no_grad():
        assert_close("net.-prefixed output", run_fixture(model, fx["inputs"]), fx["outputs"]["out_B_C_T_H_W"])


def test_load_dit_picks_ema_weights_only_when_asked():
    fx = load_fixture(FIXTURE_FILES[0])
    cfg = DiTConfig.from_official(fx["config"])
    sd = fx["state_dict"]
    ckpt = {**{"net." + k: v + 1 if v.is_floating_point() else v for k, v in sd.items()},
            **{"net_ema." + k: v for k, v in sd.items()}}
    ema_model = load_dit(ckpt, cfg, ema=True)
    with torch.no_grad():
        assert_close("net_ema. output", run_fixture(ema_model, fx["inputs"]), fx["outputs"]["out_B_C_T_H_W"])
    regular = load_dit(ckpt, cfg, ema=False)
    assert torch.equal(regular.final_layer.linear.weight, sd["final_layer.linear.weight"] + 1)
    with pytest.raises(ValueError, match="net_ema"):
        load_dit(sd, cfg, ema=True)


def test_load_dit_names_every_bad_key():
    fx = load_fixture(FIXTURE_FILES[0])
    cfg = DiTConfig.from_official(fx["config"])
    missing, unknown, misshaped = "blocks.1.mlp.layer2.weight", "blocks.0.bogus.weight", "final_layer.linear.weight"
    for key, edit in ((missing, lambda sd: sd.pop(missing)),
                      (unknown, lambda sd: sd.__setitem__(unknown, torch.zeros(3))),
                      (misshaped, lambda sd: sd.__setitem__(misshaped, sd[misshaped][:-1]))):
        sd = dict(fx["state_dict"])
        edit(sd)
        with pytest.raises(ValueError, match=re.escape(key)):
            load_dit(sd, cfg)
    sd = dict(fx["state_dict"])
    sd.pop(missing)
    sd[unknown] = torch.zeros(3)
    sd[misshaped] = sd[misshaped][:-1]
    with pytest.raises(ValueError) as err:
        load_dit(sd, cfg)
    assert all(key in str(err.value) for key in (missing, unknown, misshaped))


def test_load_dit_casts_floats_to_bf16_and_stays_close():
    fx = load_fixture(FIXTURE_FILES[0])
    model = load_dit(fx["state_dict"], DiTConfig.from_official(fx["config"]), dtype=torch.bfloat16)
    assert model.blocks[0].mlp.layer1.weight.dtype == torch.bfloat16
    assert model.pos_embedder.dim_spatial_range.dtype == torch.bfloat16  # like the official whole-net bf16 cast
    with torch.no_grad():
        out = run_fixture(model, fx["inputs"])
    ref = fx["outputs"]["out_B_C_T_H_W"]
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    diff = (out - ref).abs()
    # bf16 keeps ~3 significant digits; a wrong path (e.g. a dtype mix-up) is off by O(1) on |ref| ~ 7.
    assert diff.mean() < 0.05 and diff.max() < 0.5, f"bf16 vs fp32: max {diff.max():.3f} mean {diff.mean():.4f}"


# ---------------------------------------------- conditioning inputs ----------------------------------------------


@torch.no_grad()
def test_per_frame_timesteps_matter():
    model = tiny_model()
    x, t, crossattn, cond = tiny_inputs()
    out = model(x, t, crossattn, cond)
    t2 = t.clone()
    t2[0, 2] += 0.3
    out2 = model(x, t2, crossattn, cond)
    assert (out2[0, :, 2] - out[0, :, 2]).abs().max() > 1e-2, "frame 2's own timestep did not change its output"
    assert torch.allclose(out2[1], out[1], atol=1e-6), "another sample changed"
    shared = torch.tensor([0.3, 0.7])
    assert torch.allclose(model(x, shared, crossattn, cond), model(x, shared[:, None].expand(-1, 4), crossattn, cond))


@torch.no_grad()
def test_condition_mask_channel_matters():
    model = tiny_model()
    x, t, crossattn, cond = tiny_inputs()
    out = model(x, t, crossattn, cond)
    assert (out - model(x, t, crossattn, torch.zeros_like(cond))).abs().max() > 1e-2
    assert torch.equal(model(x, t, crossattn, None), model(x, t, crossattn, torch.zeros_like(cond)))


@torch.no_grad()
def test_padding_mask_at_pixel_resolution_equals_latent_resolution():
    model = tiny_model()
    x, t, crossattn, cond = tiny_inputs(B=3, T=5, H=6, W=10)
    mask_latent = (torch.rand(3, 1, 6, 10, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    mask_pixel = mask_latent.repeat_interleave(8, dim=-2).repeat_interleave(8, dim=-1)  # (B, 1, 48, 80)
    out = model(x, t, crossattn, cond, mask_latent)
    assert torch.equal(out, model(x, t, crossattn, cond, mask_pixel))
    assert (out - model(x, t, crossattn, cond, None)).abs().max() > 1e-2, "the padding mask had no effect"


@torch.no_grad()
def test_input_shape_checks():
    model = tiny_model()
    x, t, crossattn, cond = tiny_inputs()
    with pytest.raises(AssertionError, match="divisible"):
        model(x[..., :5, :], t, crossattn, cond[..., :5, :])
    with pytest.raises(AssertionError, match="timesteps"):
        model(x, t[:, :3], crossattn, cond)
    with pytest.raises(AssertionError, match="crossattn_emb"):
        model(x, t, crossattn[..., :8], cond)
    with pytest.raises(AssertionError, match="exceeds"):
        tiny_model(max_frames=3)(x, t, crossattn, cond)


def test_grad_checkpointing_same_output_and_gradients():
    x, t, crossattn, cond = tiny_inputs()
    plain = tiny_model().train()
    ckpt = tiny_model(grad_checkpointing=True).train()
    results = []
    for model in (plain, ckpt):
        calls = []
        hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in model.blocks]
        out = model(x, t, crossattn, cond)
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        for h in hooks:
            h.remove()
        results.append((out.detach(), {n: p.grad for n, p in model.named_parameters()}, len(calls)))
    (out_a, grads_a, calls_a), (out_b, grads_b, calls_b) = results
    assert (calls_a, calls_b) == (2, 4), "checkpointed blocks must be re-run once in backward"
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for name, grad in grads_a.items():
        assert torch.allclose(grad, grads_b[name], atol=1e-5, rtol=1e-4), name


# ---------------------------------------------- config ----------------------------------------------


def test_config_round_trip_and_from_official():
    for cfg in (DiTConfig.tiny(), DiTConfig.cosmos_predict2_2b()):
        assert DiTConfig(**dataclasses.asdict(cfg)) == cfg
    config_a = torch.load(FIXTURE_FILES[0], weights_only=True)["config"]
    cfg = DiTConfig.from_official(config_a)
    assert (cfg.model_channels, cfg.num_heads, cfg.adaln_lora_dim, cfg.mlp_ratio) == (128, 4, 32, 4.0)
    with pytest.raises(ValueError, match="max_img_h"):
        DiTConfig.from_official({k: v for k, v in config_a.items() if k != "max_img_h"})
    with pytest.raises(ValueError, match="num_heads"):
        DiTConfig(model_channels=64, num_heads=3)


@pytest.mark.parametrize("kwarg, value", [
    ("pos_emb_cls", "sincos"), ("extra_per_block_abs_pos_emb", True), ("use_crossattn_projection", True),
    ("rope_enable_fps_modulation", True), ("use_adaln_lora", False), ("extra_image_context_dim", 1024),
    ("use_wan_fp32_strategy", True), ("n_dense_blocks", 4), ("not_a_kwarg", 1)])
def test_from_official_rejects_unsupported(kwarg, value):
    config_a = torch.load(FIXTURE_FILES[0], weights_only=True)["config"]
    with pytest.raises(ValueError, match=re.escape(f"{kwarg}={value!r}")):
        DiTConfig.from_official({**config_a, kwarg: value})
