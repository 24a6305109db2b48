r"""The structure figures of the ``diffsolve`` package, in one command (standard library only).

    python benchmarks/code_shape.py                 # the report
    python benchmarks/code_shape.py --json          # the same figures as JSON
    python benchmarks/code_shape.py --check         # exit 1 when a figure is over its limit

What it prints, for every ``.py`` file under the package directory:

- **modules**: the line count of every module (as ``wc -l`` counts), those over ``--max-module``
  (400) flagged;
- **functions**: every function or method over ``--max-function`` (60) lines of code, and the
  longest one. Lines of code are the lines of its ``def`` .. end span that hold a token, minus
  blank lines, comment-only lines and docstrings (its own and those of functions and classes
  nested in it); a nested function counts in its parent too and is also listed on its own;
- **import cycles**: the graph of ``import`` / ``from ... import`` statements between the
  package's modules, at any depth. Relative imports are resolved; a name imported from a package
  (``from diffsolve import GaussianMixture``) is followed through that package's ``__init__``
  re-exports to the module that defines it (a submodule name goes to the submodule; a name the
  ``__init__`` defines itself, or cannot trace, stays on the package). Importing ``a.b`` is an
  edge to ``a.b`` only, not to the parent packages Python initialises on the way. Imports at
  module level (also inside ``if`` / ``try`` / class bodies) are *top-level*; imports inside a
  function are *deferred*; those under ``if TYPE_CHECKING:`` never run and are left out. Each
  strongly connected component of more than one module among top-level imports is printed with
  the edges inside it; so is, separately, every component of the graph with the deferred edges
  added that is not already a top-level one (a cycle only through deferred imports). Dynamic
  imports (``importlib.import_module``, ``pkgutil`` walks) are not statements and not seen;
- **rk_solve call sites**: every call ``rk_solve(...)`` / ``x.rk_solve(...)`` outside ``rk.py``;
- **adaptive branches**: every ``getattr(..., "adaptive", ...)`` / ``hasattr(..., "adaptive")``
  and every ``.adaptive`` read inside the test of an ``if``, a conditional expression, a
  ``while`` or a comprehension's ``if``, outside ``loop.py`` (the one integration loop).
  Assignments (a solver class's own ``adaptive = True``, ``self.adaptive = ...``) are not reads;
- a **summary** of the five numbers.

The exit code is 0: the script reports, it does not judge. With ``--check`` it is 1 when a module
is over ``--max-module``, a function over ``--max-function``, a top-level import cycle exists, an
adaptive branch is found, or there are more ``rk_solve`` call sites than ``--max-rk-calls`` (1:
the one loop).
"""
from __future__ import annotations

import argparse
import ast
import io
import json
import sys
import tokenize
from pathlib import Path

DEFAULT_PACKAGE = Path(__file__).resolve().parents[1] / "diffsolve"
ENGINE_MODULE = "rk.py"  # rk_solve's own module (relative to the package directory)
LOOP_MODULE = "loop.py"  # the one integration loop: the place to branch on ``adaptive``
_NON_CODE = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
             tokenize.ENCODING, tokenize.ENDMARKER}


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------
def package_files(pkg: Path) -> list[Path]:
    """Every ``.py`` file under the package directory, sorted (``__pycache__`` skipped)."""
    pkg = Path(pkg)
    return sorted(p for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)


def _rel(pkg: Path, path: Path) -> str:
    """The path printed for a file: relative to the package's parent (``diffsolve/cli.py``)."""
    return Path(path).relative_to(Path(pkg).parent).as_posix()


def _module_name(pkg: Path, path: Path) -> str:
    parts = list(Path(path).relative_to(Path(pkg).parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _parse(path: Path) -> ast.Module:
    return ast.parse(Path(path).read_text(encoding="utf-8"), filename=str(path))


def module_lines(pkg: Path) -> list[dict]:
    """``{"file", "lines"}`` for every module (lines as ``wc -l`` counts them)."""
    out = []
    for path in package_files(pkg):
        text = path.read_text(encoding="utf-8")
        out.append({"file": _rel(pkg, path), "lines": text.count("\n") + (0 if text.endswith("\n") or not text else 1)})
    return out


# --------------------------------------------------------------------------------------------
# functions
# --------------------------------------------------------------------------------------------
def _code_lines(source: str) -> set[int]:
    """Line numbers that hold a token other than a comment or a line break (a multi-line string
    marks all its lines)."""
    lines = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in _NON_CODE:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines


def _docstring_lines(node) -> set[int]:
    body = getattr(node, "body", None)
    if (body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        return set(range(body[0].lineno, body[0].end_lineno + 1))
    return set()


def functions(pkg: Path) -> list[dict]:
    """``{"file", "line", "name", "loc"}`` for every function and method (``name`` qualified:
    ``Class.method``, ``outer.inner``)."""
    out = []
    for path in package_files(pkg):
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source, filename=str(path))
        code = _code_lines(source)
        docs = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                docs |= _docstring_lines(node)

        def visit(node, prefix):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    name = prefix + child.name
                    span = set(range(child.lineno, child.end_lineno + 1))
                    out.append({"file": _rel(pkg, path), "line": child.lineno, "name": name,
                                "loc": len((span & code) - docs)})
                    visit(child, name + ".")
                elif isinstance(child, ast.ClassDef):
                    visit(child, prefix + child.name + ".")
                else:
                    visit(child, prefix)

        visit(tree, "")
    return out


# --------------------------------------------------------------------------------------------
# imports
# --------------------------------------------------------------------------------------------
class _Modules:
    """The package's modules by dotted name, with their trees, for resolving imports."""

    def __init__(self, pkg: Path):
        self.pkg = Path(pkg)
        self.files = {}
        self.trees = {}
        self.packages = set()
        for path in package_files(pkg):
            name = _module_name(pkg, path)
            if name in self.packages:  # x.py beside x/__init__.py: Python imports the package
                continue
            self.files[name] = path
            self.trees[name] = _parse(path)
            if path.name == "__init__.py":
                self.packages.add(name)
        self._reexports = {}

    def base_of(self, module: str, level: int, target: str | None) -> str:
        """The absolute module named by ``from <level dots><target> import`` inside ``module``."""
        if level == 0:
            return target or ""
        here = module if module in self.packages else module.rpartition(".")[0]
        for _ in range(level - 1):
            here = here.rpartition(".")[0]
        return f"{here}.{target}" if target else here

    def known(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a module of the package (None if none)."""
        while dotted:
            if dotted in self.files:
                return dotted
            dotted = dotted.rpartition(".")[0]
        return None

    def resolve_from(self, base: str, name: str, seen=frozenset()) -> str | None:
        """The module that ``from base import name`` makes the importer depend on."""
        if f"{base}.{name}" in self.files:
            return f"{base}.{name}"
        if base not in self.files:
            return self.known(base)
        if base not in self.packages or (base, name) in seen:
            return base
        return self.reexport(base, name, seen | {(base, name)})

    def reexport(self, package: str, name: str, seen) -> str:
        """Where a package's ``__init__`` takes ``name`` from (the package itself if it defines it
        or the origin cannot be traced)."""
        for node in self.trees[package].body:
            if isinstance(node, ast.ImportFrom):
                base = self.base_of(package, node.level, node.module)
                for alias in node.names:
                    if (alias.asname or alias.name) == name and alias.name != "*":
                        got = self.resolve_from(base, alias.name, seen)
                        return got or package
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname == name:
                        return self.known(alias.name) or package
        for node in self.trees[package].body:  # star imports last
            if isinstance(node, ast.ImportFrom) and any(a.name == "*" for a in node.names):
                base = self.base_of(package, node.level, node.module)
                if base in self.packages and base != package:
                    got = self.resolve_from(base, name, seen)
                    if got and got != base:
                        return got
        return package


def _is_type_checking(test) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_edges(pkg: Path) -> list[dict]:
    """``{"src", "dst", "file", "line", "kind"}`` for every import between the package's modules;
    ``kind`` is ``top`` (runs when the module is imported), ``deferred`` (inside a function) or
    ``typing`` (under ``if TYPE_CHECKING:``)."""
    mods = _Modules(pkg)
    root = Path(pkg).name
    edges = []

    def add(src, dst, node, kind):
        if dst and dst != src and (dst == root or dst.startswith(root + ".")):
            edges.append({"src": src, "dst": dst, "file": _rel(pkg, mods.files[src]), "line": node.lineno,
                          "kind": kind})

    def visit(src, node, kind):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(src, mods.known(alias.name), child, kind)
            elif isinstance(child, ast.ImportFrom):
                base = mods.base_of(src, child.level, child.module)
                for alias in child.names:
                    dst = mods.known(base) if alias.name == "*" else mods.resolve_from(base, alias.name)
                    add(src, dst, child, kind)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(src, child, "typing" if kind == "typing" else "deferred")
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    visit(src, ast.Module(body=[stmt], type_ignores=[]), "typing")
                for stmt in child.orelse:
                    visit(src, ast.Module(body=[stmt], type_ignores=[]), kind)
            else:
                visit(src, child, kind)

    for name, tree in mods.trees.items():
        visit(name, tree, "top")
    # one edge per (src, dst, file, line, kind): ``from a import x, y`` both from a.m is one edge
    seen, out = set(), []
    for e in edges:
        key = (e["src"], e["dst"], e["line"], e["kind"])
        if key not in seen:
            seen.add(key)
            out.append(e)
    return out


def strongly_connected(nodes, succ) -> list[list[str]]:
    """Tarjan's strongly connected components (each sorted; the list sorted)."""
    index, low, stack, on, comps = {}, {}, [], set(), []
    counter = [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(succ.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            comps.append(sorted(comp))

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10 * len(nodes) + 100))
    try:
        for v in sorted(nodes):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return sorted(comps)


def import_cycles(pkg: Path, edges: list[dict] | None = None) -> dict:
    """``{"top": [...], "deferred_only": [...]}``: each a ``{"modules", "edges"}`` component of more
    than one module; ``top`` among top-level imports, ``deferred_only`` the components of the graph
    with deferred imports added that are not top-level components (their edges inside listed)."""
    edges = import_edges(pkg) if edges is None else edges
    nodes = {e["src"] for e in edges} | {e["dst"] for e in edges}

    def comps(kinds):
        succ = {}
        for e in edges:
            if e["kind"] in kinds:
                succ.setdefault(e["src"], set()).add(e["dst"])
        return [c for c in strongly_connected(nodes, succ) if len(c) > 1]

    def inside(comp, kinds):
        members = set(comp)
        return [e for e in edges if e["kind"] in kinds and e["src"] in members and e["dst"] in members]

    top = comps({"top"})
    full = comps({"top", "deferred"})
    return {"top": [{"modules": c, "edges": inside(c, {"top"})} for c in top],
            "deferred_only": [{"modules": c, "edges": inside(c, {"top", "deferred"})} for c in full if c not in top]}


# --------------------------------------------------------------------------------------------
# rk_solve call sites, adaptive branches
# --------------------------------------------------------------------------------------------
def rk_solve_calls(pkg: Path) -> list[dict]:
    """``{"file", "line"}`` of every ``rk_solve(...)`` call outside the engine's own module."""
    out = []
    for path in package_files(pkg):
        if path == Path(pkg) / ENGINE_MODULE:
            continue
        for node in ast.walk(_parse(path)):
            if isinstance(node, ast.Call):
                f = node.func
                if (isinstance(f, ast.Name) and f.id == "rk_solve") or (
                        isinstance(f, ast.Attribute) and f.attr == "rk_solve"):
                    out.append({"file": _rel(pkg, path), "line": node.lineno})
    return sorted(out, key=lambda r: (r["file"], r["line"]))


def adaptive_branches(pkg: Path) -> list[dict]:
    """``{"file", "line", "what"}`` of every branch on ``adaptive`` outside the loop module: a
    ``getattr``/``hasattr`` of ``"adaptive"``, or a ``.adaptive`` read in a condition."""
    out = []
    for path in package_files(pkg):
        if path == Path(pkg) / LOOP_MODULE:
            continue
        tree = _parse(path)
        conditions = []
        for node in ast.walk(tree):
            if isinstance(node, (ast.If, ast.IfExp, ast.While)):
                conditions.append(node.test)
            elif isinstance(node, ast.comprehension):
                conditions.extend(node.ifs)
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant) and node.args[1].value == "adaptive"):
                out.append({"file": _rel(pkg, path), "line": node.lineno, "what": f'{node.func.id}(..., "adaptive")'})
        seen = set()
        for cond in conditions:
            for node in ast.walk(cond):
                if (isinstance(node, ast.Attribute) and node.attr == "adaptive" and isinstance(node.ctx, ast.Load)
                        and id(node) not in seen):
                    seen.add(id(node))
                    out.append({"file": _rel(pkg, path), "line": node.lineno, "what": ".adaptive in a condition"})
    return sorted(out, key=lambda r: (r["file"], r["line"]))


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------
def collect(pkg: Path = DEFAULT_PACKAGE, max_module: int = 400, max_function: int = 60) -> dict:
    """Every figure, as one JSON-ready dict."""
    pkg = Path(pkg)
    mods = module_lines(pkg)
    funcs = functions(pkg)
    edges = import_edges(pkg)
    cycles = import_cycles(pkg, edges)
    rk = rk_solve_calls(pkg)
    adaptive = adaptive_branches(pkg)
    long_mods = [m for m in mods if m["lines"] > max_module]
    long_funcs = sorted((f for f in funcs if f["loc"] > max_function), key=lambda f: (-f["loc"], f["file"], f["line"]))
    longest = max(funcs, key=lambda f: f["loc"], default=None)
    return {
        "package": str(pkg),
        "limits": {"max_module": max_module, "max_function": max_function},
        "modules": mods,
        "long_modules": long_mods,
        "long_functions": long_funcs,
        "longest_function": longest,
        "import_edges": {"top": sum(e["kind"] == "top" for e in edges),
                         "deferred": sum(e["kind"] == "deferred" for e in edges),
                         "typing": sum(e["kind"] == "typing" for e in edges)},
        "cycles": cycles,
        "rk_solve_calls": rk,
        "adaptive_branches": adaptive,
        "summary": {
            "modules_over_limit": len(long_mods),
            "functions_over_limit": len(long_funcs),
            "import_cycles": len(cycles["top"]),
            "import_cycles_deferred_only": len(cycles["deferred_only"]),
            "rk_solve_call_sites": len(rk),
            "adaptive_branches": len(adaptive),
        },
    }


def format_report(r: dict) -> str:
    lim = r["limits"]
    s = r["summary"]
    lines = [f"# code shape of {r['package']}", "",
             f"## modules ({len(r['modules'])}; * = over {lim['max_module']} lines)"]
    for m in sorted(r["modules"], key=lambda m: (-m["lines"], m["file"])):
        lines.append(f"{'*' if m['lines'] > lim['max_module'] else ' '} {m['lines']:5d}  {m['file']}")
    lines += ["", f"## functions over {lim['max_function']} lines of code (no docstring, blank or comment-only lines)"]
    lines += [f"{f['file']}:{f['line']} {f['name']} {f['loc']}" for f in r["long_functions"]] or ["none"]
    lf = r["longest_function"]
    if lf:
        lines.append(f"longest: {lf['file']}:{lf['line']} {lf['name']} {lf['loc']}")
    ie = r["import_edges"]
    lines += ["", f"## import cycles (edges: {ie['top']} top-level, {ie['deferred']} deferred, "
                  f"{ie['typing']} TYPE_CHECKING-only)", "top-level imports:"]

    def show(cycles):
        if not cycles:
            return ["  none"]
        out = []
        for c in cycles:
            out.append(f"  {len(c['modules'])} modules: {', '.join(c['modules'])}")
            for e in c["edges"]:
                how = ", deferred" if e["kind"] == "deferred" else ""
                out.append(f"    {e['src']} -> {e['dst']}  ({e['file']}:{e['line']}{how})")
        return out

    lines += show(r["cycles"]["top"])
    lines.append("only through deferred imports (inside functions):")
    lines += show(r["cycles"]["deferred_only"])
    lines += ["", f"## rk_solve( call sites outside {Path(r['package']).name}/{ENGINE_MODULE}"]
    lines += [f"{c['file']}:{c['line']}" for c in r["rk_solve_calls"]] or ["none"]
    lines += ["", f"## branches on adaptive outside {Path(r['package']).name}/{LOOP_MODULE}"]
    lines += [f"{b['file']}:{b['line']} {b['what']}" for b in r["adaptive_branches"]] or ["none"]
    rows = [(f"modules over {lim['max_module']} lines", s["modules_over_limit"], ""),
            (f"functions over {lim['max_function']} lines", s["functions_over_limit"], ""),
            ("import cycles (top-level)", s["import_cycles"],
             f"  (+{s['import_cycles_deferred_only']} only through deferred imports)"),
            ("rk_solve call sites", s["rk_solve_call_sites"], ""),
            ("adaptive branches", s["adaptive_branches"], "")]
    width = max(len(label) for label, _, _ in rows) + 1
    lines += ["", "## summary"] + [f"{label + ':':{width}s} {n:3d}{extra}" for label, n, extra in rows]
    return "\n".join(lines)


def over_limits(r: dict, max_rk_calls: int = 1) -> list[str]:
    """What ``--check`` fails on (empty: nothing)."""
    s = r["summary"]
    bad = []
    if s["modules_over_limit"]:
        bad.append(f"{s['modules_over_limit']} modules over {r['limits']['max_module']} lines")
    if s["functions_over_limit"]:
        bad.append(f"{s['functions_over_limit']} functions over {r['limits']['max_function']} lines")
    if s["import_cycles"]:
        bad.append(f"{s['import_cycles']} top-level import cycles")
    if s["rk_solve_call_sites"] > max_rk_calls:
        bad.append(f"{s['rk_solve_call_sites']} rk_solve call sites (at most {max_rk_calls})")
    if s["adaptive_branches"]:
        bad.append(f"{s['adaptive_branches']} adaptive branches outside {LOOP_MODULE}")
    return bad


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--package", type=Path, default=DEFAULT_PACKAGE, help="package directory (default: %(default)s)")
    ap.add_argument("--max-module", type=int, default=400, help="module line limit (default: %(default)s)")
    ap.add_argument("--max-function", type=int, default=60, help="function lines-of-code limit (default: %(default)s)")
    ap.add_argument("--max-rk-calls", type=int, default=1,
                    help="rk_solve call sites outside rk.py that --check allows (default: %(default)s)")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    ap.add_argument("--check", action="store_true", help="exit 1 when a figure is over its limit")
    args = ap.parse_args(argv)
    if not args.package.is_dir():
        ap.error(f"--package {args.package}: not a directory")
    r = collect(args.package, args.max_module, args.max_function)
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    if args.check:
        bad = over_limits(r, args.max_rk_calls)
        if bad:
            print("check failed: " + "; ".join(bad), file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
