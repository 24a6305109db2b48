r"""The files of long runs that write as they go and can be resumed: ``diffsolve bench`` (rows),
``diffsolve sample --outdir`` (sample files) and ``diffsolve likelihood --out`` (rows).

- :func:`output_dir`: the output folder, created and tried with a write before any work;
- :func:`hold`: the folder held by one run at a time (an advisory ``flock`` on a lock file, released
  by the OS even when the process is killed, so no lock goes stale);
- :func:`write_atomic` / :func:`write_json`: a file written under a hidden temporary name in the
  same folder, then renamed over its name (``os.replace``): readers see the old file or the new
  one, never a part;
- :func:`append_durable`: whole lines appended and on disk, or cut back out;
- :class:`WriteFailed` / :func:`write_failed`: the one error of a write that failed (disk full, over
  quota, an I/O error), saying what is kept and how to go on;
- :func:`jsonable` and :func:`settings_diff`: the settings a run records, and what a resumed run
  changed in them.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["output_dir", "hold", "write_atomic", "write_json", "append_durable", "WriteFailed", "write_failed",
           "jsonable", "settings_diff"]


class WriteFailed(OSError):
    """A file could not be written (disk full, over quota, an I/O error): the input was good, the
    machine failed (``diffsolve`` exits with status 1, not 2). ``str()`` is the one-line message;
    ``errno`` the file system's code, where it gave one."""

    def __init__(self, errno_: int | None, message: str, path=None):
        super().__init__(errno_, message)
        self.message, self.path = message, path

    def __str__(self):
        return self.message


def write_failed(path, e: BaseException, kept: str = "") -> WriteFailed:
    """The error of a failed write to ``path``: ``disk full while writing PATH: why`` where the file system
    said so (:func:`no_space`) or less than 1 MiB is free there (some writers, torch.save among them, report
    a full disk as a short write), else ``cannot write PATH: why``; then ``kept``, what is kept and how to go
    on."""
    why = getattr(e, "strerror", None) or str(e)
    head = f"disk full while writing {path}" if no_space(e) or _free(path) < 2**20 else f"cannot write {path}"
    return WriteFailed(getattr(e, "errno", None), f"{head}: {why}" + (f"; {kept}" if kept else ""), path)


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


def write_atomic(path, write: Callable[[Path], None] | str | bytes, kept: str = "") -> None:
    """Write ``path`` whole or not at all: ``write(tmp)`` (or the text / bytes) goes to the hidden
    ``.{stem}.{pid}.tmp{suffix}`` beside it (the suffix kept: image writers read the format from it),
    which is then renamed to ``path``. A failure removes the temporary file; an OSError becomes
    :class:`WriteFailed` naming the file (and ``kept``: :func:`write_failed`)."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        if isinstance(write, (str, bytes)):
            with open(tmp, "wb") as f:  # on disk before the rename, so a crash leaves the old file or the new
                f.write(write.encode() if isinstance(write, str) else write)
                f.flush()
                os.fsync(f.fileno())
        else:
            write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            raise write_failed(path, e, kept) from None
        raise


def no_space(e: BaseException | None) -> bool:
    """Whether an error, or one it was raised from, is the file system's "no space left" (or "over quota")."""
    codes = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
    while e is not None:
        if getattr(e, "errno", None) in codes:
            return True
        e = e.__cause__ or e.__context__
    return False


def _free(path) -> float:
    """Bytes free on the file system of ``path`` (or of its nearest existing folder); inf where unknown."""
    import shutil

    try:
        return shutil.disk_usage(next(p for p in Path(path).absolute().parents if p.exists())).free
    except (OSError, StopIteration):
        return math.inf


def append_durable(path, text: str, kept: str = "") -> None:
    """Append ``text`` (whole lines) to ``path``, on disk (fsync) when this returns. A write that fails is
    cut back out, so the file ends with its last whole line, and raised as :class:`WriteFailed` (with
    ``kept``: :func:`write_failed`); truncating needs no space."""
    data = memoryview(text.encode())
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    except OSError as e:
        raise write_failed(path, e, kept) from None
    try:
        start = os.fstat(fd).st_size
        while data:  # os.write may write part of it
            data = data[os.write(fd, data):]
        os.fsync(fd)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, start)
        raise write_failed(path, e, kept) from None
    finally:
        os.close(fd)


def write_json(path, obj, indent: int | None = 1, kept: str = "") -> None:
    write_atomic(path, json.dumps(obj, indent=indent) + "\n", kept)


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
