"""The package's layers import only downward (function-level imports included)."""

import ast
import pathlib

import s2dask

PKG = pathlib.Path(s2dask.__file__).parent
#: bottom to top; a module may import its own layer and any layer listed before it
LAYERS = ["errors", "io", "scene", "model", "maps", "job", "training", "cli"]


def _layer(module: str) -> str:
    return module.split(".")[0]


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """The s2dask modules (dotted, without the ``s2dask.`` prefix) that ``path`` imports."""
    is_init = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".") if is_init else module.split(".")[:-1]
                base = pkg[: len(pkg) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif (node.module or "").startswith("s2dask."):
                target = node.module[len("s2dask."):]
            else:
                continue
            if target:
                out.add(target)
            else:  # from s2dask import x / from .. import x
                out.update(a.name for a in node.names if not a.name.startswith("__"))
        elif isinstance(node, ast.Import):
            out.update(a.name[len("s2dask."):] for a in node.names if a.name.startswith("s2dask."))
    return out


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        parts = path.relative_to(PKG).with_suffix("").parts
        if parts[-1] in ("__init__", "__main__") and len(parts) == 1:
            continue  # the public API at the top imports every layer lazily
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def test_every_module_belongs_to_a_layer():
    strays = [m for _, m in _modules() if _layer(m) not in LAYERS]
    assert not strays, f"modules outside the layers {LAYERS}: {strays}"


def test_layers_import_only_downward():
    upward = []
    for path, module in _modules():
        rank = LAYERS.index(_layer(module))
        for target in _imports(path, module):
            if LAYERS.index(_layer(target)) > rank:
                upward.append(f"{module} -> {target}")
    assert not upward, "imports that run up the layers: " + ", ".join(sorted(upward))


def test_the_layer_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "x.py"
    bad.write_text("from ..job.run import classify\nfrom s2dask.cli import main\n")
    assert _imports(bad, "scene.x") == {"job.run", "cli"}
