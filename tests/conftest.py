"""Shared test set-up: import the flat top-level modules, register the `slow` marker, locate fixtures."""
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
sys.path.insert(0, str(ROOT))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: minutes on 2 CPU cores; run with `-m slow`")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """Run `train.py --preset=smoke` once (a subprocess, as a user would) and share its run folder and output."""
    run_dir = tmp_path_factory.mktemp("smoke") / "run"
    out = subprocess.run([sys.executable, "train.py", "--preset=smoke", f"--run_dir={run_dir}"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"smoke run failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return run_dir, out.stdout
