"""The notebooks: committed clean (no outputs, no execution counts, valid nbformat, equal to their
sources) and, in the slow suite, executed top to bottom by scripts/run_notebooks.py."""

import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
sys.path.insert(0, str(ROOT / "scripts"))
import build_notebooks  # noqa: E402


def test_there_are_notebooks_and_each_has_a_source():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb file"
    sources = {p.stem for p in (ROOT / "notebooks" / "source").glob("*.py")}
    assert {p.stem for p in NOTEBOOKS} == sources


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_committed_notebook_is_valid_and_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and any(c.cell_type == "markdown" for c in nb.cells)
    for cell in code:
        assert cell.outputs == [], f"{path.name}: a code cell has outputs"
        assert cell.execution_count is None, f"{path.name}: a code cell has an execution count"
    assert path.read_text(encoding="utf-8") == build_notebooks.render(ROOT / "notebooks" / "source" / f"{path.stem}.py"), \
        f"{path.name} differs from its source: run python scripts/build_notebooks.py"


def test_build_rejects_a_source_with_text_before_the_first_cell(tmp_path):
    source = tmp_path / "99_bad.py"
    source.write_text("x = 1\n# %%\ny = 2\n")
    with pytest.raises(ValueError, match="before the first cell"):
        build_notebooks.build(source)


def test_build_reads_markdown_and_code_cells(tmp_path):
    source = tmp_path / "99_ok.py"
    source.write_text("# %% [markdown]\n# # Title\n#\n# Words.\n\n# %%\nx = 1\nprint(x)\n")
    nb = build_notebooks.build(source)
    assert [c.cell_type for c in nb.cells] == ["markdown", "code"]
    assert nb.cells[0].source == "# Title\n\nWords."
    assert nb.cells[1].source == "x = 1\nprint(x)"


@pytest.mark.slow
def test_notebooks_execute(tmp_path):
    """What `make notebooks` runs: each notebook in a fresh kernel; executed copies in tmp_path."""
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for path in NOTEBOOKS:
        executed = nbformat.read(tmp_path / path.name, as_version=4)
        assert all(c.execution_count for c in executed.cells if c.cell_type == "code" and c.source.strip())
        for cell in executed.cells:  # a figure shown is a figure in the output (not lost to a file-only backend)
            if cell.cell_type == "code" and "plt.show()" in cell.source:
                assert any("image/png" in o.get("data", {}) for o in cell.outputs), \
                    f"{path.name}: a cell calls plt.show() but its output holds no image:\n{cell.source[:200]}"


def _write(folder, name, *cells):
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": dict(build_notebooks.KERNEL)})
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, folder / name)


def test_runner_executes_in_order_and_stops_at_a_failing_cell(tmp_path):
    """A notebook that runs gets its outputs in the executed copy, with the run's folder as its working
    folder; one whose cell raises makes the runner exit 1, naming the error, and the later notebooks
    do not run."""
    source, out = tmp_path / "nb", tmp_path / "out"
    source.mkdir()
    _write(source, "a.ipynb", "import os\nopen('made_by_a.txt', 'w').write('x')\nprint(6 * 7)")
    _write(source, "b.ipynb", "raise RuntimeError('cell two broke')")
    _write(source, "c.ipynb", "print('never')")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--notebooks", str(source),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "b.ipynb FAILED" in done.stderr and "cell two broke" in done.stderr
    executed = nbformat.read(out / "a.ipynb", as_version=4)
    assert executed.cells[0].outputs[0]["text"] == "42\n" and executed.cells[0].execution_count == 1
    assert (out / "made_by_a.txt").exists() and (out / "b.ipynb").exists() and not (out / "c.ipynb").exists()


def test_runner_names_an_empty_folder(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--notebooks", str(tmp_path)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no notebook" in done.stderr


def test_runner_reports_the_kernels_cpu_time(tmp_path):
    """The CPU time printed is the kernel's own: a cell that spins for 1.5 s of CPU shows at least that."""
    source, out = tmp_path / "nb", tmp_path / "out"
    source.mkdir()
    _write(source, "spin.ipynb", "import time\nt = time.process_time()\nwhile time.process_time() - t < 1.5:\n    pass")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "run_notebooks.py"), "--notebooks", str(source),
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    cpu = float(done.stdout.split("spin.ipynb: ")[1].split("kernel CPU ")[1].split(" s")[0])
    assert cpu >= 1.5, done.stdout
