"""latent_injection.py: exact tiling round trips at the real shapes, value coding, normalisation, raw frame layout,
conditioning masks and layout validation."""
import dataclasses

import pytest
import torch

from latent_injection import (Layout, Slot, condition_frames, condition_mask, extract, inject, inject_vectors,
                              minmax_stats, normalize, raw_frames, read_action, read_future_proprio, read_value,
                              undo_injection, unnormalize, value_target)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _latent(layout, c, h, w, b=2, seed=0):
    return torch.randn(b, c, layout.num_frames, h, w, generator=_gen(seed))


@pytest.mark.parametrize("layout, chw", [(Layout.libero(), (16, 28, 28)), (Layout.robocasa(), (16, 28, 28)),
                                         (Layout.aloha(), (16, 28, 28)), (Layout.toy(), (16, 8, 8))])
def test_action_round_trip_is_exact(layout, chw):
    latent = _latent(layout, *chw)
    action = torch.rand(2, layout.action_chunk, layout.action_dim, generator=_gen(1)) * 2 - 1
    out = inject_vectors(latent, layout, action=action)
    assert torch.equal(read_action(out, layout), action)
    # Only the action frame changed.
    a = layout.index("action")
    others = [i for i in range(layout.num_frames) if i != a]
    assert torch.equal(out[:, :, others], latent[:, :, others])
    # Time-major tiling: the first K*A numbers of the frame (C order) are the chunk itself.
    flat = out[:, :, a].reshape(2, -1)
    assert torch.equal(flat[:, :action.numel() // 2], action.reshape(2, -1))


def test_aloha_partial_tail_is_ignored():
    layout = Layout.aloha()
    latent = _latent(layout, 16, 28, 28)
    action = torch.rand(2, 50, 14, generator=_gen(1)) * 2 - 1
    out = inject_vectors(latent, layout, action=action)
    flat = out[:, :, layout.index("action")].reshape(2, -1)  # (2, 12544) = 17 copies of 700 + 644
    assert torch.equal(flat[:, 17 * 700:], action.reshape(2, -1)[:, :644])
    corrupted, frame = out.clone(), flat.clone()
    frame[:, 17 * 700:] = 123.0
    corrupted[:, :, layout.index("action")] = frame.reshape(2, 16, 28, 28)
    assert torch.equal(read_action(corrupted, layout), action)
    # A corrupted full copy does change the read-out (by 1/17 of the error).
    frame[:, 0] += 17.0
    corrupted[:, :, layout.index("action")] = frame.reshape(2, 16, 28, 28)
    assert torch.allclose(read_action(corrupted, layout)[:, 0, 0], action[:, 0, 0] + 1.0, atol=1e-5)


def test_proprio_round_trip_and_copy_count():
    layout = Layout.libero()
    latent = _latent(layout, 16, 28, 28)
    proprio, future = (torch.rand(2, 9, generator=_gen(i)) * 2 - 1 for i in (1, 2))
    out = inject_vectors(latent, layout, proprio=proprio, future_proprio=future)
    assert torch.equal(extract(out, layout.index("proprio"), 9), proprio)
    assert torch.equal(read_future_proprio(out, layout), future)
    flat = out[:, :, layout.index("proprio")].reshape(2, -1)
    assert 16 * 28 * 28 == 1393 * 9 + 7
    assert torch.equal(flat[:, 1393 * 9:], proprio[:, :7])  # the partial copy


def test_inject_is_pure_and_checks_room():
    latent = torch.randn(2, 4, 3, 2, 2, generator=_gen(0))
    before = latent.clone()
    out = inject(latent, 1, torch.ones(2, 5))
    assert torch.equal(latent, before) and not torch.equal(out, latent)
    with pytest.raises(AssertionError, match="do not fit"):
        inject(latent, 1, torch.ones(2, 17))


def test_value_target_and_read_value():
    k = torch.tensor([0, 1, 10, 100])
    assert torch.allclose(value_target(k, 0.99, True), (2 * 0.99 ** k.double() - 1).float())
    assert torch.equal(value_target(k, 0.99, False), torch.full((4,), -1.0))
    mixed = value_target(torch.tensor([5, 5]), 0.998, torch.tensor([1.0, 0.0]))
    assert mixed[1] == -1.0 and abs(mixed[0] - (2 * 0.998 ** 5 - 1)) < 1e-6
    assert value_target(3, 0.9, 0.4) == value_target(3, 0.9, True)  # partial scores count as success
    layout = Layout.libero()
    target = value_target(torch.tensor([0, 40]), layout.gamma, torch.tensor([True, False]))
    out = inject_vectors(_latent(layout, 16, 28, 28), layout, value=target)
    assert torch.equal(out[:, :, -1], target.view(2, 1, 1, 1).expand(2, 16, 28, 28))
    assert torch.allclose(read_value(out, layout), ((target + 1) / 2).clamp(0, 1), atol=1e-7)
    assert read_value(out, layout)[0] == 1.0 and read_value(out, layout)[1] == 0.0
    over = inject_vectors(out, layout, value=torch.tensor([1.7, -3.0]))
    assert torch.equal(read_value(over, layout), torch.tensor([1.0, 0.0]))  # clipped to [0, 1]


def test_normalization_round_trip_and_constant_dimension():
    g = _gen(0)
    x = torch.randn(100, 4, generator=g, dtype=torch.float64) * torch.tensor([1.0, 10.0, 0.01, 1.0]).double()
    x[:, 3] = 2.5  # constant dimension
    lo, hi = minmax_stats(x)
    z = normalize(x, lo, hi)
    assert z[:, :3].min() == -1.0 and z[:, :3].amax(0).tolist() == [1.0, 1.0, 1.0]
    assert torch.equal(z[:, 3], torch.zeros(100, dtype=torch.float64))  # constant -> 0, no NaN
    assert torch.allclose(unnormalize(z, lo, hi), x, atol=1e-12, rtol=0)
    assert torch.equal(unnormalize(torch.zeros(1, 4, dtype=torch.float64), lo, hi)[0, 3], torch.tensor(2.5).double())
    y = torch.rand(50, 4, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.allclose(normalize(unnormalize(y, lo, hi), lo, hi)[:, :3], y[:, :3], atol=1e-12, rtol=0)


def test_quantile_stats_ignore_outliers_that_min_max_follows():
    x = torch.randn(10_000, 2, generator=_gen(1), dtype=torch.float64)
    x[:5] = torch.tensor([80.0, -60.0]).double()  # a few long jumps, as the push_t expert's waypoints
    (lo, hi), (qlo, qhi) = minmax_stats(x), minmax_stats(x, q=0.01)
    assert hi[0] == 80.0 and lo[1] == -60.0
    assert torch.allclose(qhi, torch.tensor([2.33, 2.33]).double(), atol=0.15)  # N(0, 1)'s 99th percentile
    assert torch.allclose(qlo, -qhi, atol=0.2)
    inside = normalize(x, qlo, qhi).abs() <= 1
    assert 0.975 < inside.double().mean() < 0.985  # 1% beyond each end
    spread, squeezed = normalize(x, qlo, qhi)[5:].std(0), normalize(x, lo, hi)[5:].std(0)  # the common values
    assert (spread > 10 * squeezed).all(), (spread, squeezed)
    with pytest.raises(AssertionError, match="quantile"):
        minmax_stats(x, q=0.5)


@pytest.mark.parametrize("layout, frames", [(Layout.libero(), 33), (Layout.aloha(), 41), (Layout.robocasa(), 41)])
def test_raw_frames_layout(layout, frames):
    g = _gen(1)
    images = {n: torch.randint(1, 256, (2, 8, 6, 3), generator=g, dtype=torch.uint8) for n in layout.image_slots}
    video = raw_frames(layout, images)
    assert video.shape == (2, 3, frames, 8, 6) and video.dtype == torch.float32
    assert video[:, :, 0].eq(-1.0).all()  # the single blank frame
    for i, s in enumerate(layout.slots[1:], start=1):
        chunk = video[:, :, 4 * (i - 1) + 1:4 * i + 1]  # the 4 raw frames of latent frame i
        if s.kind == "image":
            expect = images[s.name].permute(0, 3, 1, 2).float() / 127.5 - 1
            assert all(torch.equal(chunk[:, :, j], expect) for j in range(4))
        else:
            assert chunk.eq(-1.0).all(), s.name
    assert video.min() >= -1.0 and video.max() <= 1.0


def test_raw_frames_rejects_missing_or_mismatched_images():
    layout = Layout.toy()
    images = {n: torch.zeros(1, 8, 8, 3, dtype=torch.uint8) for n in layout.image_slots}
    with pytest.raises(AssertionError, match="missing"):
        raw_frames(layout, {k: v for k, v in images.items() if k != "future_wrist"})
    with pytest.raises(AssertionError, match="shape"):
        raw_frames(layout, {**images, "wrist": torch.zeros(1, 8, 4, 3, dtype=torch.uint8)})


@pytest.mark.parametrize("layout", [Layout.libero(), Layout.toy()])
def test_condition_masks(layout):
    policy, wm, value = (condition_frames(layout, k).tolist() for k in ("policy", "world_model", "value"))
    assert policy == [True] * 4 + [False] * 5
    assert wm == [True] * 5 + [False] * 4
    assert value == [True] * 8 + [False]
    m = condition_mask(layout, ["value", "policy", "world_model"])
    assert m.shape == (3, 9) and m.dtype == torch.bool and m[1].tolist() == policy and m[0].tolist() == value
    with pytest.raises(AssertionError):
        condition_frames(layout, "actions")


@pytest.mark.parametrize("layout", [Layout.libero(), Layout.robocasa(), Layout.toy()])
def test_value_sprime_mask_sees_only_the_future_state(layout):
    clean = condition_frames(layout, "value_sprime").tolist()
    assert clean == [i == 0 or s.future for i, s in enumerate(layout.slots)]
    for name in ("proprio", "wrist", "action", "value", "future_proprio", "future_wrist"):  # s and a are noised
        assert clean[layout.index(name)] == name.startswith("future_"), name


def test_condition_masks_aloha():
    layout = Layout.aloha()
    assert condition_frames(layout, "world_model").tolist() == [True] * 6 + [False] * 5


def test_undo_injection_restores_non_image_frames():
    layout = Layout.libero()
    orig, pred = _latent(layout, 4, 2, 2, seed=1), _latent(layout, 4, 2, 2, seed=2)
    out = undo_injection(pred, orig, layout)
    for i, s in enumerate(layout.slots):
        assert torch.equal(out[:, :, i], (pred if s.kind == "image" else orig)[:, :, i]), s.name
    assert [i for i, s in enumerate(layout.slots) if s.kind != "image"] == [0, 1, 4, 5, 8]


def test_layout_presets_and_validation():
    lib, alo = Layout.libero(), Layout.aloha()
    assert lib.num_frames == 9 and lib.index("action") == 4 and lib.index("value") == 8
    assert lib.image_slots == ["wrist", "primary", "future_wrist", "future_primary"]
    assert lib.frames("image", future=True) == [6, 7] and lib.frames("proprio") == [1, 5]
    assert alo.index("action") == 5 and alo.frames("image", future=False) == [2, 3, 4]
    assert [s.name for s in Layout.toy().slots] == [s.name for s in lib.slots]
    with pytest.raises(KeyError):
        lib.index("gripper")
    slots = lib.slots
    bad = [slots[:8] + (slots[7],),  # duplicate name, no value
           slots[:4] + (slots[5], slots[4]) + slots[6:],  # action not right after the prefix
           slots[:6] + (Slot("future_left", "image", True), slots[7], slots[8]),  # future does not mirror current
           slots[:8] + (Slot("value", "action"),)]  # two actions
    for s in bad:
        with pytest.raises(AssertionError):
            dataclasses.replace(lib, slots=s)
    with pytest.raises(AssertionError):
        dataclasses.replace(lib, num_cond=3)
