"""Reading a Feast repo with Feast's own loader (what `feast apply` reads)."""

from __future__ import annotations

import contextlib
import importlib.machinery
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from vigil.declared.compiler import RepoMistakes, compile_contents
from vigil.declared.model import DeclaredFeatures, WindowFunction


def repo_window_functions(repo: Path) -> tuple[dict[str, WindowFunction], list[str]]:
    """The window functions (`@window_function`) the repo's modules define, by name, and the
    names defined twice. Read after Feast's loader imported the modules."""
    root = repo.resolve()
    found: dict[str, WindowFunction] = {}
    twice: list[str] = []
    for module in list(sys.modules.values()):
        location = getattr(module, "__file__", None)
        if not location or not Path(location).resolve().is_relative_to(root):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, WindowFunction):
                if value.name in found and found[value.name] is not value:
                    twice.append(value.name)
                found.setdefault(value.name, value)
    return found, twice


def declared_repo(repo: Path) -> bool:
    """Whether a feature repo declares its features (a `vigil.role` tag in its Python files),
    read as text: no import, so no delay for commands that only need to know."""
    return any('"vigil.role"' in p.read_text(errors="replace") for p in repo.glob("*.py"))


def parse_feast_repo(repo: Path) -> Any:
    """Feast's `RepoContents` of the repo at `repo`, read as `feast apply` reads it.

    Feast's loader names modules relative to the working directory (`feast apply` runs in
    the repo), so the repo's own `from entities import ...` lines resolve the same way.
    A module of this repo imported before is dropped first: the repo's modules may read
    the environment when imported, and another repo may have modules of the same name.
    """
    from feast.repo_operations import parse_repo

    root = repo.resolve()
    if str(root) in sys.path:  # first on the path: its `features` before another repo's
        sys.path.remove(str(root))
    sys.path.insert(0, str(root))
    # Modules of this repo, or of another repo with the same names (`features`), imported
    # before are dropped. A copy taken in one C call: other threads may import meanwhile.
    names = {".".join(p.relative_to(root).with_suffix("").parts) for p in root.rglob("*.py")}
    for name, module in sys.modules.copy().items():
        location = getattr(module, "__file__", None)
        if name in names or (location and Path(location).resolve().parent == root):
            sys.modules.pop(name, None)
    with contextlib.chdir(root), warnings.catch_warnings(), _from_source(root):
        warnings.filterwarnings("ignore", message=".*experimental.*")
        return parse_repo(root)


class _SourceLoader(importlib.machinery.SourceFileLoader):
    """Compiles a module from its source, reading and writing no bytecode."""

    def get_code(self, fullname: str) -> Any:
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


@contextlib.contextmanager
def _from_source(root: Path) -> Iterator[None]:
    """The repo's own modules, imported meanwhile, are compiled from their source; everything
    else they import is loaded as usual. A repo's files are edited while a notebook runs, and
    bytecode is matched to its source by size and by modification time in whole seconds: a
    file rewritten within the second at the same size (`function="p95"` put back to
    `function="max"`) would load as it was before."""

    def within(path: str) -> bool:
        return bool(path) and Path(path).resolve().is_relative_to(root)

    def source_finder(path: str) -> Any:
        if not within(path):
            raise ImportError(path)  # the next hook's finder
        return importlib.machinery.FileFinder(path, (_SourceLoader, importlib.machinery.SOURCE_SUFFIXES))

    def forget_finders() -> None:
        for path in [p for p in sys.path_importer_cache if within(p)]:
            sys.path_importer_cache.pop(path, None)

    sys.path_hooks.insert(0, source_finder)
    forget_finders()
    try:
        yield
    finally:
        sys.path_hooks.remove(source_finder)
        forget_finders()


def load_declared(repo: Path | str) -> DeclaredFeatures:
    """The repo compiled; `RepoMistakes` (a ValueError) names what stops it."""
    root = Path(repo)
    config = root / "feature_store.yaml"
    if not config.is_file():
        raise RepoMistakes(root, [f"{config}: not found (a Feast repo has a feature_store.yaml)"])
    try:
        project = str((yaml.safe_load(config.read_text()) or {}).get("project", ""))
    except yaml.YAMLError as error:
        raise RepoMistakes(root, [f"{config}: not YAML ({error})"]) from None
    if not project:
        raise RepoMistakes(root, [f"{config}, project: missing"])
    try:
        contents = parse_feast_repo(root)
    except Exception as error:  # a repo's own Python (or Feast's checks) failed on import
        raise RepoMistakes(root, [f"reading the repo's Python files: {type(error).__name__}: {error}"]) from None
    functions, twice = repo_window_functions(root)
    if twice:
        raise RepoMistakes(root, [f"window function {name!r}, name: defined twice" for name in sorted(set(twice))])
    return compile_contents(contents, project, root, functions)
