"""The README's command-line examples run as written, in order, in one fresh directory.

The examples are the shell lines of the README's "Command line" section (its ```text and ```bash
blocks; a trailing backslash continues a line, ``#`` starts a comment). Skipped: ``pip install`` lines,
``torchrun`` lines (tests/test_distributed.py and tests/test_faults.py run torchrun) and lines that
need a GPU (``--device cuda``) unless CUDA is here. Each example is one test case, run in README order
in a shared directory, so that later commands see what earlier ones wrote (as a user would).

Marked ``slow`` (``pytest -m "not slow"`` leaves them out): the two tuning examples (about 25 s and
2.5 minutes, the second fitting solver weights) and the example that reads their output, and the
README's "first five lines" (Python), run as one case (about a minute). The rest of the file takes
about two minutes (the default ``diffsolve bench`` is 35 s of it); times of 2026-12-07 on this
machine's two cores. Under pytest-xdist the examples run in two ordered groups (``xdist_group``): the
tuning chain and the rest, each on one worker in README order (neither reads what the other writes).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# the examples too slow for the suite (minutes), and those that read what one of them wrote
SLOW = ("diffsolve tune ", "--grid w.json")


def _section(title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert m, f"README has no '## {title}' section"
    return m.group(1)


def _commands(section: str) -> list[str]:
    """The shell lines of a section's ```text / ```bash blocks, continuations joined, comments dropped."""
    out = []
    for block in re.findall(r"^```(?:text|bash)\n(.*?)^```", section, re.S | re.M):
        for line in re.sub(r"\\\n\s*", " ", block).splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                out.append(line)
    return out


COMMANDS = _commands(_section("Command line"))


def _skip_reason(cmd: str) -> str | None:
    if cmd.startswith("pip install"):
        return "an install line"
    if cmd.startswith("torchrun"):
        return "torchrun: run by tests/test_distributed.py and tests/test_faults.py"
    if "--device cuda" in cmd and not torch.cuda.is_available():
        return "needs a GPU"
    return None


def _case(i, cmd):
    slow = any(s in cmd for s in SLOW)
    # in order on one worker under pytest-xdist: the tuning chain (tune, then sample --grid w.json) apart
    # from the rest, which also reads what earlier examples wrote
    marks = [pytest.mark.xdist_group("readme-tune" if slow else "readme"), *([pytest.mark.slow] if slow else [])]
    return pytest.param(cmd, id=f"{i:02d}-{cmd[:60]}", marks=marks)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One fresh directory for all the examples, as a user's working directory."""
    return tmp_path_factory.mktemp("readme")


def test_the_readme_shows_commands():
    assert len(COMMANDS) >= 10 and COMMANDS[0] == "diffsolve bench"
    # each bench example that changes the run settings writes its own --out (a shared one is refused)
    outs = [shlex.split(c)[shlex.split(c).index("--out") + 1] if "--out" in c else "bench-results"
            for c in COMMANDS if " bench" in c and "--resume" not in shlex.split(c)]
    assert len(outs) == len(set(outs)), outs


@pytest.mark.parametrize("cmd", [_case(i, c) for i, c in enumerate(COMMANDS)])
def test_readme_command(cmd, workdir):
    reason = _skip_reason(cmd)
    if reason:
        pytest.skip(reason)
    argv = shlex.split(cmd)
    exe = shutil.which(argv[0])
    if argv[0] == "diffsolve" and exe is None:  # not installed as a script here: the same through python -m
        argv = [sys.executable, "-m", "diffsolve", *argv[1:]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    if "--out" in argv:
        assert (workdir / argv[argv.index("--out") + 1]).exists()


@pytest.mark.slow
def test_first_five_lines(tmp_path):
    """The README's Python example, as written (tune_steps with its defaults takes minutes)."""
    block = re.search(r"^```python\n(.*?)^```", _section("The first five lines"), re.S | re.M).group(1)
    proc = subprocess.run([sys.executable, "-c", block + "\nassert out.x.shape == (64, 1, 8, 8) and out.nfe == 10\n"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_tuning_shows_progress_unless_silenced(capsys):
    """tune_steps / tune_solver take minutes with their defaults: they say how far they are on stderr
    (on a terminal by default, ``progress=True`` anywhere) and ``progress=False`` silences them."""
    from diffsolve.bench.problems import get_problem
    from diffsolve.tune import tune_solver, tune_steps

    den = get_problem("ring2d").denoiser()
    kw = dict(pilot=4, fresh=0, max_evals=12, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        tune_steps(den, "unipc", 6, progress=True, **kw)
    err = capsys.readouterr().err
    assert "tune_steps unipc nfe=6: reference solves of 4 seeds" in err and "Nelder-Mead from solve" in err
    for progress in (None, False):  # None: only on a terminal (pytest's stderr is not one)
        with torch.no_grad():
            tune_steps(den, "unipc", 6, progress=progress, **kw)
        assert capsys.readouterr().err == ""
    tune_solver(den, 5, iterations=2, progress=True, **kw)
    err = capsys.readouterr().err
    # its grid search (grid="auto") reports on the same line
    assert "tune_solver nfe=5: Nelder-Mead from solve" in err and "tune_solver nfe=5: Adam from start 2m" in err


def test_tuning_progress_is_on_by_default_on_a_terminal_and_quiet_silences_it(tmp_path, monkeypatch):
    import io

    from diffsolve.bench.problems import get_problem
    from diffsolve.cli import main
    from diffsolve.tune import tune_steps

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    shown = Terminal()
    monkeypatch.setattr(sys, "stderr", shown)
    with torch.no_grad():
        tune_steps(get_problem("ring2d").denoiser(), "unipc", 6, pilot=4, fresh=0, max_evals=12, rtol=1e-5, atol=1e-5)
    text = shown.getvalue()
    assert text.startswith("\r\x1b[K[") and "tune_steps unipc nfe=6: " in text  # one line, updated in place
    assert text.endswith("\r\x1b[K")  # and cleared at the end
    quiet = Terminal()
    monkeypatch.setattr(sys, "stderr", quiet)
    assert main(["tune", "--problem", "ring2d", "--solver", "unipc", "--nfe", "6", "--pilot", "2", "--fresh", "0",
                 "--max-evals", "5", "--out", str(tmp_path / "g.json"), "--quiet"]) == 0
    assert quiet.getvalue() == ""
