"""Tests for vae.py: parity with the official Wan2.1 VAE, checkpoint layout, causality, frame counts, loading."""
import dataclasses
import json
import pathlib
import re

import pytest
import torch

from vae import VAEConfig, WanVAE, load_vae

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
MANIFEST = ROOT.parent / "shared" / "reference" / "wan2.1_vae.keys.json"
PARITY_FIXTURES = sorted(FIXTURES.glob("vae_parity_*.pt"))
ATOL = 1e-4


def _load_fixture(path):
    fixture = torch.load(path, map_location="cpu", weights_only=True)
    cfg = VAEConfig.from_official(fixture["config"])
    # Fixture A stores float16 weights (exact values); the outputs were computed from them in float32.
    state_dict = {k: v.float() if v.is_floating_point() else v for k, v in fixture["state_dict"].items()}
    return fixture, cfg, state_dict


def _assert_close(name, got, want, atol=ATOL):
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != reference {tuple(want.shape)}"
    diff = (got.float() - want.float()).abs()
    assert diff.max() <= atol, f"{name}: max abs diff {diff.max():.3e}, mean {diff.mean():.3e} (atol {atol:.0e})"


def check_parity(path):
    """Encode and decode the fixture's video and compare every stored output to the official implementation."""
    fixture, cfg, state_dict = _load_fixture(path)
    model = load_vae(state_dict, cfg, dtype=torch.float32)
    video, out = fixture["inputs"]["video_B_C_T_H_W"], fixture["outputs"]
    _assert_close("latent mean constant", torch.tensor(cfg.latent_mean), out["scale_mean"], atol=1e-7)
    _assert_close("latent 1/std constant", 1.0 / torch.tensor(cfg.latent_std), out["scale_inv_std"], atol=1e-7)
    with torch.no_grad():
        mu, log_var = model.encode_moments(video)
        latent = model.encode(video)
        recon_of_reference_latent = model.decode(out["latent_B_C_T_H_W"])
        recon_of_our_latent = model.decode(latent)
    _assert_close("raw conv1 moments", torch.cat([mu, log_var], dim=1), out["quant_conv1_out_mu_logvar"])
    _assert_close("latent", latent, out["latent_B_C_T_H_W"])
    _assert_close("recon of reference latent", recon_of_reference_latent, out["recon_B_C_T_H_W"])
    _assert_close("recon of our latent", recon_of_our_latent, out["recon_B_C_T_H_W"])


@pytest.mark.parametrize("path", PARITY_FIXTURES, ids=lambda p: p.name)
def test_parity_with_official(path):
    check_parity(path)


def test_bfloat16_stays_near_float32_reference():
    fixture, cfg, _ = _load_fixture(FIXTURES / "vae_parity_a.pt")
    model = load_vae(fixture["state_dict"], cfg, dtype=torch.bfloat16)  # float16 checkpoint, cast on load
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    out = fixture["outputs"]
    with torch.no_grad():
        latent = model.encode(fixture["inputs"]["video_B_C_T_H_W"])
        recon = model.decode(out["latent_B_C_T_H_W"])
    assert latent.dtype == recon.dtype == torch.bfloat16
    # bf16 keeps ~3 significant digits; measured 0.013 (latent) and 0.073 (recon, |v| up to 1.9).
    _assert_close("bf16 latent", latent, out["latent_B_C_T_H_W"], atol=0.05)
    _assert_close("bf16 recon", recon, out["recon_B_C_T_H_W"], atol=0.25)


def test_full_size_layout_matches_manifest():
    if not MANIFEST.exists():
        pytest.skip(f"key manifest not found at {MANIFEST} (shared reference folder is not checked out)")
    manifest = json.loads(MANIFEST.read_text())
    with torch.device("meta"):
        model = WanVAE(VAEConfig.wan21())
    ours = [(k, list(v.shape)) for k, v in model.state_dict().items()]
    reference = [(entry["key"], entry["shape"]) for entry in manifest["state_dict"]]
    missing = sorted({k for k, _ in reference} - {k for k, _ in ours})
    unexpected = sorted({k for k, _ in ours} - {k for k, _ in reference})
    assert ours == reference, f"layout differs: missing {missing[:5]}, unexpected {unexpected[:5]}"
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == manifest["parameter_count"] == 126_892_531
    assert VAEConfig.from_official(manifest["constructor_kwargs"]) == VAEConfig.wan21()


def test_bfloat16_latent_constants_match_real_pipeline():
    if not MANIFEST.exists():
        pytest.skip(f"key manifest not found at {MANIFEST} (shared reference folder is not checked out)")
    norm = json.loads(MANIFEST.read_text())["latent_normalization"]
    assert VAEConfig.wan21().latent_mean == tuple(norm["latent_mean"])
    assert VAEConfig.wan21().latent_std == tuple(norm["latent_std"])
    with torch.device("meta"):
        model = WanVAE(VAEConfig.wan21())
    # The real pipeline applies the bf16-rounded mean and the bf16 reciprocal of the bf16 std.
    mean, inv_std = model._latent_scale(torch.zeros(1, dtype=torch.bfloat16))
    assert mean.flatten().float().tolist() == norm["latent_mean_bf16_as_float"]
    assert inv_std.flatten().float().tolist() == norm["latent_inv_std_bf16_as_float"]


def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return WanVAE(VAEConfig.tiny()).eval()


def test_encoder_is_causal():
    model = _tiny_model()
    video = torch.rand(1, 3, 9, 16, 16) * 2 - 1
    with torch.no_grad():
        latent = model.encode(video)  # (1, 16, 3, 2, 2)
        for j in range(2):
            edited = video.clone()
            edited[:, :, 4 * j + 1:] = torch.rand_like(edited[:, :, 4 * j + 1:])  # frames >= 4j+1 changed
            latent_edited = model.encode(edited)
            _assert_close(f"latent frames 0..{j} after editing frames >= {4 * j + 1}",
                          latent_edited[:, :, :j + 1], latent[:, :, :j + 1], atol=1e-6)
            assert (latent_edited[:, :, j + 1:] - latent[:, :, j + 1:]).abs().max() > 1e-3, "edit had no effect"


def test_decoder_is_causal():
    model = _tiny_model()
    latent = torch.randn(1, 16, 3, 2, 2)
    with torch.no_grad():
        video = model.decode(latent)  # (1, 3, 9, 16, 16)
        for k in (1, 2):
            edited = latent.clone()
            edited[:, :, k] = torch.randn_like(edited[:, :, k])
            video_edited = model.decode(edited)
            first_changed = 1 + 4 * (k - 1)
            _assert_close(f"decoded frames < {first_changed} after editing latent frame {k}",
                          video_edited[:, :, :first_changed], video[:, :, :first_changed], atol=1e-6)
            assert (video_edited[:, :, first_changed:] - video[:, :, first_changed:]).abs().max() > 1e-3


@pytest.mark.parametrize("n_latent", [1, 2, 3])
def test_frame_counts(n_latent):
    model = _tiny_model()
    with torch.no_grad():
        video = model.decode(torch.randn(2, 16, n_latent, 3, 5))
        assert video.shape == (2, 3, 1 + 4 * (n_latent - 1), 24, 40)
        latent = model.encode(video.clamp(-1, 1))
        assert latent.shape == (2, 16, n_latent, 3, 5)


def test_encode_rejects_bad_shapes():
    model = _tiny_model()
    for shape, message in [((3, 5, 16, 16), "B, 3, T, H, W"), ((1, 4, 5, 16, 16), "3 \\(RGB\\) channels"),
                           ((1, 3, 4, 16, 16), "1 \\+ 4k frames"), ((1, 3, 5, 12, 16), "multiples of 8")]:
        with pytest.raises(AssertionError, match=message):
            model.encode(torch.zeros(shape))


def test_encode_is_deterministic_and_matches_moments():
    model = _tiny_model()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        mu, log_var = model.encode_moments(video)
        latent = model.encode(video)
        assert torch.equal(latent, model.encode(video))
    mean = torch.tensor(model.cfg.latent_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(model.cfg.latent_std).view(1, 16, 1, 1, 1)
    assert mu.shape == log_var.shape == latent.shape == (1, 16, 2, 2, 2)
    _assert_close("normalised latent", latent, (mu - mean) / std, atol=1e-6)


def test_load_from_path_is_strict_and_exact(tmp_path):
    model = _tiny_model()
    path = tmp_path / "vae.pt"
    torch.save(model.state_dict(), path)
    loaded = load_vae(path, VAEConfig.tiny())
    assert not loaded.training
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded.encode(video), model.encode(video))


@pytest.mark.parametrize("edit", ["missing", "unexpected", "wrong_shape"])
def test_load_errors_name_the_key(edit):
    state_dict = _tiny_model().state_dict()
    key = "decoder.upsamples.3.time_conv.weight"
    if edit == "missing":
        del state_dict[key]
    elif edit == "unexpected":
        key = "decoder.upsamples.3.time_conv.extra"
        state_dict[key] = torch.zeros(1)
    else:
        state_dict[key] = torch.zeros(2, 2, 3, 1, 1)
    with pytest.raises(ValueError, match=re.escape(key)):
        load_vae(state_dict, VAEConfig.tiny())


def test_config_round_trips():
    fixture = torch.load(FIXTURES / "vae_parity_a.pt", map_location="cpu", weights_only=True)
    cfg = VAEConfig.from_official(fixture["config"])  # lists from the official kwargs, temporal_window ignored
    assert cfg == VAEConfig.tiny()
    assert dataclasses.asdict(cfg)["dim_mult"] == (1, 2, 4, 4)
    for c in (cfg, VAEConfig.wan21()):
        assert VAEConfig(**dataclasses.asdict(c)) == c
        assert VAEConfig(**json.loads(json.dumps(dataclasses.asdict(c)))) == c
    with pytest.raises(ValueError, match="temporal_windows"):
        VAEConfig.from_official({**fixture["config"], "temporal_windows": 4})
    with pytest.raises(AssertionError, match="latent_mean"):
        VAEConfig(dim=8, z_dim=4)
    with pytest.raises(AssertionError, match="temperal_downsample"):
        VAEConfig(dim=8, temperal_downsample=(True, True))
