"""Runs every notebook and renders it, with its pictures, as Markdown under docs/notebooks/
(`make notebook-docs`). The notebooks themselves stay without outputs.

Kept out of the pages: warnings written to stderr (they name this machine's paths) and
HTML outputs above `MAX_HTML_BYTES` (Evidently's interactive report embeds megabytes of
script; the notebook says where the report's file is).
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbconvert import MarkdownExporter
from nbconvert.writers import FilesWriter

ROOT = Path(__file__).resolve().parent
OUT = ROOT.parent / "docs" / "notebooks"
MAX_HTML_BYTES = 100_000


def tidy(notebook: nbformat.NotebookNode) -> None:
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        kept = []
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                continue
            html = output.get("data", {}).get("text/html")
            if html is not None and len("".join(html)) > MAX_HTML_BYTES:
                output["data"] = {"text/plain": "(an interactive HTML report, left out of this page)"}
            kept.append(output)
        cell["outputs"] = kept


def render(path: Path) -> Path:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    tidy(notebook)
    body, resources = MarkdownExporter().from_notebook_node(
        notebook, resources={"output_files_dir": f"{path.stem}_files"}
    )
    FilesWriter(build_directory=str(OUT)).write(body, resources, notebook_name=path.stem)
    return OUT / f"{path.stem}.md"


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for path in sorted(ROOT.glob("*.ipynb")) if len(sys.argv) < 2 else [Path(p) for p in sys.argv[1:]]:
        print(f"Rendered {render(path)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
