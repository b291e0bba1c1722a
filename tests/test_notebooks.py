"""The notebooks in notebooks/ run top to bottom, and are committed as they ran.

Each notebook checks its own results with ``assert`` (the lecture's numbers, im2col against the
direct loop, backward against finite differences, accuracy after training), so executing it is
the test: a failing assertion is a failing cell. Every notebook runs in a fresh kernel from
notebooks/, as a reader would run it; the executed copy is discarded (the committed one, with
its plots, is not rewritten by the tests).
"""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
EXPECTED = [
    "01_convolution_by_hand.ipynb",
    "02_backprop.ipynb",
    "03_lenet_digits.ipynb",
    "04_conv1d_and_conv3d.ipynb",
    "05_performance.ipynb",
]
CELL_TIMEOUT_S = 300  # one cell; a whole notebook takes well under a minute on 2 cores

# numbaconv's private names: a module or attribute starting with "_" reached from numbaconv
PRIVATE = [
    re.compile(r"\bnumbaconv(\.\w+)*\._\w"),                  # numbaconv._geometry, numbaconv.kernels._x
    re.compile(r"\bfrom\s+numbaconv(\.\w+)*\s+import\s+[^\n#]*\b_\w"),  # from numbaconv import _threads
    re.compile(r"\bnc(\.\w+)*\._\w"),                          # nc._device (the notebooks' alias)
]


def _read(path):
    return nbformat.read(path, as_version=4)


def _code(nb):
    return [cell for cell in nb.cells if cell.cell_type == "code"]


def test_the_course_notebooks_are_there():
    missing = set(EXPECTED) - {p.name for p in NOTEBOOKS}
    assert not missing, f"missing from notebooks/: {sorted(missing)}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_uses_only_the_public_api(path):
    for i, cell in enumerate(_code(_read(path))):
        for pattern in PRIVATE:
            found = pattern.search(cell.source)
            assert found is None, f"{path.name}, code cell {i}: private name {found.group(0)!r}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_with_its_outputs(path):
    cells = _code(_read(path))
    counts = [cell.execution_count for cell in cells]
    assert None not in counts, f"{path.name}: cells {[i for i, c in enumerate(counts) if c is None]} were not run"
    assert counts == list(range(1, len(cells) + 1)), f"{path.name}: not run top to bottom in one kernel: {counts}"
    outputs = [out for cell in cells for out in cell.outputs]
    assert not [out for out in outputs if out.output_type == "error"], f"{path.name}: committed with an error"
    assert any("image/png" in out.get("data", {}) for out in outputs), f"{path.name}: no plot in the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path):
    nb = _read(path)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, on any error
