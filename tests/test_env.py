"""sim_env.py: API, determinism, physics properties, exact scoring, bad actions, the expert, the demo file format."""
import os

import numpy as np
import pytest

import sim_env
from sim_env import (EnvConfig, PushEnv, VecPushEnv, collect_demos, expert_action, expert_actions, load_demos,
                     random_targets, score_controller)

TASKS = ("push_block", "push_t")


def _place(env, block, pusher):  # put a VecPushEnv in a chosen state (tests only): the coverage cache must follow
    env.block[:], env.pusher[:], env.vel[:] = block, pusher, 0.0
    env.cov = env.coverage(env.block)


def _rollout(env, steps, seed=0):  # random targets, mostly near the block so that it gets pushed around -> states
    rng, out, N = np.random.default_rng(seed), [], env.num_envs
    for t in range(steps):
        if t % 4 == 0:
            near, anywhere = env.block[:, :2] + rng.normal(0, 0.06, (N, 2)), rng.uniform(-0.2, 1.2, (N, 2))
            target = np.where(rng.uniform(size=(N, 1)) < 0.8, near, anywhere)
        env.done[:] = False  # keep every env live for the whole rollout
        env.step(target, render=False)
        out.append((env.block.copy(), env.pusher.copy(), env.vel.copy()))
    return out


def _stacked(observations):  # list of obs dicts -> dict of arrays stacked over time
    return {k: np.stack([o[k] for o in observations]) for k in observations[0]}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", TASKS)
def test_api_shapes_and_types(task):
    env = PushEnv(task=task, image_size=32)
    obs, info = env.reset(seed=0)
    assert obs["primary"].shape == obs["wrist"].shape == (32, 32, 3) and obs["primary"].dtype == np.uint8
    assert obs["proprio"].shape == (4,) and obs["proprio"].dtype == np.float32
    assert set(info) == {"coverage", "is_success"} and isinstance(info["is_success"], bool)
    obs, reward, terminated, truncated, info = env.step(np.array([0.5, 0.5], np.float32))
    assert isinstance(reward, float) and isinstance(terminated, bool) and isinstance(truncated, bool)
    assert 0 <= reward <= 1 and 0 <= info["coverage"] <= 1
    assert env.render().shape == (256, 256, 3) and PushEnv(task).reset(seed=0)[0]["primary"].shape == (64, 64, 3)
    vec = VecPushEnv(task, 3, image_size=16)
    obs, info = vec.reset([0, 1, 2])
    assert obs["primary"].shape == (3, 16, 16, 3) and obs["proprio"].shape == (3, 4) and info["coverage"].shape == (3,)
    obs, reward, terminated, truncated, info = vec.step(np.full((3, 2), 0.5), render=False)
    assert set(obs) == {"proprio"} and reward.shape == terminated.shape == truncated.shape == (3,)


def test_views_show_the_scene():
    env = VecPushEnv("push_t", 1, image_size=64)
    obs, _ = env.reset([0])
    primary, wrist = obs["primary"][0].reshape(-1, 3), obs["wrist"][0]
    for colour in (*sim_env.PARTS, sim_env.GOAL, sim_env.PUSHER):  # every element is drawn in its own colour
        assert (np.abs(primary.astype(int) - colour).sum(1) < 30).any(), colour
    assert (np.abs(wrist[32, 32].astype(int) - sim_env.PUSHER).sum() < 30)  # the wrist view is centred on the pusher
    _place(env, env.block, [[0.05, 0.7]])  # column = x, row = y, in both views
    obs = env.observe()
    assert np.abs(obs["primary"][0, int(0.7 * 64), int(0.05 * 64)].astype(int) - sim_env.PUSHER).sum() < 30
    off_table = (obs["wrist"][0] == sim_env.OFF_TABLE).all(-1)
    assert off_table[:, 0].all() and not off_table[:, -1].any()


@pytest.mark.parametrize("task", TASKS)
def test_resets_are_valid_and_varied(task):
    env = VecPushEnv(task, 300)
    _, info = env.reset(range(300))
    assert (env.sdf(env.pusher[:, None], env.block)[0] > 2 * env.cfg.pusher_radius).all()  # no overlap at the start
    assert (info["coverage"] < 0.5).all() and (env.corners(env.block) >= env.rim - 1e-9).all()
    assert np.ptp(env.block[:, 2]) > 6 and np.ptp(env.block[:, :2], 0).min() > 0.5  # angles and places spread out


def test_same_seed_and_actions_give_identical_observations():
    actions = np.random.default_rng(0).uniform(0, 1, (25, 2))
    runs = []
    for seed in (7, 7, 8):
        env = PushEnv("push_t", image_size=32)
        runs.append(_stacked([env.reset(seed=seed)[0]] + [env.step(a)[0] for a in actions]))
    assert _same(runs[0], runs[1]) and not _same(runs[0], runs[2])
    a, b, fresh = PushEnv(), PushEnv(), PushEnv()
    for env in (a, b):  # reset() without a seed continues the seeded stream: reproducible, yet a new start
        env.reset(seed=3)
        env.reset()
    fresh.reset(seed=3)
    assert np.array_equal(a.vec.block, b.vec.block) and not np.array_equal(a.vec.block, fresh.vec.block)


def test_batched_envs_match_single_envs():
    seeds, actions = [3, 11], np.random.default_rng(1).uniform(0, 1, (20, 2, 2))
    vec = VecPushEnv("push_t", 2, image_size=24)
    singles = [PushEnv("push_t", image_size=24) for _ in seeds]
    batched = _stacked([vec.reset(seeds)[0]] + [vec.step(a)[0] for a in actions])          # (T, N, ...)
    for n, (env, seed) in enumerate(zip(singles, seeds)):
        single = _stacked([env.reset(seed=seed)[0]] + [env.step(a[n])[0] for a in actions])
        assert _same({k: x[:, n] for k, x in batched.items()}, single)


def test_repeat_tries_several_actions_from_one_state_and_leaves_the_original():
    rng = np.random.default_rng(2)
    env = VecPushEnv("push_t", 2, image_size=16)
    env.reset([3, 11])
    for _ in range(5):
        env.step(rng.uniform(0, 1, (2, 2)), render=False)
    before = env.block.copy(), env.pusher.copy(), env.steps.copy()
    twin = env.repeat(3)  # copies 0-2 of env 0, 3-5 of env 1
    actions = rng.uniform(0, 1, (10, 6, 2))
    actions[:, 1] = actions[:, 0]
    for a in actions:
        twin.step(a, render=False)
    assert all(np.array_equal(x, y) for x, y in zip(before, (env.block, env.pusher, env.steps)))
    assert np.array_equal(twin.pusher[0], twin.pusher[1]) and not np.array_equal(twin.pusher[0], twin.pusher[2])
    for a in actions:
        env.step(a[[0, 3]], render=False)
    assert np.array_equal(env.block, twin.block[[0, 3]]) and np.array_equal(env.cov, twin.cov[[0, 3]])
    err = np.array([env.cfg.goal]) - env.block
    err[:, 2] = (err[:, 2] + np.pi) % (2 * np.pi) - np.pi  # the T has no symmetry: its angle wraps at 2 pi
    assert env.cfg.symmetry == 1 and np.allclose(env.goal_distance(), np.sqrt((err[:, :2] ** 2).sum(1)
                                                                              + env.c2 * err[:, 2] ** 2))


def test_bad_actions_and_configs_raise():
    env = PushEnv()
    env.reset(seed=0)
    for bad in (np.zeros(3), np.zeros((1, 2)), 0.5, [np.nan, 0.5], [0.5, np.inf]):
        with pytest.raises(ValueError):
            env.step(bad)
    vec = VecPushEnv("push_block", 2)
    vec.reset([0, 1])
    with pytest.raises(ValueError):
        vec.step(np.zeros((3, 2)))
    with pytest.raises(ValueError):
        vec.reset([0])
    for kwargs in ({"task": "push_x"}, {"image_size": 4}, {"max_speed": 10.0}, {"success_coverage": 1.5}):
        with pytest.raises(ValueError):
            PushEnv(**kwargs)
    with pytest.raises(ValueError):
        expert_actions(vec, noise=0.1)  # noise without an rng would not be reproducible


def test_targets_off_the_table_are_clipped():
    results = []
    for action in ([5.0, -3.0], [1.0, 0.0]):
        env = PushEnv("push_block")
        env.reset(seed=4)
        obs = [env.step(action)[0]["proprio"] for _ in range(10)]
        results.append(np.stack(obs))
    assert np.array_equal(results[0], results[1])
    r = EnvConfig.push_block().pusher_radius
    assert (results[0][:, :2] >= r).all() and (results[0][:, :2] <= 1 - r).all()


@pytest.mark.parametrize("task", TASKS)
def test_long_random_rollouts_keep_physics_sane(task):
    env = VecPushEnv(task, 24)
    env.reset(range(24))
    cfg, moved, prev = env.cfg, 0.0, None
    for block, pusher, vel in _rollout(env, 150):
        d, _ = env.sdf(pusher[:, None], block)
        assert (d >= cfg.pusher_radius - 1e-9).all(), "the pusher penetrates the block"
        xy = env.corners(block).reshape(24, -1, 2)
        assert (xy >= env.rim - 1e-9).all() and (xy <= 1 - env.rim + 1e-9).all(), "the block left the table"
        assert (np.sqrt((vel ** 2).sum(1)) <= 1.1 * cfg.max_speed).all(), "the pusher's velocity is unbounded"
        if prev is not None:  # the block moves no faster than the pusher can push it
            assert (np.sqrt(((block[:, :2] - prev[:, :2]) ** 2).sum(1)) <= 1.1 * cfg.max_speed / cfg.control_hz).all()
            moved += np.abs(block - prev).sum()
        prev = block
    assert moved > 1.0, "the rollout never pushed the block, so it tested nothing"


@pytest.mark.parametrize("task", TASKS)
def test_no_motion_without_contact(task):
    env = VecPushEnv(task, 1)
    env.reset([0])
    _place(env, [[0.72, 0.72, 0.3]], [[0.15, 0.15]])
    block = env.block.copy()
    for target in np.random.default_rng(0).uniform(0.03, 0.4, (40, 2)):  # the pusher roams far from the block
        env.step(target[None], render=False)
    assert np.array_equal(env.block, block) and not np.allclose(env.pusher, 0.15)


def test_push_moves_block_along_the_push_and_stops_with_it():
    env = VecPushEnv("push_block", 1)
    env.reset([0])
    start = np.array([0.4, 0.25, 0.0])  # away from the goal, so that the episode cannot end
    _place(env, [start], [[0.2, 0.25]])  # behind the left face, level with the centroid
    for _ in range(10):
        env.step([[0.5, 0.25]], render=False)
    dx, dy, dtheta = env.block[0] - start
    assert dx > 0.05 and abs(dy) < 1e-9 and abs(dtheta) < 1e-9  # straight through the centroid: pure translation
    for _ in range(5):
        env.step([[0.1, 0.25]], render=False)  # pull back: the block stays where it was left
    held = env.block.copy()
    for _ in range(5):
        env.step([[0.1, 0.25]], render=False)
    assert np.array_equal(env.block, held)
    _place(env, [start], [[0.2, 0.2]])  # now 0.05 off the centroid in y: the push also turns the block
    for _ in range(10):
        env.step([[0.5, 0.2]], render=False)
    dx, dy, dtheta = env.block[0] - start
    assert dx > 0.03 and dtheta > 0.05  # torque (contact - centroid) x f = (-0.08, -0.05) x (1, 0) > 0


def test_coverage_is_exact():
    poses = np.array([[0.5, 0.5, 0], [0.53, 0.5, 0], [0.5, 0.46, np.pi / 2], [0.5, 0.5, np.pi / 4], [0.9, 0.9, 1]])
    s, env = 0.16, VecPushEnv("push_block", 1, goal_scale=1.0)  # a goal the block's size, as in Push-T
    octagon = 2 * (np.sqrt(2) - 1)  # a square turned 45 deg about its centre overlaps itself in this share
    assert np.allclose(env.coverage(poses), [1.0, 1 - 0.03 / s, 1 - 0.04 / s, octagon, 0.0], atol=1e-12)
    g, env = 0.08, VecPushEnv("push_block", 1)  # the default: a marker half the block's size, [0.46, 0.54]^2
    poses[1:3, :2] = [[0.57, 0.5], [0.5, 0.42]]  # block edges at x = 0.49 and at y = 0.5: 0.05 and 0.04 of 0.08 left
    assert np.allclose(env.coverage(poses), [1.0, 0.05 / g, 0.04 / g, 1.0, 0.0], atol=1e-12)  # any angle covers it
    env = VecPushEnv("push_t", 1)
    g = np.linspace(0.3, 0.7, 501)  # an independent check: a 501^2 raster, cells 8e-4 wide (error ~1e-3)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(1, -1, 2)
    in_goal = env.sdf(grid, env.goal)[0] <= 0
    for pose in ([0.51, 0.49, 0.9], [0.5, 0.5, np.pi / 4 + 0.3], [0.45, 0.55, -2.0]):
        raster = (in_goal & (env.sdf(grid, np.array([pose]))[0] <= 0)).sum() / in_goal.sum()
        assert abs(env.coverage(np.array([pose]))[0] - raster) < 3e-3


def test_success_terminates_with_full_reward_and_ended_episodes_freeze():
    env = VecPushEnv("push_t", 2, max_steps=5)
    env.reset([0, 1])
    _place(env, [list(env.cfg.goal), [0.3, 0.3, 0.0]], [[0.1, 0.9], [0.9, 0.9]])
    obs, reward, terminated, truncated, info = env.step([[0.1, 0.85], [0.9, 0.85]])
    assert terminated.tolist() == [True, False] and reward[0] == 1.0 and info["is_success"][0] and reward[1] < 1
    for _ in range(4):
        obs, reward, terminated, truncated, info = env.step([[0.5, 0.5], [0.8, 0.8]])
    assert truncated.tolist() == [False, True] and env.steps.tolist() == [1, 5]
    later = env.step([[0.2, 0.2], [0.2, 0.2]])
    assert all(np.array_equal(later[0][k], obs[k]) for k in obs), "an ended episode must keep its final state"
    assert later[2].tolist() == [True, False] and later[3].tolist() == [False, True]


@pytest.mark.parametrize("task,seeds", [("push_block", [0, 1, 2]), ("push_t", [0, 1])])
def test_expert_solves_a_few_seeds(task, seeds):
    env = VecPushEnv(task, len(seeds))
    env.reset(seeds)
    while not env.done.all():
        env.step(expert_actions(env), render=False)
    assert (env.cov > env.cfg.success_coverage).all() and (env.steps <= env.cfg.max_steps).all()
    single, vec = PushEnv(task), VecPushEnv(task, 1)
    single.reset(seed=seeds[0])
    vec.reset(seeds[:1])
    action = expert_action(single)
    assert action.shape == (2,) and np.array_equal(action, expert_actions(vec)[0])


def test_random_targets_are_a_seeded_floor_that_the_expert_clears():
    seeds = range(100_000, 100_040)  # plan.py's evaluation seeds
    ok, cov, steps = score_controller("push_block", seeds, random_targets(np.random.default_rng(0)))
    again = score_controller("push_block", seeds, random_targets(np.random.default_rng(0)))
    assert np.array_equal(ok, again[0]) and np.array_equal(cov, again[1])  # the same floor on every call
    assert ok.mean() <= 0.1 and (steps[~ok] == EnvConfig.push_block().max_steps).all()
    expert_ok, expert_cov, expert_steps = score_controller("push_block", seeds, expert_actions)
    assert expert_ok.all() and expert_cov.mean() > cov.mean() + 0.5 and expert_steps.max() < 150


@pytest.mark.slow
@pytest.mark.parametrize("task,rate", [("push_block", 0.95), ("push_t", 0.90)])
def test_expert_success_rate_over_200_seeds(task, rate):
    env = VecPushEnv(task, 200)
    env.reset(range(10_000, 10_200))  # seeds the expert was not tuned on
    while not env.done.all():
        env.step(expert_actions(env), render=False)
    assert (env.cov > env.cfg.success_coverage).mean() >= rate


def test_demo_round_trip_replays_exactly(tmp_path):
    path = str(tmp_path / "demos.npz")
    summary = collect_demos("push_block", 3, seed=5, path=path, image_size=32, noise=0.01)
    assert summary["attempted"] == 3 and summary["kept"] >= 2 and os.listdir(tmp_path) == ["demos.npz"]
    d = load_demos(path, task="push_block", image_size=32)
    assert d["task"] == "push_block" and d["image_size"] == 32 and d["success"].all()
    assert d["episode_len"].sum() == len(d["primary"]) == len(d["action"]) and d["episode_start"][0] == 0
    for start, length, seed in zip(d["episode_start"], d["episode_len"], d["seed"]):
        rows = slice(start, start + length)
        env = PushEnv("push_block", image_size=32)
        replay = _stacked([env.reset(seed=int(seed))[0]] + [env.step(a)[0] for a in d["action"][rows][:-1]])
        assert _same(replay, {k: d[k][rows] for k in replay}) and env.vec.cov[0] > env.cfg.success_coverage
        assert np.array_equal(d["action"][rows][-1], d["action"][rows][-2])  # the padding row repeats the last action


def test_dart_demos_record_the_expert_target_not_the_executed_one(tmp_path):
    path = str(tmp_path / "dart.npz")
    collect_demos("push_block", 2, seed=7, path=path, image_size=16, noise=0.0, explore=0.05)
    d = load_demos(path)
    for start, length, seed in zip(d["episode_start"], d["episode_len"], d["seed"]):
        rows = slice(start, start + length)
        env = PushEnv("push_block", image_size=16)
        first = env.reset(seed=int(seed))[0]
        assert np.array_equal(d["action"][start], expert_action(env))  # the label is the noise-free expert's
        replay = _stacked([first] + [env.step(a)[0] for a in d["action"][rows][:-1]])
        assert not np.allclose(replay["proprio"], d["proprio"][rows], atol=1e-3)  # the executed targets were not

def test_play_collection_keeps_and_flags_failures(tmp_path):
    path = str(tmp_path / "play.npz")
    summary = collect_demos("push_block", 3, seed=0, path=path, image_size=16, noise=0.5, keep_failures=True)
    d = load_demos(path)
    assert summary["kept"] == len(d["success"]) == 3 and summary["success_rate"] == d["success"].mean() < 1


def test_damaged_or_mismatched_demo_files_raise(tmp_path):
    S, rows = 8, 4
    ep = {"primary": np.zeros((rows, S, S, 3), np.uint8), "wrist": np.zeros((rows, S, S, 3), np.uint8),
          "proprio": np.zeros((rows, 4)), "action": np.zeros((rows, 2)), "success": False, "seed": 1}
    good = str(tmp_path / "good.npz")
    sim_env.save_episodes(good, [ep, ep], "push_t", S)
    assert len(load_demos(good)["success"]) == 2
    with pytest.raises(ValueError):
        sim_env.save_episodes(str(tmp_path / "x.npz"), [dict(ep, action=np.zeros((rows + 1, 2)))], "push_t", S)
    with pytest.raises(ValueError, match="task"):
        load_demos(good, task="push_block")
    with pytest.raises(ValueError, match="image_size"):
        load_demos(good, image_size=64)
    raw = open(good, "rb").read()
    broken = {"truncated.npz": raw[: len(raw) // 2], "garbage.npz": b"not a zip file at all",
              "flipped.npz": raw[:200] + bytes(b ^ 0xFF for b in raw[200:400]) + raw[400:]}
    d = dict(np.load(good))
    arrays = {"missing.npz": {k: v for k, v in d.items() if k != "seed"},
              "lengths.npz": dict(d, episode_len=d["episode_len"] + 1)}
    for name, content in broken.items():
        (tmp_path / name).write_bytes(content)
    for name, content in arrays.items():
        np.savez(str(tmp_path / name), **content)
    for name in (*broken, *arrays):
        with pytest.raises(ValueError):
            load_demos(str(tmp_path / name))


def test_approach_angle_is_0_between_block_and_goal_and_180_behind_the_block():
    env = VecPushEnv("push_block", 4, image_size=16)
    env.reset([0, 1, 2, 3])
    env.block[:, :2] = [[0.3, 0.5], [0.3, 0.5], [0.5, 0.7], [0.5, 0.7]]  # left of the goal (0.5, 0.5), below it
    env.pusher[:] = [[0.45, 0.5], [0.1, 0.5], [0.5, 0.9], [0.7, 0.7]]  # goal side, behind; behind, beside
    assert np.allclose(env.approach_angle(), [0, 180, 180, 90])


def test_the_expert_with_a_margin_keeps_it_on_its_way_to_the_block_and_still_succeeds():
    seeds = list(range(20))
    for margin, lo, hi in [(0.0, 0.0, 0.005), (0.03, 0.028, 0.05)]:
        env = VecPushEnv("push_block", len(seeds))
        env.reset(seeds)
        gaps, moved = [], []
        for _ in range(60):
            before = env.block.copy()
            env.step(expert_actions(env, margin=margin), render=False)
            gaps.append(env.sdf(env.pusher[:, None], env.block)[0][:, 0] - env.cfg.pusher_radius)
            moved.append((env.block != before).any(1))
        first = np.array(moved).argmax(0)  # the step at which each pusher first moves its block
        assert (first > 3).all()
        closest = min(np.array(gaps)[:f - 3, i].min() for i, f in enumerate(first))  # until the final approach
        assert lo <= closest < hi, (margin, closest)
        ok, _, _ = score_controller("push_block", seeds, lambda e: expert_actions(e, margin=margin))
        assert ok.all()
