"""train.py: the whole pipeline as a subprocess, overfitting a few demos, and exact resume after a kill."""
import dataclasses
import pathlib
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


def test_smoke_pipeline_runs_end_to_end(smoke_run):
    run_dir, stdout = smoke_run
    for name in ("demos.npz", "play.npz", "vae.pt", "vae_recon.png", "video.pt", "policy.pt", "demo_latents.pt",
                 "policy_step3.pt", "policy_step5.pt", "policy_avg.pt"):
        assert (run_dir / name).exists(), name
    assert not list(run_dir.glob("v*_step*.pt"))  # only the policy's checkpoints are kept, to be averaged
    assert "[average] the weights of policy_step3.pt, policy_step5.pt" in stdout
    assert "eval push_block: success" in stdout.splitlines()[-1]
    ck = torch.load(run_dir / "policy.pt", weights_only=True)
    assert ck["done"] and ck["step"] == train.TrainConfig.smoke().policy_steps
    assert train.TrainConfig(**ck["train_config"]).run_dir == str(run_dir)  # the config travels with the weights


def test_parse_args_rejects_unknown_and_malformed_options():
    cfg = train.parse_args(["--preset=smoke", "--task=push_t", "--lr=1e-3"])
    assert (cfg.task, cfg.lr, cfg.run_dir) == ("push_t", 1e-3, "runs/smoke_push_t")
    with pytest.raises(AssertionError, match="unknown option"):
        train.parse_args(["--learning_rate=1"])
    with pytest.raises(AssertionError, match="--field=value"):
        train.parse_args(["--task", "push_t"])
    with pytest.raises(AssertionError, match="unknown task"):
        train.parse_args(["--task=push_x"])


@pytest.mark.parametrize("arg, message", [("--batch_size=0", "batch_size"), ("--log_every=0", "log_every"),
                                          ("--vae_batch=3", "even number"), ("--heads=3", "divisible by heads"),
                                          ("--image_size=36", "multiple of 8"), ("--warmup=-1", "warmup"),
                                          ("--keep_every=0", "add --keep_every"),
                                          ("--keep_every=10", "would keep 320 checkpoints of 3200 policy steps"),
                                          ("--demo_margin=-0.01", "demo_margin")])
def test_parse_args_rejects_bad_values_before_any_work(arg, message):
    with pytest.raises(AssertionError, match=message):
        train.parse_args(["--preset=cpu", arg])


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")


@pytest.mark.parametrize("arg, message", [
    ("--n_demos=abc", "--n_demos=abc: expected int"), ("--seed=1.5", "--seed=1.5: expected int"),
    ("--bf16=true", "expected True or False"), ("--vae_dim_mult=abc", "positive integers"),
    ("--init=nothing.pt", "--init: no file nothing.pt"), ("--rollouts=a.npz,b.npz", "--rollouts: no file a.npz"),
    ("--stage=policy", "which is not there: run --stage=video first"),
    pytest.param("--device=cuda", "sees no CUDA device", marks=NO_CUDA)])
def test_parse_args_rejects_mistyped_options_and_missing_files_before_any_work(arg, message, tmp_path):
    with pytest.raises(AssertionError, match=re.escape(message)):
        train.parse_args(["--preset=smoke", f"--run_dir={tmp_path}", arg])
    cfg = train.parse_args(["--lr=1", "--run-dir=123", "--vae_dim_mult=[1, 2, 4]"])
    assert (cfg.lr, type(cfg.lr), cfg.run_dir, cfg.vae_dim_mult) == (1.0, float, "123", (1, 2, 4))


def test_a_damaged_or_wrong_checkpoint_is_named_with_the_fix(smoke_run, tmp_path):
    data = (smoke_run[0] / "vae.pt").read_bytes()
    (tmp_path / "vae.pt").write_bytes(data[:len(data) // 2])  # what a full disk or an interrupted copy leaves
    with pytest.raises(AssertionError, match="vae.pt is not a readable torch file.*delete it and rerun"):
        train.load_file(tmp_path / "vae.pt")
    with pytest.raises(AssertionError, match="holds no DiT"):
        train.parse_args(["--preset=smoke", f"--run_dir={tmp_path}", f"--init={smoke_run[0] / 'vae.pt'}"])


def test_help_lists_every_option_with_the_presets_value_and_its_comment(capsys):
    with pytest.raises(SystemExit) as stop:
        train.parse_args(["--preset=smoke", "--help"])
    assert stop.value.code == 0
    text = capsys.readouterr().out
    assert "smoke preset's values" in text
    assert all(f"--{f.name}=" in text for f in dataclasses.fields(train.TrainConfig))
    assert "  --n_demos=3 " in text and "expert episodes attempted" in text  # the smoke value, not the default 200
    assert "  --task=push_block " in text  # strings as typed on the command line, unquoted


def test_a_bad_option_ends_the_cli_with_its_message_not_a_traceback():
    out = subprocess.run([sys.executable, "train.py", "--batch_size=0"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 1 and not out.stdout
    assert out.stderr.strip() == "train.py: {'batch_size': 0}: these must be >= 1"


def test_a_checkpoint_made_with_other_options_is_reported_when_reused(smoke_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run)
    common = ["--preset=smoke", f"--run_dir={run}", "--device=cpu"]
    train.main(train.parse_args(common + ["--stage=video", "--vae_steps=9", "--video_steps=9"]))
    assert "WARNING" not in capsys.readouterr().out  # more steps continue the same checkpoints: nothing to report
    train.main(train.parse_args(common + ["--stage=policy", "--seed=1", "--init=scratch", "--lr=1e-3"]))
    out = capsys.readouterr().out
    assert f"[vae] WARNING: {run}/vae.pt was made with seed=0, not seed=1" in out  # once, at the VAE
    assert (f"[policy] WARNING: {run}/policy.pt was made with init='video', lr=0.0003, not init='scratch', lr=0.001"
            in out)


def test_learning_rate_warms_up_then_decays_linearly_to_lr_final():
    rates = [train.learning_rate(s, 1000, 2.0, 100, 0.3) for s in range(1000)]
    assert rates[0] == pytest.approx(0.02) and rates[99] == pytest.approx(2.0)  # (s + 1) / warmup
    assert all(a >= b for a, b in zip(rates[99:], rates[100:]))
    assert rates[550] == pytest.approx(2.0 * (1 - 0.7 * 0.5))  # halfway down
    assert train.learning_rate(1000, 1000, 2.0, 100, 0.3) == pytest.approx(0.6)  # final x lr, one step on
    assert train.learning_rate(999, 1000, 2.0, 100, 0.0) == pytest.approx(2.0 / 900)  # --lr_final=0: anneal to 0
    with pytest.raises(AssertionError, match="lr_final"):
        train.parse_args(["--lr_final=1.5"])


def test_lr_final_ends_the_policy_schedule_only(tmp_path, monkeypatch):
    finals = []
    rate = train.learning_rate
    monkeypatch.setattr(train, "learning_rate", lambda *a: finals.append(a[-1]) or rate(*a))
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(tmp_path), lr_final=0.0, keep_every=0,
                              average=0)
    for name in ("vae", "video", "policy", "planner"):
        finals.clear()
        train.train_loop(cfg, name, torch.nn.Linear(2, 1), 3, 1e-3, 4, lambda gen: torch.randn(4, 2, generator=gen),
                         lambda net, x, gen: (net(x).square().mean(), {}), {}, torch.device("cpu"))
        assert finals and set(finals) == {0.3 if name in ("vae", "video") else 0.0}, name  # the bases keep 0.3


def test_logged_losses_are_kept_across_a_resume_and_drawn(tmp_path):
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(tmp_path), log_every=5, ckpt_every=5)
    target = torch.tensor([[2.0], [-3.0]])  # (2, 1): a regression that a Linear fits

    def run(steps):
        train.train_loop(cfg, "video", torch.nn.Linear(2, 1), steps, 0.2, 8,
                         lambda gen: torch.randn(8, 2, generator=gen),
                         lambda net, x, gen: ((net(x) - x @ target).square().mean(), {"half": torch.tensor(0.5)}), {},
                         torch.device("cpu"))
        return torch.load(tmp_path / "video.pt", weights_only=True)["history"]
    first = run(40)
    assert [h["step"] for h in first] == list(range(5, 45, 5)) and first[-1]["loss"] < first[0]["loss"] / 4
    assert first[0]["half"] == pytest.approx(0.5)  # each entry is the mean over its log_every steps
    more = run(60)
    assert more[:8] == first and [h["step"] for h in more[8:]] == [45, 50, 55, 60]  # continued, not restarted
    picture = Image.open(tmp_path / "video_loss.png")
    assert picture.size == (2 * 240, 150)  # one panel per logged quantity: loss and half


def test_an_interrupted_encode_resumes_from_its_finished_batches(smoke_run, tmp_path):
    run_dir, _ = smoke_run
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(run_dir))
    demos, play = train.stage_demos(cfg)
    vae = train.stage_vae(cfg, demos, play, torch.device("cpu"))
    layout = li.Layout.toy(action_chunk=cfg.action_chunk, proprio_dim=cfg.proprio_dim)
    rows, fut = (x[:7] for x in train.episode_index(demos, layout.action_chunk)[:2])
    straight = train.encode_pseudo_videos(vae, layout, demos, rows, fut, torch.device("cpu"), batch=2)
    encode, calls = vae.encode, []

    def killed_in_the_third_batch(video):
        calls.append(video.shape[0])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return encode(video)
    vae.encode = killed_in_the_third_batch
    path = tmp_path / "latents.pt"
    with pytest.raises(KeyboardInterrupt):
        train.cached(str(path), lambda partial: train.encode_pseudo_videos(vae, layout, demos, rows, fut,
                                                                          torch.device("cpu"), 2, partial))
    assert len(torch.load(f"{path}.partial", weights_only=True)) == 2 and not path.exists()
    calls.clear()
    resumed = train.cached(str(path), lambda partial: train.encode_pseudo_videos(vae, layout, demos, rows, fut,
                                                                                torch.device("cpu"), 2, partial))
    assert calls == [2, 1]  # the third batch again and the ragged last one: the first two were kept
    assert torch.equal(resumed, straight) and not list(tmp_path.glob("*.partial"))


def test_episode_index_pads_chunks_and_labels_values():
    data = {"episode_len": [4, 3], "success": [True, False]}  # rows 0-3 and 4-6; rows 3 and 6 are final frames
    rows, fut, chunk_rows, to_go, success = train.episode_index(data, chunk=2)
    assert rows.tolist() == [0, 1, 2, 4, 5]
    assert fut.tolist() == [2, 3, 3, 6, 6]
    assert chunk_rows.tolist() == [[0, 1], [1, 2], [2, 3], [4, 5], [5, 6]]
    assert to_go.tolist() == [1, 0, 0, 0, 0] and success.tolist() == [True] * 3 + [False] * 2


def test_clip_windows_stay_inside_one_episode():
    assert train.clip_starts([5, 2, 4], 4).tolist() == [0, 1, 7]  # rows 0-4, 5-6 (too short), 7-10
    assert train.clip_starts([3], 4).tolist() == []


def test_vae_ends_on_clips_as_long_as_the_pseudo_videos(smoke_run, tmp_path, monkeypatch):
    run_dir, _ = smoke_run
    for name in ("demos.npz", "play.npz"):
        shutil.copy(run_dir / name, tmp_path / name)
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(tmp_path), vae_steps=3, vae_long_steps=2)
    demos, play = train.stage_demos(cfg)
    seen, forward = [], train.WanVAE.forward
    monkeypatch.setattr(train.WanVAE, "forward", lambda self, video, gen=None: seen.append(
        (video.shape[0], video.shape[2])) or forward(self, video, gen))  # (clips, raw frames) of each training step
    train.stage_vae(cfg, demos, play, torch.device("cpu"))
    F = 1 + li.FRAMES_PER_LATENT * (li.Layout.toy().num_frames - 1)  # 33
    assert seen == [(cfg.vae_batch, 9)] * 3 + [(cfg.vae_batch // 2, F)] * 2
    ck = torch.load(tmp_path / "vae.pt", weights_only=True)
    assert ck["step"] == 5 and ck["done"]


def test_pseudo_videos_are_encoded_each_with_its_own_frames(smoke_run):
    run_dir, _ = smoke_run
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(run_dir))
    demos, play = train.stage_demos(cfg)
    vae = train.stage_vae(cfg, demos, play, torch.device("cpu"))
    layout = li.Layout.toy(action_chunk=cfg.action_chunk, proprio_dim=cfg.proprio_dim)
    rows, fut = train.episode_index(demos, layout.action_chunk)[:2]
    rows, fut = rows[:5], fut[:5]
    lat = train.encode_pseudo_videos(vae, layout, demos, rows, fut, torch.device("cpu"), batch=2)  # (5, C, T, H, W)
    assert lat.shape[:3] == (5, vae.cfg.z_dim, layout.num_frames)
    for i in (0, 3, 4):  # the first batch, the middle one and the ragged last one
        r, f = rows[i:i + 1].numpy(), fut[i:i + 1].numpy()
        images = {"wrist": demos["wrist"][r], "primary": demos["primary"][r],
                  "future_wrist": demos["wrist"][f], "future_primary": demos["primary"][f]}
        alone = vae.encode(li.raw_frames(layout, {k: torch.from_numpy(v) for k, v in images.items()}))
        assert torch.allclose(lat[i].float(), alone[0], atol=1e-2), i
    assert not torch.allclose(lat[0].float(), lat[4].float(), atol=1e-2)  # the check above can tell samples apart


class _Stub:  # a VAE that passes frames through (a perfect one) but decodes the `grey` views' frames to grey
    def __init__(self, grey):
        layout = li.Layout.toy()
        self.frames = [f for s in grey for f in range(li.FRAMES_PER_LATENT * (layout.index(s) - 1) + 1,
                                                      li.FRAMES_PER_LATENT * layout.index(s) + 1)]

    def encode(self, video):
        return video

    def decode(self, z):
        z = z.clone()
        z[:, :, self.frames] = 0
        return z


@pytest.mark.parametrize("grey,warns", [((), False), (("primary",), False), (("wrist", "primary"), True)])
def test_reconstruction_picture_warns_only_when_every_view_is_blind(tmp_path, capsys, grey, warns):
    images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    train.save_reconstructions(_Stub(grey), {"wrist": images, "primary": images[::-1]}, str(tmp_path / "r.png"),
                               torch.device("cpu"))
    out = capsys.readouterr().out
    assert (tmp_path / "r.png").exists() and ("WARNING" in out) == warns
    assert ("primary 1." in out) == bool(grey) and ("wrist 0.00" in out) == ("wrist" not in grey)
    train.save_reconstructions(_Stub(grey), {"wrist": images, "primary": images[::-1]}, str(tmp_path / "r.png"),
                               torch.device("cpu"), short=True)  # the smoke preset: blind is expected, no alarm
    out = capsys.readouterr().out
    assert "WARNING" not in out and ("as expected" in out) == warns


def test_relative_action_chunks_come_back_as_the_demonstrated_targets(smoke_run):
    run_dir, _ = smoke_run
    policy = plan.load_policy(run_dir / "policy.pt")
    demos = sim_env.load_demos(run_dir / "demos.npz")
    assert policy.relative_actions  # the default: what train.py wrote is what plan.py undoes
    rows, _, chunk_rows, _, _ = train.episode_index(demos, policy.layout.action_chunk)
    offsets = train.action_chunks(demos, rows, chunk_rows, relative=True)  # (N, K, A)
    targets = torch.from_numpy(demos["action"])[chunk_rows]
    assert not torch.allclose(offsets, targets)
    x0 = li.inject_vectors(torch.zeros(len(rows), 16, policy.layout.num_frames, 4, 4), policy.layout,
                           action=li.normalize(offsets, *policy.stats["action"]))
    obs = {"proprio": demos["proprio"][rows.numpy()]}
    assert torch.allclose(plan.env_actions(policy, x0, obs), targets, atol=1e-5)
    twice = plan.env_actions(policy, x0.repeat_interleave(2, 0), obs, repeat=2)  # best-of-N: N candidates per row
    assert torch.allclose(twice, targets.repeat_interleave(2, 0), atol=1e-5)


def test_default_proprio_leaves_the_policy_blind_to_velocity(smoke_run, tmp_path):
    src, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("policy*.pt"))
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(run), proprio_dim=4)
    demos, play = train.stage_demos(cfg)
    vae = train.stage_vae(cfg, demos, play, torch.device("cpu"))
    train.stage_policy(cfg, vae, demos, train.task_embedding(cfg.task), torch.device("cpu"))
    rows = list(range(4))
    obs = {k: demos[k][rows] for k in ("primary", "wrist", "proprio")}
    moving = dict(obs, proprio=obs["proprio"] + [[0, 0, 0.5, -0.5]] * len(rows))  # same place, other velocity
    for p, blind in ((plan.load_policy(src / "policy.pt"), True), (plan.load_policy(run / "policy.pt"), False)):
        assert p.layout.proprio_dim == (2 if blind else 4)
        same = torch.equal(plan.act(p, obs, num_steps=2)[0], plan.act(p, moving, num_steps=2)[0])
        assert same == blind


def action_error(policy, demos, n=24):
    """Mean |predicted - demonstrated| action chunk, in normalised units, over the first n demo rows."""
    rows, _, chunk_rows, _, _ = train.episode_index(demos, policy.layout.action_chunk)
    rows, chunk_rows = rows[:n].numpy(), chunk_rows[:n]
    obs = {k: demos[k][rows] for k in ("primary", "wrist", "proprio")}
    actions, _, _ = plan.act(policy, obs, num_steps=5, seed=0)
    lo, hi = policy.stats["action"]
    target = torch.from_numpy(demos["action"])[chunk_rows]  # (n, K, A)
    return (li.normalize(actions, lo, hi) - li.normalize(target, lo, hi)).abs().mean().item()


def test_policy_stage_overfits_one_demo(smoke_run, tmp_path):
    src, _ = smoke_run
    run = tmp_path / "run"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("policy*.pt", "video.pt", "demo_latents.pt"))
    d = sim_env.load_demos(run / "demos.npz")
    first = slice(0, int(d["episode_len"][0]))
    sim_env.save_episodes(run / "demos.npz", [dict({k: d[k][first] for k in sim_env.ROW_KEYS}, success=True,
                                                   seed=int(d["seed"][0]))], "push_block", int(d["image_size"]))
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(run), init="scratch", width=64, blocks=2,
                              policy_steps=600, batch_size=16, lr=1e-3, demo_prob=1.0, log_every=1000,
                              ckpt_every=1000, keep_every=0, average=0)
    torch.manual_seed(0)
    demos, play = train.stage_demos(cfg)
    vae = train.stage_vae(cfg, demos, play, torch.device("cpu"))
    train.stage_policy(cfg, vae, demos, train.task_embedding(cfg.task), torch.device("cpu"))
    trained = plan.load_policy(run / "policy.pt")
    before = dataclasses.replace(trained, dit=train_fresh_dit(trained))
    err_before, err_after = action_error(before, demos), action_error(trained, demos)
    assert err_after < 0.5 * err_before, (err_before, err_after)  # measured: 0.74 -> 0.25


def train_fresh_dit(policy):
    torch.manual_seed(0)
    return type(policy.dit)(policy.dit.cfg).eval()


def test_killed_run_resumes_with_the_same_state(smoke_run, tmp_path):
    src, _ = smoke_run
    cmd = [sys.executable, "train.py", "--preset=smoke", "--stage=policy", "--policy_steps=400", "--ckpt_every=10",
           "--log_every=1000", "--keep_every=0"]
    runs = {}
    for name in ("straight", "killed"):
        runs[name] = tmp_path / name
        shutil.copytree(src, runs[name], ignore=shutil.ignore_patterns("policy*.pt"))
    straight = subprocess.run(cmd + [f"--run_dir={runs['straight']}"], cwd=ROOT, capture_output=True, text=True)
    assert straight.returncode == 0, straight.stderr[-2000:]

    proc = subprocess.Popen(cmd + [f"--run_dir={runs['killed']}"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (runs["killed"] / "policy.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, f"expected an interrupted run (exit 130), got {proc.returncode}\n{err[-2000:]}"
    saved = torch.load(runs["killed"] / "policy.pt", weights_only=True)["step"]
    assert 0 < saved < 400

    resumed = subprocess.run(cmd + [f"--run_dir={runs['killed']}"], cwd=ROOT, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"[policy] resumed from step {saved}" in resumed.stdout
    a, b = (torch.load(runs[n] / "policy.pt", weights_only=True) for n in ("straight", "killed"))
    assert a["step"] == b["step"] == 400
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert all(torch.equal(x, y) for x, y in zip(a["rng"], b["rng"]))
    for k, v in a["optimizer"]["state"].items():  # the AdamW moments came back too, not just the weights
        assert all(torch.equal(v[m], b["optimizer"]["state"][k][m]) for m in v), k


def test_eval_scores_the_average_of_the_last_kept_weights(smoke_run, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(smoke_run[0], run, ignore=shutil.ignore_patterns("policy_*.pt"))
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(run), stage="eval", average=2)
    with pytest.raises(AssertionError, match="keep_every"):
        train.main(cfg)
    final = torch.load(run / "policy.pt", weights_only=True)
    weights = {k: v for k, v in final.items() if k not in ("optimizer", "rng")}
    for step in (2, 4, 10):  # step order, not name order ("10" < "2"), decides which are the last two
        torch.save(dict(weights, step=step, model={k: v + step for k, v in final["model"].items()}),
                   run / f"policy_step{step}.pt")
    calls = []
    monkeypatch.setattr(plan, "evaluate", lambda ckpt, episodes, **kw: calls.append((pathlib.Path(ckpt).name, kw)))
    train.main(cfg)
    assert calls == [("policy_avg.pt", {"num_steps": cfg.eval_steps, "device": torch.device("cpu")})]
    avg = torch.load(run / "policy_avg.pt", weights_only=True)
    assert avg["averaged"] == ["policy_step4.pt", "policy_step10.pt"] and avg["step"] == 10
    assert all(torch.allclose(avg["model"][k], v + 7) for k, v in final["model"].items())
    assert plan.load_policy(run / "policy_avg.pt").layout == plan.load_policy(run / "policy.pt").layout


def test_demo_file_holds_the_expert_successes(smoke_run):
    run_dir, _ = smoke_run
    demos = sim_env.load_demos(run_dir / "demos.npz", task="push_block")
    assert demos["success"].all() and len(demos["episode_len"]) == train.TrainConfig.smoke().n_demos


def test_vae_flag_loads_a_released_tokenizer_instead_of_training(tmp_path, monkeypatch):
    from vae import VAEConfig, WanVAE
    torch.manual_seed(0)
    official = WanVAE(VAEConfig.tiny()).state_dict()
    torch.save(official, tmp_path / "tokenizer.pth")
    monkeypatch.setattr(train.VAEConfig, "wan21", VAEConfig.tiny)  # the real one is 127M parameters
    cfg = dataclasses.replace(train.TrainConfig.smoke(), run_dir=str(tmp_path), vae=str(tmp_path / "tokenizer.pth"))
    vae = train.stage_vae(cfg, None, None, torch.device("cpu"))
    assert all(torch.equal(v, official[k]) for k, v in vae.state_dict().items())
    assert not (tmp_path / "vae.pt").exists()  # nothing was trained
