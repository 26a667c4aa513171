"""plan.py on the smoke checkpoint: value aggregation, best-of-N shapes and selection rule, the planner's value query,
and an evaluation that collects rollouts and writes a GIF."""
import dataclasses
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import latent_injection as li
import plan
import sim_env
import train
from conftest import ROOT


def test_majority_mean_follows_the_official_rule():
    v = torch.tensor([[0.9, 0.7, 0.0, 0.02, 0.5],  # 3 of 5 above 0.05: the mean of those 3
                      [0.9, 0.01, 0.0, 0.02, 0.5],  # 2 of 5: no majority, 0
                      [0.4, 0.0, 0.3, 0.01, 0.0]])  # 2 of 5 again
    assert torch.allclose(plan.majority_mean(v), torch.tensor([0.7, 0.0, 0.0]))
    assert plan.majority_mean(torch.tensor([0.4, 0.0])) == pytest.approx(0.4)  # exactly half is a majority
    assert plan.majority_mean(torch.tensor([1.5, 1.2])) == 1.0  # clipped to [0, 1]


def test_wilson_interval():
    assert plan.wilson(0, 200) == pytest.approx((0.0, 0.01885), abs=1e-4)
    assert plan.wilson(100, 200) == pytest.approx((0.4314, 0.5686), abs=1e-4)
    assert plan.wilson(0, 0) == (0.0, 0.0)


@pytest.mark.parametrize("field", ["episodes", "best_of", "batch", "num_steps"])
def test_plan_config_rejects_zero_counts_by_name(field):
    with pytest.raises(AssertionError, match=field):
        plan.PlanConfig(**{field: 0})


def test_cli_checks_its_options_and_files_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        plan.parse_args(["--help"])
    text = capsys.readouterr().out
    assert all(f"--{f.name}=" in text for f in dataclasses.fields(plan.PlanConfig))
    with pytest.raises(AssertionError, match="no checkpoint matches"):
        plan.parse_args([f"--ckpt={tmp_path}/policy.pt"])
    with pytest.raises(AssertionError, match="usage"):
        plan.parse_args(["--episodes=10"])
    out = subprocess.run([sys.executable, "plan.py", f"--ckpt={tmp_path}/nothing*.pt"], cwd=ROOT, capture_output=True,
                         text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.startswith("plan.py: no checkpoint matches")


@pytest.fixture(scope="module")
def policy(smoke_run):
    return plan.load_policy(smoke_run[0] / "policy.pt")


def observation(policy, n, seed=0):
    obs, _ = sim_env.VecPushEnv(policy.task, n, image_size=policy.image_size).reset(list(range(seed, seed + n)))
    return obs


@pytest.mark.parametrize("args, message", [
    (["--ckpt={run}/vae.pt"], "vae.pt is not a policy checkpoint"), (["--ckpt={run}/demos.npz"], "not a readable"),
    (["--ckpt={run}/policy.pt", "--planning_ckpt={run}/video.pt"], "video.pt is not a policy checkpoint"),
    (["--ckpt={run}/policy.pt", "--collect_rollouts={run}/none/r.npz"], "--collect_rollouts: no folder"),
    (["--ckpt={run}/policy.pt", "--open_loop={run}/none.npz"], "--open_loop: no file"),
    (["--ckpt={run}/policy.pt", "--open_loop={run}/policy.pt"], "policy.pt: not a demo file"),
    (["--ckpt={run}/policy_step*.pt", "--open_loop={run}/demos.npz"], "--open_loop scores one checkpoint"),
    (["--ckpt={run}/policy.pt", "--episodes=2", "--gifs=3"], "gifs 3: one per episode at most"),
    (["--ckpt={run}/policy.pt", "--wm_steps=abc"], "denoising step counts"),
    (["--ckpt={run}/policy.pt", "--episodes=abc"], "--episodes=abc: expected int")])
def test_cli_rejects_wrong_files_and_mistyped_options(smoke_run, args, message):
    with pytest.raises(AssertionError, match=re.escape(message)):
        plan.parse_args([a.format(run=smoke_run[0]) for a in args])


def test_an_episode_file_of_another_size_or_task_is_refused_before_any_work(smoke_run, tmp_path):
    other = tmp_path / "demos16.npz"
    sim_env.collect_demos("push_block", 1, 0, str(other), image_size=16, keep_failures=True)
    expected = "holds task 'push_block' at image_size 16; expected 'push_block' at 32"
    with pytest.raises(AssertionError, match=re.escape(f"--open_loop: {other}: {expected}")):
        plan.parse_args([f"--ckpt={smoke_run[0]}/policy.pt", f"--open_loop={other}"])
    with pytest.raises(AssertionError, match=re.escape(f"--rollouts: {other}: {expected}")):
        train.parse_args(["--preset=smoke", f"--run_dir={tmp_path}", f"--rollouts={other}"])


def test_success_by_start_counts_every_episode_once_and_compares_the_failures_ends_with_their_starts():
    angles, won = [0, 29.9, 30, 89, 90, 180, 180], [False, True, False, False, True, True, False]
    results = [dict(start_angle=a, success=w, start_distance=0.2 + i / 100, final_distance=0.4 + i / 100)
               for i, (a, w) in enumerate(zip(angles, won))]
    out = plan.by_start(results)
    assert [(b["episodes"], b["success_rate"]) for b in out["buckets"]] == [(2, 0.5), (2, 0.0), (3, 2 / 3)]
    assert out["failures"] == 4 and out["failures_median_start_distance"] == pytest.approx(0.225)
    assert out["failures_median_final_distance"] == pytest.approx(0.425)


def test_a_killed_evaluation_says_so_and_keeps_its_finished_batches(smoke_run, tmp_path):
    shutil.copy(smoke_run[0] / "policy.pt", tmp_path)
    proc = subprocess.Popen([sys.executable, "plan.py", f"--ckpt={tmp_path / 'policy.pt'}", "--episodes=50",
                             "--batch=1", "--num_steps=1"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while not list(tmp_path.glob("policy.pt.eval-*.partial")) and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "plan.py: interrupted; what is done is kept" in err, err[-2000:]
    assert list(tmp_path.glob("policy.pt.eval-*.partial"))


def test_best_of_two_returns_documented_shapes_and_keeps_the_base_unless_beaten(policy):
    obs, lay = observation(policy, 3), policy.layout
    cfg = plan.PlanConfig(best_of=2, wm_steps=(1,), value_steps=(1, 2), num_steps=2)
    actions, values, best, x0, _ = plan.plan_best_of_n(policy, policy, obs, cfg, seed=7)
    assert actions.shape == (3, lay.action_chunk, lay.action_dim) and values.shape == (3, 2) and best.shape == (3,)
    assert x0.shape[0] == 3 and x0.shape[2] == lay.num_frames
    assert bool(((values >= 0) & (values <= 1)).all())
    base, _, _ = plan.act(policy, obs, cfg.num_steps, seed=7)  # candidate 0 is the plain policy's sample
    for i in range(3):
        if best[i] == 0:
            torch.testing.assert_close(actions[i], base[i], atol=1e-4, rtol=0)
        else:
            assert values[i, best[i]] > values[i, 0]
    prefer = torch.tensor([0.2, 0.1, 0.3])  # a judge replaces the world model and value; a tie keeps the base
    actions, values, best, _, candidates = plan.plan_best_of_n(
        policy, policy, obs, cfg, seed=7, judge=lambda c: torch.stack([prefer, prefer.flip(0)], 1)[:len(c)])
    assert best.tolist() == [1, 0, 0] and torch.equal(actions, candidates[torch.arange(3), best])
    assert candidates.shape == (3, 2, lay.action_chunk, lay.action_dim)


def test_candidate_distance_is_the_simulators_verdict_and_the_oracle_picks_by_it(policy, smoke_run, tmp_path):
    env = sim_env.VecPushEnv("push_block", 2, image_size=policy.image_size)
    env.reset([5, 6])
    toward = np.repeat(env.block[:, None, None, :2], 16, 2)  # (B, 1, K, A): every target at the block's centre
    candidates = np.concatenate([np.repeat(env.pusher[:, None, None], 16, 2), toward], 1)  # (B, 2, K, A): stay, push
    left = plan.candidate_distance(env, candidates, steps=12)
    assert np.array_equal(left[:, 0], env.goal_distance()) and (left[:, 1] != left[:, 0]).any()  # still: no change
    for k in range(12):
        env.step(toward[:, 0, k])
    assert np.array_equal(left[:, 1], env.goal_distance())
    shutil.copy(smoke_run[0] / "policy.pt", tmp_path)
    gains = plan.evaluate(str(tmp_path / "policy.pt"), episodes=2, best_of=3, oracle=True, num_steps=1)["planning"]
    assert gains["chosen_gain"] == pytest.approx(gains["best_gain"]) and gains["best_gain"] >= 0


@pytest.mark.parametrize("sprime, kind", [(False, "value"), (True, "value_sprime")])
def test_value_queries_use_the_planners_mask(policy, monkeypatch, sprime, kind):
    masks, real = [], plan.diffusion.sample

    def spy(net, x_cond, cond, num_steps, **kw):
        masks.append(cond[0].tolist())
        return real(net, x_cond, cond, num_steps, **kw)

    monkeypatch.setattr(plan.diffusion, "sample", spy)
    cfg = plan.PlanConfig(best_of=2, wm_steps=(1,), value_steps=(1,), num_steps=1)
    plan.plan_best_of_n(policy, dataclasses.replace(policy, value_sprime=sprime), observation(policy, 1), cfg)
    assert masks == [li.condition_frames(policy.layout, k).tolist() for k in ("policy", "world_model", kind)]


def test_sigma_min_reaches_the_action_samples_only(policy, monkeypatch):
    last, real = [], plan.diffusion.sample

    def spy(net, x_cond, cond, num_steps, **kw):
        last.append(kw.get("sigma_min", plan.diffusion.SIGMA_MIN))
        return real(net, x_cond, cond, num_steps, **kw)

    monkeypatch.setattr(plan.diffusion, "sample", spy)
    obs = observation(policy, 2)
    cfg = plan.PlanConfig(best_of=2, wm_steps=(1,), value_steps=(1,), num_steps=2, sigma_min=1.0)
    plan.plan_best_of_n(policy, policy, obs, cfg)
    fine, official = plan.act(policy, obs, 2, sigma_min=1.0)[0], plan.act(policy, obs, 2)[0]
    assert last == [1.0, 4.0, 4.0, 1.0, 4.0]  # candidates, world model, value; then the two plain queries
    assert not torch.equal(fine, official)
    for bad in (0.0, plan.diffusion.SIGMA_MAX):
        with pytest.raises(AssertionError, match="sigma_min"):
            plan.PlanConfig(sigma_min=bad)


def test_each_episode_draws_its_own_noise_whatever_batch_it_is_in(smoke_run, tmp_path, monkeypatch):
    run, noises, real = tmp_path / "run", [], plan.diffusion.sample
    shutil.copytree(smoke_run[0], run)

    def spy(net, x_cond, cond, num_steps, **kw):
        noises.append(kw["noise"].clone())
        return real(net, x_cond, cond, num_steps, **kw)
    monkeypatch.setattr(plan.diffusion, "sample", spy)
    kw = dict(episodes=2, num_steps=1, action_steps=16)
    plan.evaluate(str(run / "policy.pt"), batch=2, **kw)
    together = noises[0]  # (2, C, T, H, W): both episodes' first query
    assert not torch.equal(together[0], together[1]) and not torch.equal(noises[1][0], together[0])  # nor 2nd query
    noises.clear()
    plan.evaluate(str(run / "policy.pt"), batch=1, **kw)
    assert torch.equal(noises[0][0], together[0]) and any(torch.equal(n[0], together[1]) for n in noises[1:])


def test_evaluation_collects_rollouts_that_train_a_value_sprime_planner(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run)
    summary = plan.evaluate(str(run / "policy.pt"), episodes=2, best_of=2, wm_steps=(1,), value_steps=(1,),
                            num_steps=1, gifs=1, collect_rollouts=str(run / "rollouts.npz"))
    assert summary["episodes"] == 2 and summary["best_of"] == 2 and 0 <= summary["success_rate"] <= 1
    gains = summary["planning"]
    assert gains["queries"] >= 2 and gains["best_gain"] >= max(gains["chosen_gain"], 0)
    starts = summary["by_start"]
    assert sum(b["episodes"] for b in starts["buckets"]) == 2 and starts["failures"] == 2 - round(2 * summary[
        "success_rate"])
    lo, hi = summary["ci95"]
    assert 0 <= lo <= summary["success_rate"] <= hi <= 1 and 0 <= summary["mean_max_coverage"] <= 1
    _, floor_cov, _ = sim_env.score_controller("push_block", [100_000, 100_001],
                                               sim_env.random_targets(np.random.default_rng(0)))
    assert summary["random"]["mean_max_coverage"] == pytest.approx(floor_cov.mean())  # the policy's own seeds
    assert f"random targets on the same seeds: {summary['random']['success_rate']:.3f}" in capsys.readouterr().out
    rollouts = sim_env.load_demos(run / "rollouts.npz", task="push_block")
    assert len(rollouts["episode_len"]) == 2 and list(rollouts["seed"]) == [100_000, 100_001]
    gifs = list((run / "gifs").glob("seed100000_*.gif"))
    assert len(gifs) == 1 and Image.open(gifs[0]).n_frames == rollouts["episode_len"][0]

    out = subprocess.run([sys.executable, "train.py", "--preset=smoke", "--stage=policy", f"--run_dir={run}",
                          f"--rollouts={run / 'rollouts.npz'}", f"--init={run / 'policy.pt'}", "--value_sprime=True"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    planner = plan.load_policy(run / "planner.pt")
    assert planner.value_sprime and not plan.load_policy(run / "policy.pt").value_sprime


def test_an_interrupted_evaluation_resumes_from_its_finished_batches(smoke_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run)
    ckpt, kw = str(run / "policy.pt"), dict(episodes=3, batch=1, num_steps=1, action_steps=16)
    straight = plan.evaluate(ckpt, **kw)
    run_batch, calls, kill = plan.run_batch, [], [100_002]

    def killed_once_in_the_third(cfg, p, planner, seeds, *args):
        calls.append(seeds)
        if seeds == kill:
            kill.clear()
            raise RuntimeError("killed")
        return run_batch(cfg, p, planner, seeds, *args)
    monkeypatch.setattr(plan, "run_batch", killed_once_in_the_third)
    with pytest.raises(RuntimeError, match="killed"):
        plan.evaluate(ckpt, **kw)
    assert len(list(run.glob("policy.pt.eval-*.partial"))) == 1  # two batches kept
    calls.clear()
    resumed = plan.evaluate(ckpt, **kw)
    assert calls == [[100_002]]  # only the batch that never finished runs again
    assert {k: resumed[k] for k in ("success_rate", "mean_max_coverage")} == \
        {k: straight[k] for k in ("success_rate", "mean_max_coverage")}
    assert not list(run.glob("policy.pt.eval-*"))  # removed once the evaluation is whole
    plan.evaluate(ckpt, **dict(kw, num_steps=2))
    assert len(calls) == 4  # another setting reuses none of those batches


def test_open_loop_compares_each_state_with_its_own_episodes_next_targets(policy, smoke_run, monkeypatch):
    lens = np.array([12, 5, 20])  # the 5-row episode has no state with 8 real actions ahead
    ep = np.repeat(np.arange(3), lens)
    r = np.arange(lens.sum())
    image = np.zeros((len(r), 8, 8, 3), np.uint8)
    data = {"episode_len": lens, "primary": image, "wrist": image,
            "proprio": np.stack([r, ep, 0 * r, 0 * r], 1).astype(np.float32),  # (R, P): row and episode index
            "action": np.stack([r + 1, ep], 1).astype(np.float32)}  # (R, A)
    data["action"][np.cumsum(lens) - 1] = 1000  # each episode's final row repeats an action: never a target
    # A policy that knows the answer: target j of the state at row r is r + 1 + j, in the state's own episode.
    oracle = lambda p, obs, num_steps, seed, **kw: (torch.from_numpy(  # noqa: E731
        obs["proprio"][:, None, :2] + np.stack([1 + np.arange(16), 0 * np.arange(16)], 1)), None, None)
    monkeypatch.setattr(plan, "act", oracle)
    out = plan.open_loop(policy, data, n=1000, action_steps=8, batch=7)
    assert out["states"] == (12 - 8) + (20 - 8) and out["policy_l1"] == 0.0
    assert out["standing_still_l1"] == pytest.approx(np.mean(1 + np.arange(8)) / 2)  # x off by 1..8, y exact
    # Unbiased but noisy: seed s moves every x target by +0.3 or -0.3, so the error is all spread.
    noisy = lambda p, obs, num_steps, seed, **kw: (oracle(p, obs, num_steps, seed)[0]  # noqa: E731
                                             + torch.tensor([0.3 * (-1) ** seed, 0.0]), None, None)
    monkeypatch.setattr(plan, "act", noisy)
    split = plan.open_loop(policy, data, n=1000, action_steps=8, batch=7, samples=4)
    assert split["samples"] == 4 and split["mean_of_samples_l1"] == pytest.approx(0.0, abs=1e-6)
    assert split["policy_l1"] == pytest.approx(0.15, abs=1e-5) == split["sample_spread_l1"]
    monkeypatch.undo()
    demos = sim_env.load_demos(smoke_run[0] / "demos.npz")
    real = plan.open_loop(policy, demos, n=3, action_steps=2, num_steps=1)
    assert real["states"] == 3 and np.isfinite(real["policy_l1"]) and real["standing_still_l1"] > 0


def test_open_loop_queries_the_value_on_the_real_chunk_and_future_and_ranks_outcomes(policy, monkeypatch):
    lay, stats, lens = policy.layout, policy.stats, np.array([30, 25])  # episode 0 (rows 0-29) succeeds, 1 fails
    r = np.arange(lens.sum())
    image = np.zeros((len(r), policy.image_size, policy.image_size, 3), np.uint8)
    data = {"episode_len": lens, "success": np.array([True, False]), "primary": image, "wrist": image,
            "proprio": np.stack([r, 0 * r], 1).astype(np.float32),  # (R, P): the row index
            "action": np.stack([r + 1, 0 * r], 1).astype(np.float32)}  # (R, A): each row's target is the next row
    last = np.where(r < 30, 29, 54)
    label = lambda row: np.where(row < 30, lay.gamma ** (29 - np.minimum(row + lay.action_chunk, 29)), 0.0)  # noqa
    read = lambda x, frame, name: li.unnormalize(  # noqa: E731
        li.extract(x, frame, lay.proprio_dim), *stats[name])[:, 0].round().long().numpy()

    def fake_sample(value_of):
        def sample(net, x, mask, num_steps, noise, **kw):
            if not torch.equal(mask.cpu(), li.condition_mask(lay, ["value"] * len(x))):
                return x  # act's policy queries, for the actions
            row = read(x, lay.frames("proprio", future=False)[0], "proprio")
            future = read(x, lay.frames("proprio", future=True)[0], "proprio")
            assert (future == np.minimum(row + lay.action_chunk, last[row])).all()  # the real s', a chunk on
            chunk = li.unnormalize(li.read_action(x, lay), *stats["action"])[..., 0]  # (n, K) offsets
            real = np.minimum(row[:, None] + np.arange(lay.action_chunk), last[row][:, None]) + 1 - row[:, None]
            assert np.allclose(chunk.numpy(), real, atol=1e-3)  # the demonstrated chunk, as train.action_chunks
            return li.inject_vectors(x, lay, value=torch.from_numpy(2 * value_of(row) - 1).float())
        return sample

    for value_of, auc in ((label, 1.0), (lambda row: 0.5 + 0 * row, 0.5)):
        monkeypatch.setattr(plan.diffusion, "sample", fake_sample(value_of))
        out = plan.open_loop(policy, data, n=1000, action_steps=8, batch=7)
        rows = np.concatenate([np.arange(30 - 8), 30 + np.arange(25 - 8)])  # the states scored
        assert out["value_l1"] == pytest.approx(np.abs(value_of(rows) - label(rows)).mean(), abs=1e-5)
        assert out["value_auc"] == auc and (out["value_success_states"], out["value_failure_states"]) == (22, 17)


def test_kept_checkpoints_are_compared_in_step_order(smoke_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, ignore=shutil.ignore_patterns("policy*.pt"))
    out = subprocess.run([sys.executable, "train.py", "--preset=smoke", "--stage=policy", f"--run_dir={run}",
                          "--policy_steps=10", "--keep_every=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = plan.checkpoint_paths(str(run / "policy_step*.pt"))
    assert [p.rsplit("_step", 1)[1] for p in paths] == ["2.pt", "4.pt", "6.pt", "8.pt", "10.pt"]  # not "10" < "2"
    kept, final = (torch.load(p, weights_only=True) for p in (paths[-1], run / "policy.pt"))
    assert "optimizer" not in kept and kept["step"] == final["step"] == 10
    assert all(torch.equal(kept["model"][k], v) for k, v in final["model"].items())
    assert not torch.equal(torch.load(paths[0], weights_only=True)["model"]["final_layer.linear.weight"],
                           final["model"]["final_layer.linear.weight"])

    scores = dict(zip(paths, [(0.2, 0.5), (0.6, 0.3), (0.6, 0.4), (0.1, 0.2), (0.3, 0.6)]))  # (success, coverage)
    monkeypatch.setattr(plan, "evaluate", lambda ckpt, **kw: {"success_rate": scores[ckpt][0], "ci95": [0.0, 1.0],
                                                              "mean_max_coverage": scores[ckpt][1]})
    res = plan.evaluate_checkpoints(paths, last=3, episodes=2)
    assert res["best"] == paths[2]  # ties on success are broken by coverage
    assert res["mean_last"] == {"success_rate": pytest.approx(1 / 3), "mean_max_coverage": pytest.approx(0.4)}
    monkeypatch.undo()

    cli = subprocess.run([sys.executable, "plan.py", f"--ckpt={paths[0]},{run / 'policy_step1*.pt'}", "--episodes=1",
                          "--num_steps=1", "--last=1"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert cli.stdout.count("eval push_block: success") == 2 and "mean of the last 1" in cli.stdout
    missing = subprocess.run([sys.executable, "plan.py", f"--ckpt={run / 'nothing_step*.pt'}"], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode != 0 and "no checkpoint matches" in missing.stderr
