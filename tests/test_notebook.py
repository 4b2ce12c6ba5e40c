"""Tests that execute notebooks/01_explore.ipynb with nbclient against the shared sample knowledge base.

The notebook's question cell carries the tag ``llm``. The full run (marked ``llm``) executes
every cell. The other run leaves that cell out, so the rest of the notebook is checked where
the local LLM is not installed.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient

from expertrag.rag.answerer import NOT_FOUND_ANSWER

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "01_explore.ipynb"
KERNEL_NAME = "python3"
LLM_TAG = "llm"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The sample's neighborhood picture measured 71 KB, and an empty figure with only a title 7.6 KB
# (12 x 9 inches at 100 dpi).
MIN_PNG_BYTES = 20_000
# Seconds one cell may run, generous because the question cell loads the GGUF model and generates on CPU.
CELL_TIMEOUT_S = 900


def execute_notebook(kb_path: Path, out_png: Path, work_dir: Path, monkeypatch: pytest.MonkeyPatch, skip_tag: str | None) -> nbformat.NotebookNode:
    """Execute the notebook in a ``python3`` kernel, leaving out cells tagged ``skip_tag``, and return it with its outputs."""
    try:
        KernelSpecManager().get_kernel_spec(KERNEL_NAME)
    except NoSuchKernel:
        pytest.fail(f"Jupyter kernel {KERNEL_NAME!r} not found: run `python -m ipykernel install --sys-prefix`")

    # The kernel process inherits this environment.
    monkeypatch.setenv("EXPERTRAG_NOTEBOOK_KB", str(kb_path))
    monkeypatch.setenv("EXPERTRAG_NOTEBOOK_OUT", str(out_png))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL_NAME, resources={"metadata": {"path": str(work_dir)}})
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            if skip_tag is not None and skip_tag in cell.metadata.get("tags", []):
                continue
            client.execute_cell(cell, index)
    return notebook


def error_outputs(notebook: nbformat.NotebookNode) -> list[str]:
    """Return 'cell N: ename: evalue' for every error output of the notebook."""
    return [
        f"cell {index}: {output.ename}: {output.evalue}"
        for index, cell in enumerate(notebook.cells)
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]


def stdout_of_tagged_cell(notebook: nbformat.NotebookNode, tag: str) -> str:
    """Return what the one cell tagged ``tag`` printed to stdout."""
    tagged = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    assert len(tagged) == 1, f"expected one cell tagged {tag!r}, found {len(tagged)}"
    return "".join(output.text for output in tagged[0].outputs if output.output_type == "stream" and output.name == "stdout")


def assert_neighborhood_png(path: Path) -> None:
    assert path.is_file(), f"the notebook did not write {path}"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > MIN_PNG_BYTES


def test_notebook_committed_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)

    nbformat.validate(notebook)
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code_cells
    assert all(cell.outputs == [] for cell in code_cells)
    assert all(cell.execution_count is None for cell in code_cells)
    assert notebook.metadata["kernelspec"]["name"] == KERNEL_NAME


def test_notebook_runs_without_question(sample_kb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_png = tmp_path / "out" / "neighborhood.png"

    notebook = execute_notebook(sample_kb_path, out_png, tmp_path, monkeypatch, skip_tag=LLM_TAG)

    assert error_outputs(notebook) == []
    assert_neighborhood_png(out_png)


@pytest.mark.llm
def test_notebook_answers_question(sample_kb_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out_png = tmp_path / "out" / "neighborhood.png"

    notebook = execute_notebook(sample_kb_path, out_png, tmp_path, monkeypatch, skip_tag=None)

    assert error_outputs(notebook) == []
    assert_neighborhood_png(out_png)
    printed = stdout_of_tagged_cell(notebook, LLM_TAG)
    answer_lines = [line for line in printed.splitlines() if line.startswith("Answer: ")]
    assert len(answer_lines) == 1, printed
    assert answer_lines[0].removeprefix("Answer: ").strip() not in ("", NOT_FOUND_ANSWER), printed
    assert "Found: True" in printed
    assert "[1] " in printed
