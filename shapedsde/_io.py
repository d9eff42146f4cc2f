"""Output files of a run: checked before any computation, written atomically.

A run writes OUT.npy (its data), optionally extra arrays OUT.<tag>.npy, and the
metadata OUT.json. `prepare_output` checks the paths up front (a .npy name, a
writable folder, no directory in the place of a file), so a bad --out fails in
a second instead of after the computation. `write_outputs` writes every file to
a temporary file in the target folder, fsyncs it, and only then renames them
all into place (SIGINT deferred during the renames), so a failed or interrupted
run leaves the previous result intact and no partial file behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TEMP_SUFFIX = ".partial"


@dataclass(frozen=True)
class Output:
    """Where one run's files go: `data` (OUT.npy), `meta` (OUT.json), `extras` by tag."""

    data: Path
    meta: Path
    extras: dict[str, Path] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.data, *self.extras.values(), self.meta]


def prepare_output(out: str | os.PathLike[str], extras: Sequence[str] = (),
                   option: str = "--out") -> Output:
    """Check (and create the parent folders of) an output OUT.npy before any work.

    extras: tags of extra arrays, written to OUT.<tag>.npy. Raises ValueError when
    the name is not a .npy file, the folder cannot be created or written, or a
    directory stands where one of the files must go.
    """
    p = Path(out)
    if p.suffix != ".npy" or p.name == ".npy":
        raise ValueError(f"{option} must name a .npy file; got {out}")
    res = Output(p, p.with_suffix(".json"), {t: p.with_suffix(f".{t}.npy") for t in extras})
    writable_folder(p.parent, f"the folder {p.parent} of {option} {out}")
    for path in res.paths():
        if path.is_dir():
            raise ValueError(f"{option} {out}: {path} is a directory; remove it or choose "
                             "another name")
    return res


def writable_folder(folder: str | os.PathLike[str], name: str) -> Path:
    """Create `folder` (and its parents) and prove it writable by a real write, before any
    work; ValueError "cannot create / cannot write to {name}: why" otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot create {name}: {folder} is a file")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {name}: {err.strerror or err}") from None
    try:  # a real write, since os.access is not reliable (e.g. for root, or on NFS)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot write to {name}: {err.strerror or err}") from None
    return folder


def write_outputs(output: Output, data: np.ndarray, meta: Mapping[str, Any],
                  extras: Mapping[str, np.ndarray] | None = None) -> None:
    """Write data, extras and meta to temporary files, fsync, then rename all into place.

    On any error or interrupt before the renames, the temporary files are removed
    and the files already at the target paths are left as they were.
    """
    extras = dict(extras or {})
    missing = sorted(set(extras) - set(output.extras))
    if missing:
        raise ValueError(f"no output path for extra arrays {missing}")
    def write_meta(f: Any) -> None:  # encoded last, after the arrays are staged
        f.write((json.dumps(dict(meta), indent=2, default=str) + "\n").encode())

    _write_all([(output.data, lambda f: np.save(f, data)),
                *[(output.extras[tag], lambda f, a=arr: np.save(f, a))
                  for tag, arr in extras.items()],
                (output.meta, write_meta)])
    _fsync_dir(output.data.parent)


def _write_all(files: list[tuple[Path, Any]]) -> None:
    """Stage every (path, write(file)) to a temporary file, then rename all into place;
    on any error or interrupt before the renames, remove the temporary files."""
    staged: list[tuple[Path, Path]] = []
    try:
        for final, write in files:
            staged.append((_stage(final, write), final))
        with _sigint_deferred():
            for tmp, final in staged:
                os.replace(tmp, final)
            staged = []
    finally:
        for tmp, _ in staged:
            with contextlib.suppress(OSError):
                tmp.unlink()


def write_files(files: Mapping[Path, bytes]) -> None:
    """Write several files atomically as one batch (temporary files, fsync, renames).

    On any error or interrupt before the renames, nothing at the target paths changes.
    """
    _write_all([(Path(final), lambda f, d=data: f.write(d)) for final, data in files.items()])
    for folder in {Path(p).parent for p in files}:
        _fsync_dir(folder)


def _stage(final: Path, write: Any) -> Path:
    """A temporary file beside `final`, filled by write(file), flushed and fsynced."""
    fd, name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=TEMP_SUFFIX)
    tmp = Path(name)
    try:
        os.chmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a result is a normal file
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return tmp


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold SIGINT (Ctrl-C) until the block ends, then deliver it (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda *a: got.append(a))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):
            previous(*got[0])
        elif got and previous == signal.SIG_DFL:
            raise KeyboardInterrupt


def _fsync_dir(folder: Path) -> None:
    """Make the renames durable where the platform allows it."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def jsonable(x: Any) -> Any:
    """`x` as plain JSON values: string keys, lists for tuples and arrays (numpy or torch),
    Python numbers for numpy scalars, and None for a non-finite float (strict JSON has no
    NaN or inf; readers map None back to NaN). Anything else unknown becomes its str."""
    if isinstance(x, Mapping):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "tolist") and not isinstance(x, (np.generic, str)):  # arrays, tensors
        return jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return float(x) if np.isfinite(x) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def dumps(x: Any, indent: int | None = 1) -> str:
    """Strict JSON text of `jsonable(x)`."""
    return json.dumps(jsonable(x), indent=indent, allow_nan=False)
