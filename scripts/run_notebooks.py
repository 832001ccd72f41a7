"""Execute the notebooks (notebooks/*.ipynb) top to bottom, each in a fresh kernel, into runs/notebooks/.

Each notebook runs with runs/notebooks/ as its working folder (files it writes land there) and its
executed copy, outputs included, is written there as well; the run time of each is printed with the CPU
time its kernel used (user + system, all threads: on a loaded machine it says what the notebook costs,
where the wall time also counts the waits for a core), and a notebook whose cell raises stops the run
with that cell's error. The kernel is "python3" started
with the Python that runs this script (the project's .venv under `make notebooks`).

    python scripts/run_notebooks.py                      # all of them
    python scripts/run_notebooks.py 01 02                # the notebooks whose names start so
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError
from jupyter_client.kernelspec import KernelSpecManager

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
OUT = ROOT / "runs" / "notebooks"


def check_kernel() -> None:
    """The python3 kernel must start this interpreter (jupyter_client maps argv[0] "python" to it)."""
    spec = KernelSpecManager().get_kernel_spec("python3")
    program = spec.argv[0]
    if program not in ("python", "python3") and Path(program).resolve() != Path(sys.executable).resolve():
        raise SystemExit(f"the python3 kernel starts {program}, not {sys.executable}; register this one with "
                         f"`{sys.executable} -m ipykernel install --sys-prefix`")


def children_cpu_seconds() -> float:
    """User + system CPU time of this process's finished children (the kernels, once shut down)."""
    try:
        import resource
    except ImportError:  # not on this platform (Windows)
        return float("nan")
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run(path: Path, out_dir: Path, cell_timeout: int) -> tuple[float, float]:
    """(wall seconds, kernel CPU seconds) of executing `path` into out_dir."""
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, kernel_name="python3", timeout=cell_timeout,
                            resources={"metadata": {"path": str(out_dir)}})
    start, cpu = time.perf_counter(), children_cpu_seconds()
    try:
        client.execute()  # starts a kernel, runs every cell, shuts the kernel down (and reaps it)
    finally:
        nbformat.write(nb, out_dir / path.name)  # the executed copy, also when a cell failed
    return time.perf_counter() - start, children_cpu_seconds() - cpu


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="run only the notebooks whose file names start with these")
    parser.add_argument("--notebooks", type=Path, default=NOTEBOOKS, help="folder of the notebooks (default notebooks/)")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the executed copies (default runs/notebooks)")
    parser.add_argument("--cell-timeout", type=int, default=900, help="seconds one cell may run (default 900)")
    args = parser.parse_args(argv)
    paths = sorted(args.notebooks.glob("*.ipynb"))
    if not paths:
        print(f"no notebook (.ipynb) in {args.notebooks}", file=sys.stderr)
        return 2
    if args.names:
        paths = [p for p in paths if any(p.name.startswith(n) for n in args.names)]
        if not paths:
            print(f"no notebook in {args.notebooks} starts with {' or '.join(args.names)}", file=sys.stderr)
            return 2
    check_kernel()
    args.out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # the kernels inherit it: see the Makefile's demo
    times, failed = [], None
    for path in paths:
        print(f"{path.name} ...", flush=True)
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        try:
            seconds, cpu = run(path, args.out, args.cell_timeout)
        except CellExecutionError as error:
            failed = path.name
            print(f"{path.name} FAILED (executed copy in {args.out / path.name}):\n{error}", file=sys.stderr)
            break
        load = (load + (os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"))) / 2
        times.append((path.name, seconds, cpu, load))
        print(f"{path.name}: {seconds:.0f} s, kernel CPU {cpu:.0f} s, load average {load:.1f}", flush=True)
    print(f"\nrun times ({os.cpu_count()} cores; load average: the mean of the 1-minute figure at start and end):")
    for name, seconds, cpu, load in times:
        minutes, rest = divmod(round(seconds), 60)
        print(f"  {name:<40} {minutes} min {rest:02d} s   kernel CPU {cpu:6.0f} s   load {load:4.1f}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
