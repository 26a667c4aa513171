"""Planar pushing benchmark with Push-T's rules in numpy + PIL: the simulator Cosmos Policy is trained and evaluated on.

Mirrors diffusion_policy's env/pusht/pusht_env.py (PushTEnv) without pymunk, pygame or shapely. Letters: N envs
stepped together, S image size, P convex parts of the block, C expert contact candidates, R rows and E episodes of a
demo file. Units: the table is [0, 1]^2, time in s. Tasks: 'push_t' is Push-T's T (a 4s x s bar over an s x 3s stem,
s = 30/512; pusher radius 15/512), goal at the centre turned pi/4, success at coverage > 0.95, 300 steps; 'push_block'
(default, the easy task) a 0.16 square over a goal marker half its size at the centre (the block covers it at any
angle, so only position counts, to about 0.04), success at coverage > 0.9, 150 steps. Resets draw the
block centroid in [0.2, 0.8]^2 at a uniform angle, the pusher in [0.1, 0.9]^2, rejecting overlap or coverage >= 0.5.
Action (2,) float32: the pusher's absolute target (x, y), clipped to the table (a wrong shape, NaN or inf raises
ValueError), tracked at 10 Hz by a PD controller (kp = 100 /s^2, kv = 20 /s, as Push-T) over 10 sub-steps of 0.01 s,
speed capped at 2 units/s so that no sub-step moves the pusher further than its radius. Observation dict:
  primary (S, S, 3) uint8  top-down view of the whole table (column = x, row = y): goal green, block blue (the T's
                            stem orange), pusher red, grey rim where the block cannot go; drawn at 2S, then averaged
  wrist   (S, S, 3) uint8  the same scene in a window 1/3 of the table wide centred on the pusher (dark off the
                            table), so it moves with the pusher like a wrist camera
  proprio (4,) float32     pusher x, y (table units) and vx, vy (table units / s)
Physics, quasi-static with frictionless point contact: the block has no velocity and moves only while the pusher
penetrates it, yielding along the contact normal f by the ellipsoidal limit surface: twist per unit of push
(f, (a x f) / c^2) / (1 + (a x f)^2 / c^2), a = contact point - centroid, c^2 = the block's mean squared radius. That
removes the penetration to first order; the pusher is pushed out of the rest. The block stays 2.5 pusher radii inside
the table edge (a rim, so that the pusher always fits beside it). Scoring as Push-T: coverage = area(block & goal) /
area(goal), exact (Sutherland-Hodgman on the convex parts); reward = clip(coverage / success_coverage, 0, 1);
terminated = coverage > success_coverage; truncated at max_steps; info = {coverage, is_success}. VecPushEnv never
auto-resets: an ended episode ignores actions and keeps its final state, reward and flags, for masking.
Public: EnvConfig (presets push_block(), push_t()); PushEnv(task, image_size, **overrides): reset(seed) -> (obs,
info), step((2,)) -> (obs, reward, terminated, truncated, info), render() -> (256, 256, 3); VecPushEnv(task, N,
image_size): reset(seeds (N,)), step((N, 2), render=True) stacked over N (obs has only proprio when render=False),
observe(), repeat(n) -> N*n copies of the current states, goal_distance() -> (N,), approach_angle() -> (N,);
expert_actions(vec_env, noise, rng, margin) -> (N, 2); expert_action(env) -> (2,); random_targets(rng) -> controller;
score_controller(task, seeds, controller) -> (success, max coverage, steps) (N,) each; collect_demos(task, n_episodes,
seed, path, explore, margin) -> summary; save_episodes(path, episodes, task, image_size); load_demos(path, task,
image_size) -> dict of arrays.
"""
import copy
import dataclasses
import os
import zipfile
import zlib

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

TABLE, RIM, OFF_TABLE, GOAL, PUSHER = (235, 235, 235), (190, 190, 190), (40, 40, 40), (120, 200, 120), (220, 40, 40)
PARTS = ((60, 100, 200), (240, 150, 40))  # part colours: the T's two bars differ, so its orientation reads at 64x64
FORMAT_VERSION = 1
ROW_KEYS = ("primary", "wrist", "proprio", "action")
DEMO_KEYS = ROW_KEYS + ("episode_len", "success", "seed", "task", "image_size", "format_version")


@dataclasses.dataclass
class EnvConfig:
    task: str                       # 'push_block' or 'push_t'; stored in demo files
    parts: tuple                    # block = union of rectangles (cx, cy, w, h) in the block frame, centroid at 0
    goal: tuple                     # goal pose (x, y, theta) of the block centroid
    symmetry: int                   # rotational symmetry order: angle errors are taken mod 2 pi / symmetry
    success_coverage: float         # success when coverage > this; reward = clip(coverage / this, 0, 1)
    max_steps: int                  # episode limit in control steps
    goal_scale: float = 1.0         # the goal region is the block's shape scaled by this about its centroid
    pusher_radius: float = 15 / 512  # Push-T's 15 px of a 512 px table, in table units
    kp: float = 100.0               # Push-T's PD gains: critically damped at 10 rad/s
    kv: float = 20.0                # (damping)
    max_speed: float = 2.0          # units/s
    control_hz: float = 10.0        # actions per second
    substeps: int = 10              # physics steps per action
    block_init: tuple = (0.2, 0.8)  # block centroid drawn uniformly in [lo, hi]^2
    pusher_init: tuple = (0.1, 0.9)  # pusher start drawn uniformly in [lo, hi]^2
    image_size: int = 64            # pixels per side of both cameras
    wrist_fov: float = 1 / 3        # wrist window width in table units

    @classmethod
    def push_block(cls):  # a marker half the block's size, covered at any angle; 150 steps = 4x the expert's mean
        return cls("push_block", ((0.0, 0.0, 0.16, 0.16),), (0.5, 0.5, 0.0), 4, 0.9, 150, goal_scale=0.5)

    @classmethod
    def push_t(cls):
        s = 30 / 512  # bar centre 6s/7 above and stem centre 8s/7 below the centroid
        return cls("push_t", ((0, -6 / 7 * s, 4 * s, s), (0, 8 / 7 * s, s, 3 * s)), (0.5, 0.5, np.pi / 4), 1, 0.95, 300)

    def __post_init__(self):
        part = np.asarray(self.parts, float).reshape(-1, 4)
        for ok, msg in [(self.task in ("push_block", "push_t"), "task must be 'push_block' or 'push_t'"),
                        (len(part) <= len(PARTS) and (part[:, 2:] > 0).all(), "at most 2 parts, each with w, h > 0"),
                        (np.allclose(part[:, :2].T @ (part[:, 2] * part[:, 3]), 0), "the parts' centroid must be 0"),
                        (0 < self.success_coverage <= 1 and 0 < self.goal_scale <= 1, "bad scoring"),
                        (self.max_steps > 0 and self.symmetry > 0, "need max_steps > 0 and symmetry > 0"),
                        (self.max_speed / (self.control_hz * self.substeps) < self.pusher_radius, "pusher tunnels"),
                        (self.image_size >= 8 and 0 < self.wrist_fov <= 1, "need image_size >= 8, 0 < wrist_fov <= 1")]:
            if not ok:
                raise ValueError(f"EnvConfig: {msg}")


def _turn(v, cos, sin):  # rotate vectors (..., 2) by angles given as cos, sin broadcastable to v[..., 0]
    return np.stack([cos * v[..., 0] - sin * v[..., 1], sin * v[..., 0] + cos * v[..., 1]], -1)


def _norm(v):
    return np.sqrt((v ** 2).sum(-1))


def _twist(arm, f, c2):  # block motion (dx, dy, dtheta) (..., 3) per unit push along f (..., 2) at arm from centroid
    torque = arm[..., 0] * f[..., 1] - arm[..., 1] * f[..., 0]
    return np.concatenate([f, torque[..., None] / c2], -1) / (1 + torque ** 2 / c2)[..., None]


def _clip_area(poly, clip):
    """Area of poly & clip for convex CCW polygons (..., M, 2), (..., K, 2), exact (Sutherland-Hodgman). Each clip
    edge maps every edge of poly to the two ends of its inside part; an edge wholly outside collapses onto the clip
    line, where it adds no area. So the vertex count simply doubles per clip edge and everything stays vectorised."""
    for k in range(clip.shape[-2]):
        a = clip[..., k, None, :]
        e = clip[..., (k + 1) % clip.shape[-2], None, :] - a
        n = np.stack([-e[..., 1], e[..., 0]], -1) / _norm(e)[..., None]                       # inward unit normal
        d = ((poly - a) * n).sum(-1)                                                           # (..., M) > 0 inside
        nxt, dn = np.roll(poly, -1, -2), np.roll(d, -1, -1)
        x = poly + (d / np.where(d == dn, 1.0, d - dn))[..., None] * (nxt - poly)              # edge meets the line
        s = np.where((d >= 0)[..., None], poly, np.where((dn >= 0)[..., None], x, poly - d[..., None] * n))
        t = np.where((dn >= 0)[..., None], nxt, np.where((d >= 0)[..., None], x, nxt - dn[..., None] * n))
        poly = np.stack([s, t], -2).reshape(*s.shape[:-2], -1, 2)                             # (..., 2M, 2)
    x, y = poly[..., 0], poly[..., 1]
    return 0.5 * (x * np.roll(y, -1, -1) - np.roll(x, -1, -1) * y).sum(-1)


class VecPushEnv:
    """N pushing environments stepped together; see the module docstring for slots, physics and scoring."""

    def __init__(self, task="push_block", num_envs=1, image_size=None, **overrides):
        if not isinstance(task, EnvConfig) and task not in ("push_block", "push_t"):
            raise ValueError(f"unknown task {task!r}; expected 'push_block', 'push_t' or an EnvConfig")
        cfg = task if isinstance(task, EnvConfig) else getattr(EnvConfig, task)()
        overrides.update({} if image_size is None else {"image_size": image_size})
        self.cfg = c = dataclasses.replace(cfg, **overrides)
        part, r = np.asarray(c.parts, float).reshape(-1, 4), c.pusher_radius
        self.num_envs, self.centre, self.half, area = num_envs, part[:, :2], part[:, 2:] / 2, part[:, 2] * part[:, 3]
        self.c2 = (area * ((self.half ** 2).sum(1) / 3 + (self.centre ** 2).sum(1))).sum() / area.sum()
        self.local = self.centre[:, None] + self.half[:, None] * np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]])
        self.radius, self.rim, self.goal_area = _norm(self.local).max(), 2.5 * r, area.sum() * c.goal_scale ** 2
        self.goal = np.array([c.goal], float)                                                 # (1, 3)
        cos, sin = np.cos(self.goal[:, 2, None, None]), np.sin(self.goal[:, 2, None, None])
        self.goal_corners = _turn(c.goal_scale * self.local, cos, sin) + self.goal[:, None, None, :2]  # (1, P, 4, 2)
        sides = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])                                # outward face normals
        along = sides[:, None] + sides[:, None, ::-1] * np.linspace(-0.4, 0.4, 5)[:, None]     # (4, 5, 2) per face
        pts = (self.centre[:, None, None] + self.half[:, None, None] * along).reshape(-1, 2)   # (P * 20, 2)
        nrm = np.broadcast_to(sides[:, None], (len(part), 4, 5, 2)).reshape(-1, 2)
        free = self.sdf((pts + (r + 0.01) * nrm)[None], np.zeros((1, 3)))[0][0] > r + 0.005  # the pusher fits there
        self.face_points, self.face_normals = pts[free], nrm[free]                            # (C, 2) expert contacts
        self.rngs = [np.random.default_rng() for _ in range(num_envs)]

    def corners(self, block):  # (N, 3) -> (N, P, 4, 2) world corners, CCW
        cos, sin = np.cos(block[:, 2, None, None]), np.sin(block[:, 2, None, None])
        return _turn(self.local, cos, sin) + block[:, None, None, :2]

    def coverage(self, block):  # (N, 3) -> (N,)
        inter = _clip_area(self.corners(block)[:, :, None], self.goal_corners[:, None])  # (N, P, P) part pairs
        return np.maximum(inter.sum((1, 2)), 0) / self.goal_area

    def pose_error(self, block):  # (N, 3) -> (N, 3): goal minus block, the angle wrapped by the block's symmetry
        err, period = self.goal - block, 2 * np.pi / self.cfg.symmetry
        err[:, 2] = (err[:, 2] + period / 2) % period - period / 2
        return err

    def goal_distance(self):  # -> (N,) each block's distance to the goal pose, the angle weighted by c^2 (expert's)
        return np.sqrt((self.pose_error(self.block) ** 2 * [1, 1, self.c2]).sum(-1))

    def approach_angle(self):  # -> (N,) degrees, at each block's centroid, between the pusher and the goal
        """180: the pusher is behind the block, ready to push it to the goal; 0: on the goal's side, so it must first
        go around the block (the expert's detour), or it pushes the block away."""
        to_p, to_g = self.pusher - self.block[:, :2], self.goal[:, :2] - self.block[:, :2]
        cross = to_p[:, 0] * to_g[:, 1] - to_p[:, 1] * to_g[:, 0]
        return np.degrees(np.abs(np.arctan2(cross, (to_p * to_g).sum(1))))

    def sdf(self, pts, block):
        """Points (N, M, 2) -> signed distance to the block (N, M), outward unit normal (N, M, 2); exact outside."""
        cos, sin = np.cos(block[:, 2, None, None]), np.sin(block[:, 2, None, None])
        q = _turn(pts[:, :, None] - block[:, None, None, :2], cos, -sin) - self.centre         # (N, M, P, 2) in parts
        dq = np.abs(q) - self.half
        out = np.maximum(dq, 0)
        lo = _norm(out)
        d = lo + np.minimum(dq.max(-1), 0)                                                     # (N, M, P)
        g = np.where(lo[..., None] > 0, out / np.maximum(lo, 1e-12)[..., None], dq == dq.max(-1, keepdims=True))
        near = np.arange(d.shape[-1]) == d.argmin(-1)[..., None]                               # (N, M, P) nearest part
        return d.min(-1), _turn((g * np.where(q < 0, -1.0, 1.0) * near[..., None]).sum(-2), cos[..., 0], sin[..., 0])

    def _hold(self, block):  # translate blocks back inside the rim
        xy = self.corners(block).reshape(len(block), -1, 2)
        block[:, :2] += np.maximum(self.rim - xy.min(1), 0) - np.maximum(xy.max(1) - (1 - self.rim), 0)
        return block

    def _physics(self, target, p, v, b):
        c, r, dt = self.cfg, self.cfg.pusher_radius, 1 / (self.cfg.control_hz * self.cfg.substeps)
        reach = self.radius + r + c.max_speed / c.control_hz  # further away, no contact this step: skip the geometry
        near = (_norm(p - b[:, :2]) < reach).any()
        for _ in range(c.substeps):
            v = v + dt * (c.kp * (target - p) - c.kv * v)
            v = v * np.minimum(1, c.max_speed / np.maximum(_norm(v), 1e-12))[:, None]
            p0, p = p, np.clip(p + dt * v, r, 1 - r)
            d, n = self.sdf(p[:, None], b) if near else (np.inf, None)
            if np.any(d < r):
                depth, arm = np.maximum(r - d, 0), p - d * n[:, 0] - b[:, :2]  # arm: contact point - centroid
                b = self._hold(b + depth * _twist(arm, -n[:, 0], self.c2))
                for _ in range(2):  # the rotation's second-order error, the rim, the T's notch: the pusher yields
                    d, n = self.sdf(p[:, None], b)
                    p = p + np.maximum(r - d, 0) * n[:, 0]
            v = (p - p0) / dt  # so that motion stopped by the table edge, rim or block is not carried over
        return p, v, b

    def reset(self, seeds=None):
        """seeds (N,) ints reseed each env's generator; None continues them -> (obs, info)."""
        c = self.cfg
        if seeds is not None:
            if len(seeds) != self.num_envs:
                raise ValueError(f"reset: got {len(seeds)} seeds for {self.num_envs} environments")
            self.rngs = [np.random.default_rng(int(s)) for s in seeds]
        self.block, self.pusher = np.zeros((self.num_envs, 3)), np.zeros((self.num_envs, 2))
        for i, g in enumerate(self.rngs):
            while True:
                b = self._hold(np.array([[*g.uniform(*c.block_init, 2), g.uniform(-np.pi, np.pi)]]))
                p = g.uniform(*c.pusher_init, (1, 2))
                if self.sdf(p[None], b)[0][0, 0] > 2 * c.pusher_radius and self.coverage(b)[0] < 0.5:
                    break
            self.block[i], self.pusher[i] = b[0], p[0]
        self.vel, self.steps = np.zeros((self.num_envs, 2)), np.zeros(self.num_envs, np.int64)
        self.done, self.cov = np.zeros(self.num_envs, bool), self.coverage(self.block)
        return self.observe(), {"coverage": self.cov.copy(), "is_success": self.cov > self.cfg.success_coverage}

    def step(self, actions, render=True):
        a = np.asarray(actions, dtype=float)
        if a.shape != (self.num_envs, 2) or not np.isfinite(a).all():
            raise ValueError(f"actions must be finite with shape ({self.num_envs}, 2); got shape {a.shape}")
        live = ~self.done
        p, v, b = self._physics(np.clip(a, 0, 1), self.pusher, self.vel, self.block.copy())
        moved = live & (b != self.block).any(1)
        self.pusher[live], self.vel[live], self.block[moved], self.steps = p[live], v[live], b[moved], self.steps + live
        if moved.any():  # clipping costs more than a step's physics, and a block that did not move keeps its score
            self.cov = self.coverage(self.block)
        success = self.cov > self.cfg.success_coverage
        truncated = (self.steps >= self.cfg.max_steps) & ~success
        self.done |= success | truncated
        return (self.observe(render), np.clip(self.cov / self.cfg.success_coverage, 0, 1), success, truncated,
                {"coverage": self.cov.copy(), "is_success": success.copy()})

    def repeat(self, n):
        """A copy holding each environment's current state n times over (env i -> copies i*n .. i*n + n - 1), to try
        n action sequences from the same states (plan.candidate_coverage); this env is untouched."""
        twin = copy.copy(self)
        twin.num_envs, twin.rngs = self.num_envs * n, [copy.deepcopy(g) for g in self.rngs for _ in range(n)]
        for k in ("block", "pusher", "vel", "steps", "done", "cov"):
            setattr(twin, k, np.repeat(getattr(self, k), n, 0))
        return twin

    def observe(self, images=True):
        """-> {'proprio': (N, 4) float32} plus 'primary', 'wrist' (N, S, S, 3) uint8 when images."""
        obs = {"proprio": np.concatenate([self.pusher, self.vel], 1).astype(np.float32)}
        if images:
            obs["primary"] = np.stack([self.view(i, (0.5, 0.5), 1.0) for i in range(self.num_envs)])
            obs["wrist"] = np.stack([self.view(i, self.pusher[i], self.cfg.wrist_fov) for i in range(self.num_envs)])
        return obs

    def view(self, i, centre, width, size=None):
        """Env i's scene in a square window (centre (2,), width) in table units -> (size, size, 3) uint8."""
        size, m, r = 2 * (size or self.cfg.image_size), self.rim, self.cfg.pusher_radius  # 2x, then averaged
        img = Image.new("RGB", (size, size), OFF_TABLE)
        draw = ImageDraw.Draw(img)
        px = lambda pts: ((np.asarray(pts) - centre) * size / width + size / 2).ravel().tolist()
        draw.rectangle(px([[0, 0], [1, 1]]), fill=RIM)
        draw.rectangle(px([[m, m], [1 - m, 1 - m]]), fill=TABLE)
        for part in self.goal_corners[0]:
            draw.polygon(px(part), fill=GOAL)
        for part, colour in zip(self.corners(self.block[i:i + 1])[0], PARTS):
            draw.polygon(px(part), fill=colour)
        draw.ellipse(px([self.pusher[i] - r, self.pusher[i] + r]), fill=PUSHER)
        return np.asarray(img.reduce(2))


class PushEnv:
    """One environment with a gymnasium-style API (gymnasium not needed): a VecPushEnv of size 1, unbatched."""

    def __init__(self, task="push_block", image_size=None, **overrides):
        self.vec = VecPushEnv(task, 1, image_size, **overrides)
        self.cfg = self.vec.cfg

    def reset(self, seed=None):
        return tuple(map(_first, self.vec.reset(None if seed is None else [seed])))

    def step(self, action):
        if np.shape(action) != (2,):
            raise ValueError(f"action must have shape (2,); got {np.shape(action)}")
        return tuple(map(_first, self.vec.step(np.asarray(action, dtype=float)[None])))

    def render(self, size=256):
        return self.vec.view(0, (0.5, 0.5), 1.0, size)


def _first(x):  # env 0 of a batched array or dict: arrays stay arrays, scalars become Python numbers
    return {k: _first(v) for k, v in x.items()} if isinstance(x, dict) else x[0] if x.ndim > 1 else x[0].item()


def expert_actions(env, noise=0.0, rng=None, margin=0.0):
    """Scripted expert for a VecPushEnv reading its true state -> targets (N, 2) float32. For every contact candidate
    (a point on a free face, pushed along the inward normal) the env's own quasi-static model gives the block's twist
    per unit of push; a candidate scores the share of the squared pose error (rotation weighted by c^2) that pushing
    there can remove (a share, so that travel keeps its weight as the error shrinks) minus 0.7 x the travel to reach
    it. At the best candidate the expert pushes (<= 0.06 per step); elsewhere it goes there, straight if the way is
    clear, else via waypoints on a circle around the block. noise: std (table units) of Gaussian noise on the target,
    for diverse demos; needs rng (np.random.Generator). margin: extra clearance (table units) from the block on the
    way to a face: its paths keep it (or, starting closer, get no closer), its circle and its approach point stand
    that much further out. 0 grazes the block, fine for the expert but not for a policy that imitates it to within a
    few hundredths: 0.03 took three training seeds' policies from 29.5% on average to 66.0% (README). Tuned on seeds
    0-199; bench.py measures 100000-100199."""
    if noise and rng is None:
        raise ValueError("expert_actions: noise > 0 needs rng")
    r, b, p, i = env.cfg.pusher_radius, env.block, env.pusher, np.arange(env.num_envs)

    def clear(start, end):  # (N, T, 2) each -> (N, T): the pusher can slide from start to end with the clearance
        seg = start[:, :, None] + np.linspace(0, 1, 8)[:, None] * (end - start)[:, :, None]  # (N, T, 8, 2)
        d = env.sdf(seg.reshape(len(seg), -1, 2), b)[0].reshape(seg.shape[:3])               # (N, T, 8)
        return (d > np.minimum(r + margin, d[..., :1]) - 1e-3).all(-1)
    gap = lambda a, c: np.abs((a - c + np.pi) % (2 * np.pi) - np.pi)                         # angle difference
    cos, sin = np.cos(b[:, 2, None]), np.sin(b[:, 2, None])
    f, arm = -_turn(env.face_normals, cos, sin), _turn(env.face_points, cos, sin)            # (N, C, 2) each
    twist = _twist(arm, f, env.c2)                                                            # (N, C, 3)
    err, w = env.pose_error(b), np.array([1, 1, env.c2])
    along, norm2 = (twist * err[:, None] * w).sum(-1), (twist ** 2 * w).sum(-1)              # (N, C)
    share = np.maximum(along, 0) ** 2 / norm2 / np.maximum((err ** 2 * w).sum(-1, keepdims=True), 1e-12)
    touch = arm + b[:, None, :2] - r * f                                                      # pusher touching the face
    pre, orbit = touch - (0.01 + margin) * f, env.radius + r + 0.02 + margin                  # approach point, circle
    direct = clear(np.broadcast_to(p[:, None], pre.shape), pre)
    rel_p, rel_pre = p - b[:, :2], pre - b[:, None, :2]                                       # from the centroid
    phi_p, phi_pre = np.arctan2(rel_p[:, 1], rel_p[:, 0])[:, None], np.arctan2(rel_pre[..., 1], rel_pre[..., 0])
    detour = orbit * gap(phi_pre, phi_p) + np.abs(_norm(rel_p)[:, None] - orbit) + orbit - _norm(rel_pre)
    travel = np.where(direct, _norm(pre - p[:, None]), detour)
    j = np.where(((pre > r) & (pre < 1 - r)).all(-1), share - 0.7 * travel, -np.inf).argmax(1)
    f, touch, pre, phi_pre, rel_pre = f[i, j], touch[i, j], pre[i, j], phi_pre[i, j, None], rel_pre[i, j]
    back, side = ((touch - p) * f).sum(-1), np.abs(((p - touch) * f[:, ::-1] * [1, -1]).sum(-1))
    engaged = (side < r / 2) & (back > -0.01) & (back < 0.015 + margin)
    push = touch + np.clip(along[i, j] / norm2[i, j], 0, 0.06)[:, None] * f
    ang = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    way = np.clip(b[:, None, :2] + orbit * np.stack([np.cos(ang), np.sin(ang)], -1), r, 1 - r)  # (N, 16, 2) waypoints
    pre_k = np.broadcast_to(pre[:, None], way.shape)
    to_go = 1.1 * orbit * gap(ang, phi_pre) + orbit - _norm(rel_pre)[:, None]  # x1.1: a chord beats staying put
    to_go = np.where(clear(way, pre_k), _norm(way - pre_k), to_go)
    blocked = ~clear(np.broadcast_to(p[:, None], way.shape), way)                             # would push
    goto = np.where(direct[i, j][:, None], pre, way[i, (_norm(way - p[:, None]) + to_go + 9 * blocked).argmin(1)])
    goto = p + (goto - p) * np.minimum(1, 0.15 / np.maximum(_norm(goto - p), 1e-9))[:, None]
    target = np.where(engaged[:, None], push, goto)
    if noise:
        target = target + noise * rng.standard_normal(target.shape)
    return np.clip(target, 0, 1).astype(np.float32)


def expert_action(env, noise=0.0, rng=None):
    """expert_actions for a PushEnv -> (2,)."""
    return expert_actions(env.vec, noise, rng)[0]


def random_targets(rng):
    """A controller that ignores the state: uniform targets on the table, the floor a policy has to clear."""
    return lambda env: rng.uniform(0, 1, (env.num_envs, 2)).astype(np.float32)


def score_controller(task, seeds, controller):
    """Run a state-reading controller (VecPushEnv -> targets (N, 2)) on `seeds`, unrendered, until every episode ends
    -> (success (N,) bool, max coverage (N,), steps (N,)): Push-T's two numbers per episode, and its length."""
    env = VecPushEnv(task, len(seeds))
    env.reset(seeds)
    max_cov = env.cov.copy()
    while not env.done.all():
        env.step(controller(env), render=False)
        max_cov = np.maximum(max_cov, env.cov)  # an ended episode keeps its final state
    return env.cov > env.cfg.success_coverage, max_cov, env.steps.copy()


def save_episodes(path, episodes, task, image_size):
    """Write episodes to one compressed .npz, atomically (a temp file in the same folder, then os.replace).
    episodes: dicts of primary, wrist (L+1, S, S, 3) uint8, proprio (L+1, 4), action (L+1, 2), success, seed; row t
    holds the observation before action t, the last row the final observation with the last action repeated (never
    executed: it pads action chunks). Stored flat over all R rows, plus episode_len, success, seed (E,)."""
    if not episodes or any(len({len(e[k]) for k in ROW_KEYS}) != 1 for e in episodes):
        raise ValueError("save_episodes: need >= 1 episode, each with one row count for " + ", ".join(ROW_KEYS))
    d = {k: np.concatenate([e[k] for e in episodes]).astype(np.uint8 if k in ROW_KEYS[:2] else np.float32)
         for k in ROW_KEYS}
    d.update(episode_len=np.array([len(e["action"]) for e in episodes], np.int64), task=np.array(task),
             success=np.array([bool(e["success"]) for e in episodes]), image_size=np.array(int(image_size)),
             seed=np.array([int(e["seed"]) for e in episodes], np.int64), format_version=np.array(FORMAT_VERSION))
    _check(d, path)
    tmp = f"{path}.{os.getpid()}.tmp"  # in the same folder, so that os.replace is atomic
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **d)
    os.replace(tmp, path)


def _check(d, path, task=None, image_size=None):
    missing = [k for k in DEMO_KEYS if k not in d]
    if missing or int(d["format_version"]) != FORMAT_VERSION:
        raise ValueError(f"{path}: not a demo file of version {FORMAT_VERSION} (missing {missing}, or another version)")
    R, E, S = len(d["action"]), len(d["episode_len"]), int(d["image_size"])
    want = {"primary": ((R, S, S, 3), np.uint8), "wrist": ((R, S, S, 3), np.uint8), "proprio": ((R, 4), np.float32),
            "action": ((R, 2), np.float32), "episode_len": ((E,), np.int64), "success": ((E,), bool),
            "seed": ((E,), np.int64)}
    bad = [k for k, (shape, dtype) in want.items() if d[k].shape != shape or d[k].dtype != dtype]
    if bad or d["episode_len"].sum() != R or (d["episode_len"] < 1).any():
        raise ValueError(f"{path}: inconsistent arrays {bad or ['episode_len']} for {R} rows, {E} episodes, S={S}")
    if (task is not None and str(d["task"]) != task) or (image_size is not None and S != image_size):
        raise ValueError(f"{path}: holds task {str(d['task'])!r} at image_size {S}; expected {task!r} at {image_size}")


def load_demos(path, task=None, image_size=None):
    """Read and validate a save_episodes file -> dict of its arrays (task str, image_size and format_version int) plus
    episode_start (E,) row offsets. ValueError for a damaged file, missing keys, inconsistent lengths or a mismatch."""
    try:
        with np.load(path, allow_pickle=False) as z:
            d = {k: z[k] for k in z.files}
    except (ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: damaged or not a demo .npz ({e})") from e
    _check(d, path, task, image_size)
    d.update(task=str(d["task"]), image_size=int(d["image_size"]), format_version=int(d["format_version"]),
             episode_start=np.cumsum(d["episode_len"]) - d["episode_len"])
    return d


def collect_demos(task, n_episodes, seed, path, image_size=64, noise=0.01, num_envs=50, keep_failures=False,
                  explore=0.0, margin=0.0):
    """Run the expert on env seeds seed, seed + 1, ... (num_envs at a time) and save its successful episodes (all of
    them if keep_failures) to path -> {'attempted', 'kept', 'success_rate', 'mean_len'} (env steps, kept episodes).
    explore: std (table units) of Gaussian noise on the executed target only; the file records the expert's target.
    That is DART (Laskey et al., 2017): the demos visit the slightly-off states a learned policy drifts into, each
    labelled with the expert's correction. margin: the expert's clearance from the block on its way round it."""
    rng, kept, successes = np.random.default_rng(seed), [], 0
    with tqdm(total=n_episodes, desc=f"expert demos {task}") as bar:
        for lo in range(seed, seed + n_episodes, num_envs):
            seeds = list(range(lo, min(lo + num_envs, seed + n_episodes)))
            env = VecPushEnv(task, len(seeds), image_size)
            frames, actions = [env.reset(seeds)[0]], []
            while not env.done.all():
                actions.append(expert_actions(env, noise, rng, margin))
                executed = actions[-1]
                if explore:
                    executed = executed + explore * rng.standard_normal(executed.shape)
                    executed = np.clip(executed, 0, 1).astype(np.float32)
                frames.append(env.step(executed)[0])
            for n, (s, L) in enumerate(zip(seeds, env.steps)):
                ok = bool(env.cov[n] > env.cfg.success_coverage)
                if ok or keep_failures:
                    ep = {k: np.stack([o[k][n] for o in frames[:L + 1]]) for k in ROW_KEYS[:3]}
                    act = np.stack([a[n] for a in actions[:L]] + [actions[L - 1][n]])  # the last one repeated
                    kept.append(dict(ep, action=act, success=ok, seed=s))
                successes += ok
            bar.update(len(seeds))
    save_episodes(path, kept, task, image_size)
    return {"attempted": n_episodes, "kept": len(kept), "success_rate": successes / n_episodes,
            "mean_len": float(np.mean([len(e["action"]) - 1 for e in kept]))}
