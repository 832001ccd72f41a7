"""A wheel, not the source checkout: `pip wheel .` holds the shipped dialogues, and an install of it
in a fresh venv runs `gencycle prompt --index 0` on them from a folder outside the repository.

The fresh venv installs the wheel alone (--no-deps); its dependencies (torch, ...) come from this
venv's site-packages through a .pth file that names that folder as a plain path, so the editable
install of the checkout there is not activated: `import gencycle` must find the wheel's copy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train.jsonl", "validation.jsonl", "test.jsonl")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "--disable-pip-version-check", "-w", str(out), str(ROOT)], check=True, timeout=300,
                   cwd=out)
    (built,) = out.glob("gencycle-*.whl")
    return built


@pytest.mark.slow
def test_wheel_holds_the_shipped_dialogues(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for split in SPLITS + ("README.md",):
        assert f"gencycle/data/chitchat-dialogsum/{split}" in names, split


@pytest.mark.slow
def test_installed_wheel_prompts_on_the_shipped_data(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # a path, not a site dir
    subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", "--disable-pip-version-check",
                    str(wheel)], check=True, timeout=300)
    work = tmp_path / "elsewhere"  # no source tree here or above
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    where = subprocess.run([str(python), "-c", "import gencycle, gencycle.data as d; print(gencycle.__file__); "
                            "print(d.SHIPPED_DIR)"], capture_output=True, text=True, check=True, cwd=work, env=env)
    module, shipped = where.stdout.split()
    assert Path(module).is_relative_to(env_dir) and Path(shipped).is_relative_to(env_dir), where.stdout
    run = subprocess.run([str(bin_dir / "gencycle"), "prompt", "--index", "0", "--max-new-tokens", "16"],
                         capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "===== human reference" in run.stdout and "Traceback" not in run.stderr
    from gencycle.data import load_shipped
    assert run.stdout.rstrip().endswith(load_shipped("test")[0].summary)
