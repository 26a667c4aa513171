"""Latent frame injection: actions, proprio and values written straight into video latent frames.

Paper concept (Cosmos Policy, arXiv 2601.16163): the video model is unchanged; every modality is one latent frame,
in the order (s, a, s', V(s')). Images go through the VAE; non-image slots are black placeholder frames whose latents
are then overwritten ("injected") with normalised numbers tiled over the whole frame. The one-line idea is
diffusion_policy's `trajectory[condition_mask] = condition_data[condition_mask]` (conditional_sample), applied to
whole latent frames. Mirrors (NVlabs/cosmos-policy): `replace_latent_with_action_chunk` / `replace_latent_with_proprio`
(models/policy_text2world_model.py); `extract_action_chunk_from_latent_sequence`, `extract_value_from_latent_sequence`,
`undo_latent_injection` (experiments/robot/cosmos_utils.py); `compute_monte_carlo_returns` (datasets/dataset_common.py);
`rescale_data` (datasets/dataset_utils.py); the layouts of the libero/robocasa/aloha dataset classes.

Letters: B batch, C latent channels, T latent frames, H W latent size, F raw frames = 1 + 4(T-1), K action chunk,
A action dim, P proprio dim, N injected values, D data dims.

Worked example (LIBERO): a (B, 16, 9, 28, 28) latent holds 12544 numbers per frame. The (16, 7) action chunk is
flattened time-major to 112 numbers, repeated 112 times and reshaped (16, 28, 28) C-order into frame 4; `extract`
reads back the mean of the 112 copies. A 9-D proprio makes 1393 full copies plus 7 leftover numbers (ignored when
read); the value fills the whole last frame and is read back as its mean.

Public functions:
    raw_frames(layout, {slot: (B, H, W, 3) uint8})  -> (B, 3, F, H, W) float32 in [-1, 1]
    inject(latent (B,C,T,H,W), frame, values (B, ...)) -> new latent;  extract(latent, frame, N) -> (B, N)
    inject_vectors(latent, layout, proprio (B,P), action (B,K,A), future_proprio (B,P), value (B,)) -> new latent
    read_action -> (B, K, A);  read_future_proprio -> (B, P);  read_value -> (B,) in [0, 1]
    value_target(steps_to_end, gamma, success) -> float tensor in [-1, 1]
    minmax_stats(x (N, D), q=0) -> (lo (D,), hi (D,));  normalize / unnormalize(x (..., D), lo, hi)
    undo_injection(latent_pred, latent_orig, layout) -> latent
    condition_frames(layout, kind) -> (T,) bool;  condition_mask(layout, kinds) -> (B, T) bool
"""
import math
from dataclasses import dataclass

import torch
from einops import rearrange

KINDS = ("blank", "proprio", "image", "action", "value")
CONDITION_KINDS = ("policy", "world_model", "value", "value_sprime")
FRAMES_PER_LATENT = 4  # Wan VAE temporal compression: each slot after the blank one is 4 identical raw frames


@dataclass(frozen=True)
class Slot:
    name: str  # unique; a future slot is named "future_" + its current twin
    kind: str  # one of KINDS
    future: bool = False  # part of s' (predicted), not of s (observed)


@dataclass(frozen=True)
class Layout:
    slots: tuple  # of Slot, one per latent frame, in frame order
    num_cond: int  # conditioning prefix of a policy sample: blank + current state
    action_chunk: int  # K
    action_dim: int  # A
    proprio_dim: int  # P
    gamma: float  # value discount per environment step

    def __post_init__(self):
        names, kinds = [s.name for s in self.slots], [s.kind for s in self.slots]
        assert len(set(names)) == len(names), f"slot names must be unique: {names}"
        assert set(kinds) <= set(KINDS), f"unknown slot kind in {kinds}"
        assert kinds.count("action") == 1 and kinds.count("value") == 1, "need exactly one action and one value slot"
        # The order (blank, s, a, s', V) is what the conditioning masks and the causal VAE rely on.
        assert self.slots[0].kind == "blank" and kinds.count("blank") == 1, "frame 0 (and only it) must be blank"
        assert all(s.kind in ("proprio", "image") and not s.future for s in self.slots[1:self.num_cond]), \
            "frames 1..num_cond-1 must be the current proprio/images"
        assert self.slots[self.num_cond].kind == "action", "the action frame must follow the conditioning prefix"
        assert self.slots[-1].kind == "value", "the value must be the last frame (it is read from frame -1)"
        current, future = self.slots[1:self.num_cond], self.slots[self.num_cond + 1:-1]
        assert [(s.name, s.kind, s.future) for s in future] == [("future_" + s.name, s.kind, True) for s in current], \
            "the future state must mirror the current one, named 'future_' + current name"
        assert len(self.frames("proprio", future=False)) == 1, "need exactly one current proprio slot"
        assert min(self.action_chunk, self.action_dim, self.proprio_dim) > 0 and 0.0 < self.gamma <= 1.0

    @property
    def num_frames(self):
        return len(self.slots)

    @property
    def image_slots(self):
        return [s.name for s in self.slots if s.kind == "image"]

    def index(self, name):
        names = [s.name for s in self.slots]
        if name not in names:
            raise KeyError(f"no slot named {name!r}; slots are {names}")
        return names.index(name)

    def frames(self, kind, future=None):
        assert kind in KINDS, kind
        return [i for i, s in enumerate(self.slots) if s.kind == kind and (future is None or s.future == future)]

    @classmethod
    def libero(cls):
        return cls(slots=(
            Slot("blank", "blank"),  # 0: one black frame (not duplicated): the VAE encodes frame 0 alone
            Slot("proprio", "proprio"),  # 1: gripper qpos (2), eef pos (3), eef quat (4)
            Slot("wrist", "image"),  # 2: eye-in-hand camera
            Slot("primary", "image"),  # 3: agentview (third person)
            Slot("action", "action"),  # 4: action chunk a_t .. a_{t+15}
            Slot("future_proprio", "proprio", future=True),  # 5: proprio K steps later
            Slot("future_wrist", "image", future=True),  # 6
            Slot("future_primary", "image", future=True),  # 7
            Slot("value", "value"),  # 8: V(s'), rescaled to [-1, 1]
        ), num_cond=4, action_chunk=16, action_dim=7, proprio_dim=9, gamma=0.99)

    @classmethod
    def robocasa(cls):
        return cls(slots=(
            Slot("blank", "blank"),  # 0
            Slot("proprio", "proprio"),  # 1: same 9-D proprio as LIBERO
            Slot("wrist", "image"),  # 2: robot0_eye_in_hand
            Slot("primary_left", "image"),  # 3: robot0_agentview_left
            Slot("primary_right", "image"),  # 4: robot0_agentview_right
            Slot("action", "action"),  # 5: first 7 of 12 action dims (the rest drive the mobile base)
            Slot("future_proprio", "proprio", future=True),  # 6
            Slot("future_wrist", "image", future=True),  # 7
            Slot("future_primary_left", "image", future=True),  # 8
            Slot("future_primary_right", "image", future=True),  # 9
            Slot("value", "value"),  # 10
        ), num_cond=5, action_chunk=32, action_dim=7, proprio_dim=9, gamma=0.99)

    @classmethod
    def aloha(cls):
        return cls(slots=(
            Slot("blank", "blank"),  # 0
            Slot("proprio", "proprio"),  # 1: 14-D joint positions of both arms
            Slot("left_wrist", "image"),  # 2: cam_left_wrist
            Slot("right_wrist", "image"),  # 3: cam_right_wrist
            Slot("primary", "image"),  # 4: cam_high (top view)
            Slot("action", "action"),  # 5: 50x14 = 700 numbers: 17 full copies + a 644-number partial one
            Slot("future_proprio", "proprio", future=True),  # 6
            Slot("future_left_wrist", "image", future=True),  # 7
            Slot("future_right_wrist", "image", future=True),  # 8
            Slot("future_primary", "image", future=True),  # 9
            Slot("value", "value"),  # 10
        ), num_cond=5, action_chunk=50, action_dim=14, proprio_dim=14, gamma=0.998)  # 1.5-2K-step episodes

    @classmethod
    def toy(cls, action_chunk=16, action_dim=2, proprio_dim=2, gamma=0.99):
        return cls(slots=cls.libero().slots, num_cond=4, action_chunk=action_chunk, action_dim=action_dim,
                   proprio_dim=proprio_dim, gamma=gamma)  # LIBERO's frame order, small vectors for the 2-D sim


def raw_frames(layout, images):
    """Raw video fed to the VAE (official: the dataset __getitem__ / `get_action` sequence building).
    images: {image slot name: (B, H, W, 3) uint8}. Returns (B, 3, 1 + 4(T-1), H, W) float32 in [-1, 1]: one black blank
    frame, then 4 copies per slot; non-image slots are black (uint8 0 -> -1). At inference pass the current images for
    the future slots too: those frames start from pure noise, and the causal VAE keeps earlier latents independent."""
    assert set(images) == set(layout.image_slots), \
        f"images missing {set(layout.image_slots) - set(images)}, unexpected {set(images) - set(layout.image_slots)}"
    shapes = {tuple(images[n].shape) for n in layout.image_slots}
    assert len(shapes) == 1, f"all images must share one shape, got {shapes}"
    B, H, W, three = shapes.pop()
    assert three == 3 and all(images[n].dtype == torch.uint8 for n in images), "images must be (B, H, W, 3) uint8"
    black = torch.zeros(B, H, W, 3, dtype=torch.uint8, device=images[layout.image_slots[0]].device)
    frames = [black]
    for s in layout.slots[1:]:
        frames += [images[s.name] if s.kind == "image" else black] * FRAMES_PER_LATENT
    video = torch.stack(frames, dim=1)  # (B, F, H, W, 3)
    return rearrange(video, "b f h w c -> b c f h w").float() / 127.5 - 1.0  # (B, 3, F, H, W)


def inject(latent_B_C_T_H_W, frame, values_B_N):
    """Write `values` (B, ...) flattened row-major into latent frame `frame`, tiled end to end and truncated to
    C*H*W, reshaped (C, H, W) in C order. Returns a new tensor; the input is untouched.
    Official: `replace_latent_with_action_chunk` / `replace_latent_with_proprio` (policy_text2world_model.py)."""
    B, C, T, H, W = latent_B_C_T_H_W.shape
    flat = values_B_N.reshape(values_B_N.shape[0], -1)  # (B, N)
    assert flat.shape[0] == B, f"batch mismatch: latent {B}, values {flat.shape[0]}"
    n, room = flat.shape[1], C * H * W
    assert n <= room, f"{n} values do not fit in one latent frame of {C}x{H}x{W} = {room} numbers"
    tiled = flat.repeat(1, math.ceil(room / n))[:, :room]  # (B, C*H*W)
    out = latent_B_C_T_H_W.clone()
    out[:, :, frame] = rearrange(tiled, "b (c h w) -> b c h w", c=C, h=H, w=W).to(out.dtype)
    return out


def extract(latent_B_C_T_H_W, frame, n):
    """Mean over the full copies of an n-vector tiled into latent frame `frame`; the partial tail copy is ignored.
    Returns (B, n). Official: `extract_action_chunk_from_latent_sequence` (cosmos_utils.py)."""
    flat = rearrange(latent_B_C_T_H_W[:, :, frame], "b c h w -> b (c h w)")
    copies = flat.shape[1] // n
    assert copies >= 1, f"a latent frame of {flat.shape[1]} numbers cannot hold {n} values"
    tiles = rearrange(flat[:, :copies * n], "b (r n) -> b r n", n=n)  # (B, copies, n)
    # float64 sums of <= 2^29 float32 copies are exact, so extract(inject(x)) == x bit for bit.
    return tiles.double().mean(dim=1).to(latent_B_C_T_H_W.dtype)


def inject_vectors(latent, layout, proprio=None, action=None, future_proprio=None, value=None):
    """Inject every given non-image slot: proprio (B, P), action (B, K, A) (time-major), future_proprio (B, P),
    value (B,) (fills the whole value frame). Returns the new latent (B, C, T, H, W)."""
    B, P = latent.shape[0], layout.proprio_dim
    assert latent.shape[2] == layout.num_frames, f"latent has {latent.shape[2]} frames, layout {layout.num_frames}"
    (cur,), (fut,) = layout.frames("proprio", future=False), layout.frames("proprio", future=True)
    given = {"proprio": (proprio, cur, (B, P)), "future_proprio": (future_proprio, fut, (B, P)),
             "action": (action, layout.index("action"), (B, layout.action_chunk, layout.action_dim)),
             "value": (value, layout.index("value"), (B,))}
    for name, (x, frame, shape) in given.items():
        if x is not None:
            assert tuple(x.shape) == shape, f"{name}: expected {shape}, got {tuple(x.shape)}"
            latent = inject(latent, frame, x.reshape(B, -1))  # (B, N); actions time-major, a value is N = 1
    return latent


def read_action(latent, layout):
    flat = extract(latent, layout.index("action"), layout.action_chunk * layout.action_dim)  # (B, K*A)
    return rearrange(flat, "b (k a) -> b k a", k=layout.action_chunk)  # (B, K, A)


def read_future_proprio(latent, layout):
    # Never read back by the official code; averaging the copies like the actions is the natural read-out.
    return extract(latent, layout.frames("proprio", future=True)[0], layout.proprio_dim)  # (B, P)


def read_value(latent, layout):
    """Mean of the whole last frame mapped from [-1, 1] to [0, 1] (clipped). Returns (B,).
    Official: `extract_value_from_latent_sequence` (cosmos_utils.py) plus the clip in `get_action`."""
    assert latent.shape[2] == layout.num_frames and layout.index("value") == layout.num_frames - 1
    mean = latent[:, :, -1].double().mean(dim=(1, 2, 3))  # (B,)
    return ((mean + 1.0) / 2.0).clamp(0.0, 1.0).to(latent.dtype)


def value_target(steps_to_end, gamma, success):
    """Value label in [-1, 1] for the state `steps_to_end` steps before the episode's last step: 2*gamma^k - 1 for a
    success (any reward > 0: the official divides by the reward), -1 for a failure. Vectorised.
    Official: `compute_monte_carlo_returns` (dataset_common.py), with sparse reward on the last step only."""
    k = torch.as_tensor(steps_to_end, dtype=torch.float64)
    won = torch.as_tensor(success) > 0
    return torch.where(won, 2.0 * gamma ** k - 1.0, torch.full_like(k, -1.0)).float()


def minmax_stats(x_N_D, q=0.0):
    """Per-dimension (lo, hi) over rows, (D,) each: min and max (official), or with q > 0 the q and 1-q quantiles,
    so that a few outliers do not squeeze the common values into a sliver of [-1, 1] (the outliers then normalise
    beyond +-1; train.py clips them)."""
    x = torch.as_tensor(x_N_D)
    assert x.ndim == 2, f"stats are per dimension over rows: want (N, D), got {tuple(x.shape)}"
    assert 0.0 <= q < 0.5, f"quantile {q} must be in [0, 0.5)"
    if q == 0:
        return x.amin(dim=0), x.amax(dim=0)
    qs = torch.tensor([q, 1.0 - q], dtype=torch.float64)
    lo, hi = torch.quantile(x.double(), qs, dim=0).to(x.dtype)  # (2, D) -> (D,), (D,)
    return lo, hi


def normalize(x, lo, hi):
    """Per-dimension min-max to [-1, 1]: 2(x - lo)/(hi - lo) - 1. Official: `rescale_data` (dataset_utils.py).
    A constant dimension (hi == lo), which the official leaves as 0/0, maps to 0 here, and `unnormalize` maps it
    back to the constant, so the round trip holds for every dimension."""
    x, lo, hi = (torch.as_tensor(v) for v in (x, lo, hi))
    span = hi - lo
    safe = torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, 2.0 * (x - lo) / safe - 1.0, torch.zeros_like(x))


def unnormalize(x, lo, hi):
    """Inverse of `normalize`: 0.5(x + 1)(hi - lo) + lo. Official: `unnormalize_actions` (cosmos_utils.py)."""
    x, lo, hi = (torch.as_tensor(v) for v in (x, lo, hi))
    return 0.5 * (x + 1.0) * (hi - lo) + lo


def undo_injection(latent_pred, latent_orig, layout):
    """Put back the original VAE latents of every non-image frame before decoding predicted images: the causal
    decoder would otherwise smear the injected numbers into the image frames after them.
    Official: `undo_latent_injection` (cosmos_utils.py)."""
    assert latent_pred.shape == latent_orig.shape, f"{tuple(latent_pred.shape)} vs {tuple(latent_orig.shape)}"
    keep = [i for i, s in enumerate(layout.slots) if s.kind != "image"]
    out = latent_pred.clone()
    out[:, :, keep] = latent_orig[:, :, keep].to(out.dtype)
    return out


def condition_frames(layout, kind):
    """(T,) bool, True on the clean (conditioning) frames of a sample type (official: `get_data_and_condition`):
    policy p(a, s', V | s): blank + current state; world_model p(s', V | s, a): that + the action frame;
    value p(V | s, a, s'): everything but the value frame; value_sprime p(V | s'): the blank frame and s' only, the
    current state and the action noised like the value (official `mask_current_state_action_for_value_prediction`,
    the ALOHA planning model's V(s'))."""
    assert kind in CONDITION_KINDS, f"kind must be one of {CONDITION_KINDS}, got {kind!r}"
    frame = torch.arange(layout.num_frames)
    if kind == "value":
        return frame != layout.index("value")
    if kind == "value_sprime":
        return (frame == 0) | torch.tensor([s.future for s in layout.slots])
    return (frame < layout.num_cond) | ((frame == layout.index("action")) & (kind == "world_model"))


def condition_mask(layout, kinds):
    return torch.stack([condition_frames(layout, k) for k in kinds])  # (B, T)


if __name__ == "__main__":
    room = 16 * 28 * 28  # one real latent frame
    for name, lay in (("libero", Layout.libero()), ("robocasa", Layout.robocasa()), ("aloha", Layout.aloha()),
                      ("toy", Layout.toy())):
        n = lay.action_chunk * lay.action_dim
        masks = {k: condition_frames(lay, k) for k in CONDITION_KINDS}
        print(f"\n{name}: T={lay.num_frames} raw frames={1 + FRAMES_PER_LATENT * (lay.num_frames - 1)} K,A,P="
              f"{lay.action_chunk},{lay.action_dim},{lay.proprio_dim} gamma={lay.gamma} | in 16x28x28: action "
              f"{room // n} copies + {room % n}, proprio {room // lay.proprio_dim} copies + {room % lay.proprio_dim}")
        print(f"{'idx':>3} {'slot':<22}{'kind':<9}{'policy':<8}{'world':<8}{'value':<8}V(s')  (C = clean frame)")
        for i, s in enumerate(lay.slots):
            flags = "".join(f"{'C' if masks[k][i] else '.':<8}" for k in CONDITION_KINDS)
            print(f"{i:>3} {s.name:<22}{s.kind:<9}{flags}".rstrip())
