r"""The files of long runs that write as they go and can be resumed: ``diffsolve bench`` (rows),
``diffsolve sample --outdir`` (sample files) and ``diffsolve likelihood --out`` (rows).

- :func:`output_dir`: the output folder, created and tried with a write before any work;
- :func:`hold`: the folder held by one run at a time (an advisory ``flock`` on a lock file, released
  by the OS even when the process is killed, so no lock goes stale);
- :func:`write_atomic` / :func:`write_json`: a file written under a hidden temporary name in the
  same folder, then renamed over its name (``os.replace``): readers see the old file or the new
  one, never a part;
- :func:`jsonable` and :func:`settings_diff`: the settings a run records, and what a resumed run
  changed in them.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["output_dir", "hold", "write_atomic", "write_json", "jsonable", "settings_diff"]


def output_dir(path, option: str = "--out", *, create: bool = True) -> Path:
    """The folder ``path`` (``option`` names it in messages), created and tried with a write.

    ``create=False`` checks without creating: a folder that does not exist yet must have a nearest
    existing ancestor that is a folder this process can write in (the check a command makes before
    its other checks, so that a refused run leaves no empty folder behind)."""
    out = Path(os.fspath(path)).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{option} {str(out)!r} is a file; give a folder")
    if not create and not out.exists():
        base = next(p for p in out.absolute().parents if p.exists())
        if not base.is_dir():
            raise ValueError(f"cannot create the folder {str(out)!r} ({option}): {str(base)!r} is a file")
        _write_test(base, out, option)
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot write in the folder {str(out)!r} ({option}): {e.strerror or e}") from None
    _write_test(out, out, option)
    return out


def _write_test(folder: Path, out: Path, option: str) -> None:
    try:
        probe = folder / f".write-test.{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ValueError(f"cannot write in the folder {str(out)!r} ({option}): {e.strerror or e}") from None


@contextlib.contextmanager
def hold(out: Path, lock_name: str, command: str, option: str = "--out"):
    """Hold ``out`` for this run: a second run of ``command`` into it stops with a message instead of
    interleaving its files with this one's. No hold where ``fcntl`` is missing (Windows)."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        f = open(Path(out) / lock_name, "a")
    except OSError as e:
        raise ValueError(f"cannot write in the folder {str(out)!r}: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ValueError(f"another {command} run is writing to {str(out)!r}; wait for it to finish, or "
                             f"give another {option}") from None
        yield


def write_atomic(path, write: Callable[[Path], None] | str | bytes) -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` (or the text / bytes) goes to the hidden
    ``.{stem}.{pid}.tmp{suffix}`` beside it (the suffix kept: image writers read the format from it),
    which is then renamed to ``path``. A failure removes the temporary file; an OSError becomes a
    ValueError naming the file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if isinstance(write, str):
            tmp.write_text(write)
        elif isinstance(write, bytes):
            tmp.write_bytes(write)
        else:
            write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError):
            raise ValueError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def no_space(e: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is the file system's "no space left" (or "over quota")."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    while e is not None:
        if getattr(e, "errno", None) in codes:
            return True
        e = e.__cause__ or e.__context__
    return False


def write_json(path, obj, indent: int | None = 1) -> None:
    write_atomic(path, json.dumps(obj, indent=indent) + "\n")


def jsonable(v):
    """Settings as JSON values, the form they are recorded and compared in (dtypes by name, arrays as
    lists, other objects by their repr without memory addresses)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, torch.dtype):
        return str(v).removeprefix("torch.")
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, Path):
        return str(v)
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if callable(v) and getattr(v, "__name__", None):
        return v.__name__
    return re.sub(r" at 0x[0-9a-f]+", "", repr(v))


def fingerprint(tensors) -> str:
    """16 hex digits of the SHA-256 of tensors' bytes, dtypes and shapes (a network's weights: a run that
    resumes checks it continues with the same ones)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).contiguous().view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def weights_fingerprint(net) -> str | None:
    """The :func:`fingerprint` of a network's parameters and buffers (None for a plain function): what a
    model's name or path does not pin down, recorded by the runs that resume."""
    if not isinstance(net, torch.nn.Module):
        return None
    return fingerprint([*net.parameters(), *net.buffers()])


def settings_diff(recorded: dict, now: dict) -> str:
    """``"key: X there, Y now; ..."`` for every setting that differs ("" when none does)."""
    keys = list(dict.fromkeys([*recorded, *now]))
    return "; ".join(f"{k}: {json.dumps(recorded.get(k))} there, {json.dumps(now.get(k))} now"
                     for k in keys if recorded.get(k) != now.get(k))
