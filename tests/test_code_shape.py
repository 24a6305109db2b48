"""benchmarks/code_shape.py on a small synthetic package (not on diffsolve, whose figures change
under refactoring): module lengths, function lines of code (docstrings, blank and comment lines
excluded), import cycles (top-level and deferred-only, through a package re-export and relative
imports), rk_solve call sites and branches on ``adaptive``."""
import importlib.util
import json
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "code_shape.py"


@pytest.fixture(scope="module")
def cs():
    spec = importlib.util.spec_from_file_location("code_shape", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


LONG_DOC = "\n".join(f"    docstring line {i}" for i in range(80))
LONG_BODY = "\n".join(f"    y = y + {i}" for i in range(65))
# 55 code lines in a 120-line span: under 60 once docstring, blanks and comments are left out
SHORT_BODY = "\n".join(f"    y = y + {i}\n\n    # comment {i}" if i < 30 else f"    y = y + {i}" for i in range(54))

FILES = {
    "__init__.py": "from .a import A\nfrom . import c\n",
    # a <-> b at module level; b takes A through the package's re-export (pkg -> pkg.a)
    "a.py": "from .b import helper\nfrom . import e\nfrom pkg.sub import g\n\n\nclass A:\n    pass\n",
    "b.py": "from pkg import A\n\n\ndef helper():\n    return A\n",
    # c -> d at module level, d -> c only inside a function
    "c.py": "from . import d\n\nx = 1\n",
    "d.py": "def f():\n    from .c import x\n\n    return x\n",
    # a TYPE_CHECKING-only import back to a: no cycle
    "e.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n    from .a import A\n",
    "rk.py": "def rk_solve(f, y):\n    return rk_solve(f, y) if f else y\n",
    "sub/__init__.py": "from .m import g\n",
    "sub/m.py": "from ..rk import rk_solve\n\n\ndef g():\n    return rk_solve(None, 1)\n",
    "solvers.py": textwrap.dedent('''\
        from . import rk
        from .rk import rk_solve


        class Adaptive:
            adaptive = True

            def __init__(self):
                self.adaptive = True


        def run(s, f, y):
            if getattr(s, "adaptive", False):
                return rk_solve(f, y)
            z = rk.rk_solve(f, y) if s.adaptive else y
            w = s.adaptive  # a read, not a condition
            return z, w
        '''),
    "long.py": f'def long(x):\n    """\n{LONG_DOC}\n    """\n    # a comment\n\n    y = x\n{LONG_BODY}\n'
               f'    return y\n\n\ndef short(x):\n    """\n{LONG_DOC[:900]}\n    """\n    y = x\n{SHORT_BODY}\n    return y\n',
    # the loop module may branch on adaptive
    "loop.py": 'def loop(s):\n    if s.adaptive:\n        return 1\n    return getattr(s, "adaptive", False)\n',
}


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "pkg"
    for name, text in FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_module_lines(cs, pkg):
    lines = {m["file"]: m["lines"] for m in cs.module_lines(pkg)}
    assert lines["pkg/c.py"] == 3 and lines["pkg/b.py"] == 5
    assert lines["pkg/long.py"] == FILES["long.py"].count("\n")
    r = cs.collect(pkg, max_module=50, max_function=60)
    assert [m["file"] for m in r["long_modules"]] == ["pkg/long.py"]


def test_function_lines_exclude_docstring_blanks_and_comments(cs, pkg):
    funcs = {f["name"]: f for f in cs.functions(pkg)}
    assert funcs["long"]["loc"] == 1 + 1 + 65 + 1  # def, y = x, the body, return
    assert funcs["short"]["loc"] == 1 + 1 + 54 + 1
    assert funcs["Adaptive.__init__"]["loc"] == 2
    r = cs.collect(pkg, max_module=400, max_function=60)
    assert [(f["file"], f["line"], f["name"]) for f in r["long_functions"]] == [("pkg/long.py", 1, "long")]
    assert r["longest_function"]["name"] == "long"


def test_import_cycles(cs, pkg):
    edges = cs.import_edges(pkg)
    kinds = {(e["src"], e["dst"]): e["kind"] for e in edges}
    assert kinds[("pkg.b", "pkg.a")] == "top"  # re-export followed to the defining module
    assert kinds[("pkg.a", "pkg.sub.m")] == "top"
    assert kinds[("pkg.sub.m", "pkg.rk")] == "top"  # two-dot relative import
    assert kinds[("pkg.d", "pkg.c")] == "deferred"
    assert kinds[("pkg.e", "pkg.a")] == "typing"
    assert ("pkg.b", "pkg") not in kinds
    cycles = cs.import_cycles(pkg)
    assert [c["modules"] for c in cycles["top"]] == [["pkg.a", "pkg.b"]]
    assert [c["modules"] for c in cycles["deferred_only"]] == [["pkg.c", "pkg.d"]]
    closing = [(e["src"], e["dst"], e["line"]) for e in cycles["deferred_only"][0]["edges"] if e["kind"] == "deferred"]
    assert closing == [("pkg.d", "pkg.c", 2)]


def test_rk_solve_calls_and_adaptive_branches(cs, pkg):
    assert [(c["file"], c["line"]) for c in cs.rk_solve_calls(pkg)] == [
        ("pkg/solvers.py", 14), ("pkg/solvers.py", 15), ("pkg/sub/m.py", 5)]
    assert [(b["file"], b["line"]) for b in cs.adaptive_branches(pkg)] == [
        ("pkg/solvers.py", 13), ("pkg/solvers.py", 15)]


def test_summary_report_and_exit_codes(cs, pkg, capsys):
    r = cs.collect(pkg, max_module=50, max_function=60)
    assert r["summary"] == {"modules_over_limit": 1, "functions_over_limit": 1, "import_cycles": 1,
                            "import_cycles_deferred_only": 1, "rk_solve_call_sites": 3, "adaptive_branches": 2}
    assert cs.main(["--package", str(pkg)]) == 0
    text = capsys.readouterr().out
    assert "pkg/long.py:1 long 68" in text and "pkg/solvers.py:13" in text and "pkg.a -> pkg.b" in text
    assert cs.main(["--package", str(pkg), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["rk_solve_call_sites"] == 3
    assert cs.main(["--package", str(pkg), "--check"]) == 1
    capsys.readouterr()
    clean = pkg.parent / "clean"
    (clean / "x.py").parent.mkdir()
    (clean / "x.py").write_text("def f():\n    return 1\n")
    assert cs.main(["--package", str(clean), "--check"]) == 0
