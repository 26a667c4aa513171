"""Full-scale inference path (plan.load_libero / libero_act) on synthetic files in the released formats.

The real files are 4 GB and cannot be fetched here, so each test writes tiny stand-ins with the exact official layout:
a `net.`-prefixed bf16 DiT state dict with TransformerEngine `_extra_state` byte entries and `accum_*` buffers, a flat
Wan VAE state dict, the dataset-statistics JSON and a T5 pickle written by plain pickle.dump. The 2B preset itself is
checked on the meta device (no memory).
"""
import functools
import json
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import latent_injection as li
import plan
import train
from dit import DiT, DiTConfig, RMSNorm, load_dit
from vae import VAEConfig, WanVAE

INSTRUCTION = "put the black bowl on the plate"
ACTION_LO, ACTION_HI = np.arange(7) + 100.0, np.arange(7) + 101.0  # far from the proprio range: a mix-up shows
PROPRIO_LO, PROPRIO_HI = np.full(9, -60.0), np.full(9, -40.0)
SIZE = 32  # tiny VAE (x8) and DiT patch (x2): 2x2 tokens per latent frame


def official_dit_state_dict(model, dtype=torch.bfloat16):
    """What DiffusionModel.state_dict() holds for a bf16 net: `net.` keys, TE `_extra_state` bytes per RMSNorm
    (a pickled empty dict, 5 bytes), and the 4 `accum_*` training counters."""
    sd = {f"net.{k}": v.to(dtype) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    empty = torch.frombuffer(bytearray(pickle.dumps({})), dtype=torch.uint8)
    sd.update({f"net.{name}._extra_state": empty.clone() for name, m in model.named_modules()
               if isinstance(m, RMSNorm)})
    sd.update({"net.accum_video_sample_counter": torch.tensor(7), "net.accum_image_sample_counter": torch.tensor(0),
               "net.accum_iteration": torch.tensor(40000), "net.accum_train_in_hours": torch.tensor(48.0, dtype=dtype)})
    return sd


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("libero")
    torch.manual_seed(0)
    dit = DiT(DiTConfig.tiny())
    for m in dit.modules():  # the official init zeroes the adaLN up-projections; make every weight matter
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, std=m.in_features ** -0.5)
    torch.save(official_dit_state_dict(dit), d / "Cosmos-Policy-LIBERO-Predict2-2B.pt")
    (d / "tokenizer").mkdir()
    torch.save(WanVAE(VAEConfig.tiny()).state_dict(), d / "tokenizer" / "tokenizer.pth")
    stats = {"actions_min": ACTION_LO.tolist(), "actions_max": ACTION_HI.tolist(), "proprio_min": PROPRIO_LO.tolist(),
             "proprio_max": PROPRIO_HI.tolist(), "actions_mean": [0.0] * 7, "proprio_std": [1.0] * 9}
    (d / "libero_dataset_statistics.json").write_text(json.dumps(stats))
    emb = {INSTRUCTION: torch.randn(1, 16, 32).to(torch.bfloat16), "open the drawer": torch.randn(1, 16, 32)}
    with open(d / "libero_t5_embeddings.pkl", "wb") as f:
        pickle.dump(emb, f)
    return d, emb


@pytest.fixture(scope="module")
def policy(files):
    return plan.load_libero(**plan.libero_files(str(files[0])), dit_cfg=DiTConfig.tiny(), vae_cfg=VAEConfig.tiny(),
                            image_size=SIZE, dtype=torch.float32)


def observation(seed=0, shape=(48, 40)):
    rng = np.random.default_rng(seed)
    primary, wrist = (rng.integers(0, 256, (*shape, 3), dtype=np.uint8) for _ in range(2))
    return primary, wrist, rng.uniform(-60, -40, 9)


def test_libero_files_and_stats_errors(files, tmp_path):
    paths = plan.libero_files(str(files[0]))
    assert paths["vae"].endswith(os.path.join("tokenizer", "tokenizer.pth"))
    with pytest.raises(AssertionError, match="missing"):
        plan.libero_files(str(tmp_path))
    (tmp_path / "s.json").write_text(json.dumps({"actions_min": [0] * 7, "actions_max": [1] * 7}))
    with pytest.raises(AssertionError, match="proprio_min"):
        plan.load_libero_stats(str(tmp_path / "s.json"), li.Layout.libero())


def test_load_libero_policy(policy, files):
    assert policy.task_emb is None and set(policy.instructions) == set(files[1])
    assert policy.instructions[INSTRUCTION].shape == (16, 32)  # (1, L, D) in the file
    assert torch.equal(policy.instructions[INSTRUCTION].float(), files[1][INSTRUCTION][0].float())
    lo, hi = policy.stats["action"]
    assert torch.equal(lo, torch.tensor(ACTION_LO, dtype=torch.float32)) and hi.shape == (7,)
    assert policy.dit.x_embedder.proj[1].weight.dtype == torch.float32
    with pytest.raises(AssertionError, match="no instruction chosen"):  # rather than run unconditioned
        plan.act(policy, None, x_cond=torch.zeros(1, 16, 9, SIZE // 8, SIZE // 8))
    with pytest.raises(KeyError, match="closest"):
        plan.for_instruction(policy, "put the black bowl on a plate")


def test_libero_act_end_to_end(policy):
    primary, wrist, proprio = observation()
    out = plan.libero_act(policy, primary, wrist, proprio, INSTRUCTION, seed=3)
    assert out["actions"].shape == (16, 7) and out["actions"].dtype == np.float32
    span = ACTION_HI - ACTION_LO  # a random-weight DiT lands anywhere near [-1, 1] before un-normalising
    assert np.all(out["actions"] > ACTION_LO - 3 * span) and np.all(out["actions"] < ACTION_HI + 3 * span)
    assert set(out["future_images"]) == {"future_wrist", "future_primary"}
    for img in out["future_images"].values():
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
    assert 0.0 <= out["value"] <= 1.0
    again = plan.libero_act(policy, primary, wrist, proprio, INSTRUCTION, seed=3)
    np.testing.assert_array_equal(out["actions"], again["actions"])
    np.testing.assert_array_equal(out["future_images"]["future_primary"], again["future_images"]["future_primary"])
    assert out["value"] == again["value"]
    other = plan.libero_act(policy, primary, wrist, proprio, INSTRUCTION, seed=4)
    assert not np.allclose(out["actions"], other["actions"])
    text = plan.libero_act(policy, primary, wrist, proprio, "open the drawer", seed=3)
    assert not np.allclose(out["actions"], text["actions"])  # the instruction reaches the network


def test_libero_best_of_n(policy):
    primary, wrist, proprio = observation(1)
    cfg = plan.PlanConfig(best_of=3, wm_steps=(1,), value_steps=(1, 2))
    out = plan.libero_act(policy, primary, wrist, proprio, INSTRUCTION, cfg, seed=5)
    assert out["actions"].shape == (16, 7) and out["values"].shape == (3,) and 0 <= out["best"] < 3
    assert np.all((out["values"] >= 0) & (out["values"] <= 1))
    if out["best"] == 0:  # candidate 0 is the plain policy's sample with the base seed
        base = plan.libero_act(policy, primary, wrist, proprio, INSTRUCTION, seed=5)
        np.testing.assert_allclose(out["actions"], base["actions"], atol=1e-3)
    else:  # it is replaced only by a strictly better candidate
        assert out["values"][out["best"]] > out["values"][0]


def test_libero_act_bf16(files):
    p = plan.load_libero(**plan.libero_files(str(files[0])), dit_cfg=DiTConfig.tiny(), vae_cfg=VAEConfig.tiny(),
                         image_size=SIZE)
    assert p.dit.x_embedder.proj[1].weight.dtype == torch.bfloat16 and p.vae.conv1.weight.dtype == torch.bfloat16
    out = plan.libero_act(p, *observation(2, (SIZE, SIZE)), INSTRUCTION, plan.PlanConfig(num_steps=2))
    assert out["actions"].shape == (16, 7) and np.isfinite(out["actions"]).all()


def test_libero_cli(files, tmp_path, monkeypatch, capsys):
    tiny = functools.partial(plan.load_libero, dit_cfg=DiTConfig.tiny(), vae_cfg=VAEConfig.tiny(), image_size=SIZE,
                             dtype=torch.float32)
    monkeypatch.setattr(plan, "load_libero", tiny)  # the CLI's defaults are the 2B ones
    primary, wrist, proprio = observation(3)
    Image.fromarray(primary).save(tmp_path / "primary.png")
    Image.fromarray(wrist).save(tmp_path / "wrist.png")
    argv = [f"--libero={files[0]}", f"--instruction={INSTRUCTION}", f"--primary={tmp_path}/primary.png",
            f"--wrist={tmp_path}/wrist.png", f"--proprio={proprio.tolist()}", "--seed=7", f"--out={tmp_path}/out",
            "--device=cpu"]
    cfg = plan.PlanConfig(**train.cli_overrides(argv, plan.PlanConfig))
    plan.libero_main(cfg)
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["instruction"] == INSTRUCTION and np.array(res["actions"]).shape == (16, 7)
    direct = plan.libero_act(tiny(**plan.libero_files(str(files[0]))), primary, wrist, proprio, INSTRUCTION, seed=7)
    np.testing.assert_allclose(res["actions"], direct["actions"], atol=1e-4)
    for name in ("future_wrist", "future_primary"):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"{name}.png")),
                                      direct["future_images"][name])


def test_libero_image_centre_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    out = plan.libero_image(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    border = img.copy()
    border[:6], border[-6:], border[:, :6], border[:, -6:] = 0, 0, 0, 0  # outside the central 212 px
    np.testing.assert_array_equal(plan.libero_image(border), out)
    centre = img.copy()
    centre[100:110, 100:110] = 255 - centre[100:110, 100:110]
    assert not np.array_equal(plan.libero_image(centre), out)
    flat = np.full((256, 300, 3), 77, dtype=np.uint8)  # any size: resized to 224 first
    np.testing.assert_array_equal(plan.libero_image(flat), np.full((224, 224, 3), 77, dtype=np.uint8))


# ----------------------------------------------------------------------------- the restricted unpickler


def test_t5_pickle_plain_and_numpy(tmp_path):
    emb = {"a": torch.randn(1, 5, 8).to(torch.bfloat16), "b": torch.randn(5, 8), "c": np.ones((1, 5, 8), np.float32)}
    with open(tmp_path / "t5.pkl", "wb") as f:
        pickle.dump(emb, f)
    got = plan.load_t5_embeddings(tmp_path / "t5.pkl")
    assert torch.equal(got["a"], emb["a"][0]) and got["a"].dtype == torch.bfloat16
    assert torch.equal(got["b"], emb["b"]) and torch.equal(got["c"], torch.ones(5, 8))


class _Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _malicious_pickles(sentinel):
    evil_bytes = pickle.dumps(_Payload(os.system, f"touch {sentinel}"), protocol=2)
    return {
        "os.system": {"x": _Payload(os.system, f"touch {sentinel}")},
        "builtins.eval": {"x": _Payload(eval, f"open({str(sentinel)!r}, 'w').close()")},
        # An allowed entry point with a hostile inner pickle: torch's own _load_from_bytes would run it.
        "storage bytes": {"x": _Payload(torch.storage._load_from_bytes, evil_bytes)},
        "non-allowed class": {"x": _Payload(_Payload, print, "hi")},
    }


@pytest.mark.parametrize("kind", ["os.system", "builtins.eval", "storage bytes", "non-allowed class"])
def test_t5_pickle_refuses_code(tmp_path, kind):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump(_malicious_pickles(sentinel)[kind], f)
    expect = {"os.system": "refusing to load posix.system", "builtins.eval": "refusing to load builtins.eval",
              "storage bytes": "unsupported GLOBAL posix.system",  # refused by torch.load(weights_only=True)
              "non-allowed class": "refusing to load test_full_scale._Payload"}[kind]
    with pytest.raises(pickle.UnpicklingError, match=expect):
        plan.load_t5_embeddings(path)
    assert not sentinel.exists()


# ----------------------------------------------------------------------------- the real 2B preset, on meta


def test_2b_preset_on_meta():
    cfg, layout = DiTConfig.cosmos_predict2_2b(), li.Layout.libero()
    T, S = layout.num_frames, 224 // 8
    assert T <= cfg.max_frames and S // cfg.patch_spatial <= cfg.max_img_h // cfg.patch_spatial
    assert layout.action_chunk * layout.action_dim <= 16 * S * S
    with torch.device("meta"):
        model = DiT(cfg)
        # the official checkpoint's keys load strictly (extra_state and accum_* ignored), still without memory
        loaded = load_dit(official_dit_state_dict(model), cfg, dtype=torch.bfloat16)
        assert sum(p.numel() for p in loaded.parameters()) == 1_956_413_440
        assert loaded.x_embedder.proj[1].weight.dtype == torch.bfloat16
        out = loaded(torch.zeros(1, 16, T, S, S), torch.zeros(1, T), torch.zeros(1, 512, 1024),
                     torch.zeros(1, 1, T, S, S))
    assert out.shape == (1, 16, T, S, S) and out.device.type == "meta"
