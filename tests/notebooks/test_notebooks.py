"""The notebooks in notebooks/ run top to bottom: drift_methods on its own, the quickstart against a real server.

Each runs in a kernel of this interpreter (the venv's python, with ipykernel), described by a
kernelspec written to a temp dir, so no kernel installed for the user or the system is used.
The notebooks are stored without outputs; the executed copy is written under the test's
tmp_path, where it can be opened after a failure.
"""

from __future__ import annotations

import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient
from nbformat import NotebookNode

from tests.support.live_server import LiveServer

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL = "driftline-venv"
PLOTLY = "application/vnd.plotly.v1+json"


@pytest.fixture
def kernel_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A kernelspec for sys.executable; IPython's and Jupyter's state files go to tmp_path too."""
    root = tmp_path / "kernels"
    spec = root / KERNEL
    spec.mkdir(parents=True)
    kernel = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "driftline (venv)",
        "language": "python",
    }
    (spec / "kernel.json").write_text(json.dumps(kernel))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    return root


def read(path: Path) -> NotebookNode:
    notebook: NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return notebook


def write(notebook: NotebookNode, path: Path) -> None:
    nbformat.write(notebook, path)  # type: ignore[no-untyped-call]


def execute(name: str, kernel_dir: Path, workdir: Path) -> tuple[NotebookNode, float]:
    """Run a copy of notebooks/<name> in a fresh kernel; return it with its outputs and the seconds taken."""
    notebook = read(NOTEBOOKS / name)
    manager = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = NotebookClient(
        notebook, km=manager, timeout=240, startup_timeout=60, resources={"metadata": {"path": str(workdir)}}
    )
    began = time.monotonic()
    try:
        client.execute()
    finally:
        took = time.monotonic() - began
        if client.kc is not None:
            client.kc.stop_channels()
        if manager.has_kernel:
            manager.shutdown_kernel(now=True)
        write(notebook, workdir / name)
    return notebook, took


def code_cells(notebook: NotebookNode) -> list[NotebookNode]:
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def text_of(cell: NotebookNode) -> str:
    """Everything a code cell printed or displayed as plain text."""
    parts: list[str] = []
    for output in cell.get("outputs", []):
        if output.output_type == "stream":
            parts.append(output.text)
        elif output.output_type in ("execute_result", "display_data"):
            parts.append(output.get("data", {}).get("text/plain", ""))
    return "\n".join(parts)


def count_figures(notebook: NotebookNode) -> int:
    return sum(
        PLOTLY in output.get("data", {})
        for cell in code_cells(notebook)
        for output in cell.get("outputs", [])
    )


def number(pattern: str, text: str) -> int:
    found = re.search(pattern, text)
    assert found is not None, (pattern, text)
    return int(found.group(1))


def errors(notebook: NotebookNode) -> list[Any]:
    return [
        output
        for cell in code_cells(notebook)
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]


@pytest.mark.parametrize("name", ["quickstart.ipynb", "drift_methods.ipynb"])
def test_notebooks_are_stored_without_outputs(name: str) -> None:
    notebook = read(NOTEBOOKS / name)
    nbformat.validate(notebook)
    assert notebook.metadata["kernelspec"]["language"] == "python"
    for cell in code_cells(notebook):
        assert cell.outputs == [] and cell.execution_count is None, cell.source[:80]


@pytest.mark.slow
def test_drift_methods_runs(kernel_dir: Path, tmp_path: Path) -> None:
    notebook, took = execute("drift_methods.ipynb", kernel_dir, tmp_path)
    print(f"drift_methods.ipynb ran in {took:.1f} s")
    assert errors(notebook) == []
    assert count_figures(notebook) >= 6
    everything = "\n".join(text_of(cell) for cell in code_cells(notebook))
    # section 1: the five numeric methods side by side, with drift verdicts
    for method in ("wasserstein", "ks", "psi", "jensen_shannon", "hellinger"):
        assert method in everything
    assert "✔" in everything
    # section 4: Benjamini-Hochberg removes false alarms that raw p-values raise
    raw = number(r"false alarms \(raw p\)\s+(\d+)", everything)
    adjusted = number(r"false alarms \(BH\)\s+(\d+)", everything)
    assert adjusted < raw
    # section 6: Evidently's default choice, one row per case
    choice = text_of(code_cells(notebook)[-1])
    for method in ("ks", "wasserstein", "chi2", "z", "jensen_shannon"):
        assert re.search(rf"\s{method}\s*$", choice, re.MULTILINE), (method, choice)


@pytest.mark.slow
def test_quickstart_runs_against_a_live_server(
    kernel_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with LiveServer() as server:
        monkeypatch.setenv("DRIFTLINE_API_URL", server.url)
        monkeypatch.setenv("DRIFTLINE_API_KEY", server.admin_key)
        try:
            notebook, took = execute("quickstart.ipynb", kernel_dir, tmp_path)
        except Exception as exc:
            raise AssertionError(f"{exc}\n--- server output:\n{server.log_tail()}") from exc
    print(f"quickstart.ipynb ran in {took:.1f} s")
    assert errors(notebook) == []
    assert count_figures(notebook) >= 3
    cells = code_cells(notebook)
    everything = "\n".join(text_of(cell) for cell in cells)
    assert "none dropped" in everything  # every logged prediction reached the server
    assert "errors: none" in everything  # every detector ran
    summary = text_of(cells[-1])
    found = re.search(r"^drifted features: (.+)$", summary, re.MULTILINE)
    assert found is not None, summary
    drifted = [name.strip() for name in found.group(1).split(",")]
    assert "none" not in drifted and "monthly_spend" in drifted, drifted
    # the features that did not change stay under their thresholds
    assert "tenure_months" not in drifted and "autopay" not in drifted, drifted
    assert re.search(r"ROC AUC: reference 0\.\d+, before the drift 0\.\d+, after 0\.\d+", summary), summary
