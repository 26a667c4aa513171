"""torchrun on 2 CPU processes (gloo): DDP ranks end bit-identical; FSDP2 saves a full checkpoint that resumes."""
import re
import shutil
import subprocess
import sys

import pytest
import torch

import plan
from conftest import ROOT

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
            "--preset=smoke", "--stage=policy"]


def torchrun(args, run_dir):
    out = subprocess.run(TORCHRUN + args + [f"--run_dir={run_dir}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, f"torchrun failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout


@pytest.mark.slow
def test_ddp_ranks_end_with_identical_weights(smoke_run, tmp_path):
    src, _ = smoke_run
    run = tmp_path / "ddp"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("policy*.pt"))
    stdout = torchrun(["--policy_steps=20", "--grad_accum=2"], run)
    digests = re.findall(r"\[policy\] rank (\d): weights identical on all 2 ranks \((\w+)\)", stdout)
    assert sorted(r for r, _ in digests) == ["0", "1"] and len({d for _, d in digests}) == 1, stdout[-2000:]
    ck = torch.load(run / "policy.pt", weights_only=True)
    assert ck["step"] == 20 and len(ck["rng"]) == 2
    assert not torch.equal(ck["rng"][0], ck["rng"][1])  # each rank drew its own batches


@pytest.mark.slow
def test_fsdp2_checkpoint_is_full_and_resumes(smoke_run, tmp_path):
    src, _ = smoke_run
    run = tmp_path / "fsdp"
    shutil.copytree(src, run, ignore=shutil.ignore_patterns("policy*.pt"))
    torchrun(["--policy_steps=6", "--fsdp=True"], run)
    stdout = torchrun(["--policy_steps=10", "--fsdp=True"], run)
    assert "[policy] resumed from step 6" in stdout
    ck = torch.load(run / "policy.pt", weights_only=True)
    assert ck["step"] == 10 and all(type(v) is torch.Tensor for v in ck["model"].values())  # no DTensor shards
    assert plan.load_policy(run / "policy.pt").dit.cfg.num_blocks == 1  # a plain single-process checkpoint
