"""Every notebook runs top to bottom without an error, at the small sizes of ``TFSCAN_QUICK=1``.

The notebooks are committed with the outputs of a real run (their plots show on the
repository page); the test executes a copy (nbclient, python3 kernel) with
``PYTHONPATH`` set to this checkout, so the kernel imports this tfscan. The notebooks
assert their results against TensorFlow Probability and JAX, so a wrong value fails here.
"""

from __future__ import annotations

import os
import pathlib
import re
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

ROOT = pathlib.Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def test_the_notebooks_are_numbered_and_listed_in_the_readme():
    assert NOTEBOOKS[:5] == ["01_scan_basics.ipynb", "02_kalman_filter.ipynb", "03_hmm.ipynb",
                             "04_keras_rnn.ipynb", "05_tpu_colab.ipynb"], NOTEBOOKS
    readme = (ROOT / "README.md").read_text()
    for name in NOTEBOOKS:
        assert f"notebooks/{name}" in readme, f"{name} is not listed in the README"


def test_repository_url_is_defined_once():
    """The README's REPO_URL builds every Colab link; notebook 5 and the install cells use it."""
    readme = (ROOT / "README.md").read_text()
    repo_url = re.search(r"<!-- REPO_URL = (https://github\.com/[\w.-]+/[\w.-]+)", readme).group(1)
    repo = repo_url.removeprefix("https://github.com/")
    colab = re.findall(r"https://colab\.research\.google\.com/github/[^\s)\]]+", readme)
    assert sorted(colab) == [f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{n}"
                             for n in NOTEBOOKS]
    for name in NOTEBOOKS:
        source = "\n".join(c.source for c in nbformat.read(ROOT / "notebooks" / name, as_version=4).cells)
        for url in re.findall(r"(?:git\+|REPO_URL = \")(https://github\.com/[\w.-]+/[\w.-]+)", source):
            assert url == repo_url, f"{name} installs from {url}, the README says {repo_url}"
    assert f'REPO_URL = "{repo_url}"' in (ROOT / "notebooks" / "05_tpu_colab.ipynb").read_text().replace('\\"', '"')


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_with_outputs(name):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: run every cell before committing"
    errors = [o for c in code for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors, f"{name} is stored with an error output"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    # The kernel inherits the environment: small sizes, this checkout's tfscan, quiet TF,
    # Keras on TensorFlow, JAX on the CPU.
    monkeypatch.setenv("TFSCAN_QUICK", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("KERAS_BACKEND", "tensorflow")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    start = time.perf_counter()
    client.execute()  # raises CellExecutionError on the first failing cell
    elapsed = time.perf_counter() - start
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    print(f"{name}: {elapsed:.1f} s")
