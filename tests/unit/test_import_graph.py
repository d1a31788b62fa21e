"""The package's static import graph (module-level and function-level imports): no import circle
anywhere, and every folder imports only from the layers below its own."""

import ast
from pathlib import Path

from wmtp_jax import registry

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("wmtp_jax", "conversion")
# Bottom to top: a module may import only from a strictly lower layer (or its own folder). The
# registry names the config and pipeline modules as strings and imports them on first use, so it
# is a leaf here: configs (below the pipelines) and main / the study / the bench read one table.
LAYERS = (
    ("wmtp_jax", "wmtp_jax.kernels", "wmtp_jax.registry", "wmtp_jax.console"),
    ("wmtp_jax.ops",),
    ("wmtp_jax.models", "wmtp_jax.data"),
    ("wmtp_jax.generate", "wmtp_jax.eval", "wmtp_jax.weighting", "wmtp_jax.train", "conversion"),
    ("wmtp_jax.configs",),
    ("wmtp_jax.pipelines",),
    ("wmtp_jax.study", "wmtp_jax.bench"),
    ("wmtp_jax.main",),
)


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            parts = list(p.relative_to(ROOT).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (`from pkg import sub` counts as `pkg.sub`)."""
    mods = _modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, (path, is_pkg) in mods.items():
        pkg = m if is_pkg else m.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            else:
                continue
            edges[m].update(t for t in targets if t in mods and t != m)
    return edges


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in edges:
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(edges[w]))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                scc = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    scc.append(w)
                    if w == v:
                        break
                if len(scc) > 1:
                    out.append(sorted(scc))
    return out


def _in(m: str, pkgs) -> bool:
    return any(m == p or m.startswith(p + ".") for p in pkgs)


def test_circle_finder_finds_a_circle():
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert circles(g) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle_anywhere():
    assert circles(import_graph()) == []


def folder(m: str) -> str:
    """The layered unit of module `m`: its folder under wmtp_jax (or a top-level module)."""
    parts = m.split(".")
    return parts[0] if parts[0] != "wmtp_jax" else ".".join(parts[:2])


def layer(m: str) -> int:
    f = folder(m)
    hits = [i for i, names in enumerate(LAYERS) if f in names]
    assert hits, f"{f} ({m}) is in no layer: add it to LAYERS"
    return hits[0]


def test_every_folder_has_one_layer():
    names = [f for names in LAYERS for f in names]
    assert len(names) == len(set(names))
    for m in import_graph():
        layer(m)


def test_no_folder_imports_from_its_own_layer_or_above():
    up = sorted(
        (m, t)
        for m, ts in import_graph().items()
        for t in ts
        if folder(t) != folder(m) and layer(t) >= layer(m)
    )
    assert up == []


def test_layer_check_catches_an_upward_import():
    assert layer("wmtp_jax.pipelines.bootstrap") >= layer("wmtp_jax.configs.common")
    assert layer("wmtp_jax.study.cells") > layer("wmtp_jax.pipelines.evaluation")
    assert layer("wmtp_jax.weighting.scheme") < layer("wmtp_jax.pipelines.verifiable")
    assert layer("wmtp_jax.weighting.scheme") < layer("wmtp_jax.study.credit")


def test_kernels_import_nothing_from_the_package_but_themselves():
    g = import_graph()
    out = sorted((m, t) for m, ts in g.items() if _in(m, ("wmtp_jax.kernels",)) for t in ts)
    assert all(_in(t, ("wmtp_jax.kernels",)) for _, t in out), out


def test_module_names_are_distinct():
    """No module or package name is another's plural, and a name shared across folders only
    mirrors one idea: configs/X ↔ pipelines/X (the registry's pairs), bench/X measures X, and
    ops/rho1 is the rho1 pipeline's math."""
    mirrored = {"attention", "decode", "packing", "rho1"} | set(registry.PIPELINES)
    names: dict[str, list[str]] = {}
    for m, (path, is_pkg) in _modules().items():
        names.setdefault(m.rpartition(".")[2], []).append(m)
    del names["__main__"]
    shared = sorted(n for n, ms in names.items() if len(ms) > 1 and n not in mirrored)
    assert shared == []
    plural = sorted((n, f"{n}s") for n in names if f"{n}s" in names or f"{n}es" in names)
    assert plural == []
