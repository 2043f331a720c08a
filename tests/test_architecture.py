"""Import direction: models and mechanisms never import sinks, the trainer or the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "engine"

# package -> prefixes it must never import
FORBIDDEN = {
    "models": ("engine.sinks", "engine.training", "engine.cli", "engine.sweep", "engine.experiments"),
    "mechanisms": ("engine.sinks", "engine.training", "engine.cli", "engine.sweep", "engine.experiments"),
    "data": ("engine.sinks", "engine.training", "engine.cli", "engine.sweep", "engine.experiments"),
    "diagnostics": ("engine.sinks", "engine.training", "engine.cli", "engine.sweep", "engine.experiments"),
    "training": ("engine.sinks", "engine.cli", "engine.sweep"),
    "experiments": ("engine.sinks", "engine.training", "engine.cli", "engine.sweep"),
    "telemetry": ("engine.sinks", "engine.training", "engine.cli", "engine.models", "engine.experiments"),
    "sinks": ("engine.training", "engine.cli", "engine.models", "engine.experiments", "engine.mechanisms"),
    "sweep": ("engine.cli", "engine.sinks", "engine.training"),
    # reports read result files only
    "report": ("engine.training", "engine.cli", "engine.sinks", "engine.experiments", "engine.models",
               "engine.mechanisms"),
    # data-parallel runs: the trainer's step policy and the launcher; the CLI calls them, never the reverse
    "distributed": ("engine.cli", "engine.sinks", "engine.sweep", "engine.experiments", "engine.models",
                    "engine.mechanisms"),
}


def imports_of(path: Path) -> list[str]:
    """Every module named by an import statement in ``path`` (lazy imports included)."""
    tree = ast.parse(path.read_text())
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def violations(root: Path = ENGINE) -> list[str]:
    """``file: module`` for every forbidden import under ``root``."""
    out = []
    for pkg, banned in FORBIDDEN.items():
        for path in sorted((root / pkg).rglob("*.py")):
            for mod in imports_of(path):
                if mod.startswith(banned):
                    out.append(f"{path.relative_to(root)}: {mod}")
    return out


def test_no_forbidden_imports() -> None:
    assert violations() == []


def test_only_engine_distributed_uses_torch_distributed() -> None:
    # Families, models and mechanisms see data-parallel runs only through engine.parallel.
    users = sorted(str(p.relative_to(ENGINE)) for p in ENGINE.rglob("*.py")
                   if any(m.startswith("torch.distributed") or m.startswith("engine.distributed")
                          for m in imports_of(p)))
    assert [u for u in users if not u.startswith("distributed/")] == ["cli/ddp.py"]


def test_checker_catches_a_forbidden_import(tmp_path: Path) -> None:
    # The checker itself must be able to fail.
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "bad.py").write_text("def f():\n    from engine.sinks.prometheus import PrometheusSink\n")
    assert violations(tmp_path) == ["models/bad.py: engine.sinks.prometheus"]


def test_modules_are_short() -> None:
    long = [f"{p.relative_to(ENGINE)}: {n}" for p in ENGINE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 330]
    assert long == []
