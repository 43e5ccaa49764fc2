"""Shared fixtures. Every test runs on CPU against data under a temporary NANO4M_DATA, so tests never touch
data/ in the checkout; the offline Shakespeare rebuild is prepared once per session."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data'))
    os.environ['NANO4M_DATA'] = root
    import data
    data.DATA_ROOT = root
    return root


def run(args, env_extra=None, check=True, timeout=600):
    """Run one of the repository's scripts as a user would, from the repository root, on one thread each
    (tests run several processes at once on small machines)."""
    env = {**os.environ, 'PYTHONUNBUFFERED': '1', 'WANDB_MODE': 'disabled', 'OMP_NUM_THREADS': '1', **(env_extra or {})}
    env = {k: v for k, v in env.items() if v is not None}  # None in env_extra removes a variable
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope='session')
def shakespeare_char(data_root):
    """data/shakespeare_char built the way a user without internet gets it."""
    result = run([sys.executable, 'prepare.py', 'shakespeare_char'], env_extra={'NANO4M_DATA': data_root})
    return result.stdout
