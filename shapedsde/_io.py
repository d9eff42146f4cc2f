"""Input and output files of a run: checked before any computation, written atomically.

`load_npy` reads an input .npy after checking its header against the file's size (a
tiny file whose header claims a huge shape is refused, not allocated).

A run writes OUT.npy (its data), optionally extra arrays OUT.<tag>.npy (tags from
SIDECARS), and the metadata OUT.json: one result set. `prepare_output` checks the paths
up front (a .npy name, a writable folder, no directory in the place of a file, no input
among them), so a bad --out fails in a second instead of after the computation; it
creates no folder (a run that then fails leaves none behind). `write_outputs` writes
every file to a temporary file in the target folder, fsyncs it, and only then, holding a
lock on the folder, renames them all into place and removes the sidecars of an earlier
result set that this one has not (a rerun leaves no stale OUT.exit.npy); SIGINT, SIGTERM
and SIGHUP are deferred during the renames, and during the staging they remove the
temporary files before the process ends as the signal asks. So a failed or interrupted
run leaves the previous result intact and no partial file behind, and two runs into one
--out leave one run's complete set.

`child` joins a name given by a user to a folder, refusing any name that would leave it.
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
#: Tags of the extra arrays OUT.<tag>.npy a result set may hold (every command's).
SIDECARS = ("diffusion", "exploded", "exit", "trajectory", "times", "spectrum")
#: Signals during which a write cleans up (deferred during the renames).
_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP")
                 if hasattr(signal, n))
NPY_MAGIC = b"\x93NUMPY"


def load_npy(path: str | os.PathLike[str], name: str) -> np.ndarray:
    """A numeric array from a .npy file; ValueError naming the file and the problem for a
    missing, empty, non-.npy, object, truncated or corrupt file, and for a header whose
    shape needs more bytes than the file has (checked before anything is allocated)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{name} file not found: {path}")
    try:
        with p.open("rb") as f:
            head = f.read(len(NPY_MAGIC))
            if head == NPY_MAGIC:
                f.seek(0)
                _check_npy_header(f, p.stat().st_size, name, path)
    except OSError as err:
        raise ValueError(f"cannot read {name} file {path}: {err.strerror or err}") from None
    if not head:
        raise ValueError(f"cannot read {name} file {path}: it is empty (0 bytes); write it with "
                         "numpy.save")
    if head[:2] == b"PK":
        raise ValueError(f"cannot read {name} file {path}: it is a .npz archive; save the one "
                         "matrix with numpy.save")
    if head != NPY_MAGIC:
        raise ValueError(f"cannot read {name} file {path}: not a .npy file (no NumPy header; "
                         "write it with numpy.save)")
    try:
        arr = np.load(p, allow_pickle=False)
    except ValueError as err:
        if "pickled" in str(err) or "Object arrays" in str(err):
            raise ValueError(f"cannot read {name} file {path}: it holds Python objects (object "
                             "dtype), not numbers; save a float array") from None
        raise ValueError(f"cannot read {name} file {path} as a .npy array: {err}") from None
    except (OSError, EOFError, MemoryError) as err:
        raise ValueError(f"cannot read {name} file {path} as a .npy array (truncated or "
                         f"corrupt?): {type(err).__name__}: {err}") from None
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} file {path} must hold real numbers; got dtype {arr.dtype}")
    return arr


def _check_npy_header(f: Any, size: int, name: str, path: Any) -> None:
    """The header's shape and dtype need at most the bytes after the header."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = read(f, max_header_size=2**16)
    except Exception as err:  # a malformed header: np.load would fail on it too
        raise ValueError(f"cannot read {name} file {path} as a .npy array: bad header: "
                         f"{err}") from None
    if dtype.hasobject:
        return  # refused with its own message by np.load(allow_pickle=False)
    count = 1
    for k in shape:
        count *= int(k)
    need, have = count * dtype.itemsize, size - f.tell()
    if need > have:
        raise ValueError(f"cannot read {name} file {path}: its header claims shape {shape} of "
                         f"{dtype} ({need:.3g} bytes) but the file holds {have} bytes after "
                         "the header (truncated or corrupt)")


def child(folder: str | os.PathLike[str], name: str, what: str) -> Path:
    """folder / name for a plain file name `name` given by the user; ValueError for an
    empty name, a path separator, '.', '..' or an absolute path (a write outside folder)."""
    seps = {os.sep, *([os.altsep] if os.altsep else []), "/"}
    if (not isinstance(name, str) or not name or name in (".", "..")
            or any(c in name for c in seps) or "\0" in name or os.path.isabs(name)):
        raise ValueError(f"{what} must be a plain file name inside {folder} (no path separator, "
                         f"'..' or absolute path); got {name!r}")
    return Path(folder) / name


@dataclass(frozen=True)
class Output:
    """Where one run's files go: `data` (OUT.npy), `meta` (OUT.json), `extras` by tag."""

    data: Path
    meta: Path
    extras: dict[str, Path] = field(default_factory=dict)

    def paths(self) -> list[Path]:
        return [self.data, *self.extras.values(), self.meta]


def prepare_output(out: str | os.PathLike[str], extras: Sequence[str] = (),
                   option: str = "--out",
                   inputs: Mapping[str, str | os.PathLike[str] | None] | None = None
                   ) -> Output:
    """Check an output OUT.npy before any work (creating nothing).

    extras: tags of extra arrays (from SIDECARS), written to OUT.<tag>.npy. inputs:
    option -> path of the run's input files, none of which the result set may replace.
    Raises ValueError when the name is not a .npy file, its folder cannot be created or
    written, a directory stands where one of the files must go, or a file of the set is
    an input.
    """
    p = Path(out)
    if p.suffix != ".npy" or p.name == ".npy" or p.name.endswith(TEMP_SUFFIX + ".npy"):
        raise ValueError(f"{option} must name a .npy file; got {out}")
    unknown = sorted(set(extras) - set(SIDECARS))
    if unknown:
        raise ValueError(f"no sidecar tags {unknown}; known: {SIDECARS}")
    res = Output(p, p.with_suffix(".json"), {t: p.with_suffix(f".{t}.npy") for t in extras})
    writable_folder(p.parent, f"the folder {p.parent} of {option} {out}")
    for path in res.paths():
        if path.is_dir():
            raise ValueError(f"{option} {out}: {path} is a directory; remove it or choose "
                             "another name")
    stale = [p.with_suffix(f".{t}.npy") for t in SIDECARS]
    for opt, given in (inputs or {}).items():
        if given is None:
            continue
        for path in [*res.paths(), *stale]:
            if _same_file(path, Path(given)):
                raise ValueError(f"{option} {out} would overwrite the input {opt} {given} "
                                 f"(as {path}); choose another {option}")
    return res


def _same_file(a: Path, b: Path) -> bool:
    """Whether a and b name one file (the same path, or links to one file)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return os.path.abspath(a) == os.path.abspath(b)
    except OSError:
        return False


def writable_folder(folder: str | os.PathLike[str], name: str, *, create: bool = False
                    ) -> Path:
    """Prove before any work that `folder` can be created (its nearest existing ancestor
    is a folder one can write in) or, where it exists, written to, by a real write;
    ValueError "cannot create / cannot write to {name}: why" otherwise. The folder itself
    is created only with `create` (else by the write that needs it), so a run that fails
    leaves no empty folder behind."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"cannot create {name}: {folder} is a file")
    base = folder
    while not base.exists():
        if base.parent == base:
            break
        base = base.parent
    if not base.is_dir():
        raise ValueError(f"cannot create {name}: {base} is a file")
    verb = "write to" if base == folder else "create"
    try:  # a real write, since os.access is not reliable (e.g. for root, or on NFS)
        fd, probe = tempfile.mkstemp(dir=base, prefix=".probe.", suffix=TEMP_SUFFIX)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"cannot {verb} {name}: {err.strerror or err}") from None
    if create:
        make_folder(folder, name)
    return folder


def make_folder(folder: str | os.PathLike[str], name: str = "the output folder") -> Path:
    """Create `folder` and its parents (ValueError naming it where that fails)."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"cannot create {name} {folder}: {err.strerror or err}") from None
    return Path(folder)


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

    stale = [output.data.with_suffix(f".{t}.npy") for t in SIDECARS if t not in extras]
    _write_all([(output.data, lambda f: np.save(f, data)),
                *[(output.extras[tag], lambda f, a=arr: np.save(f, a))
                  for tag, arr in extras.items()],
                (output.meta, write_meta)], remove=stale)
    _fsync_dir(output.data.parent)


class _Signalled(BaseException):
    """SIGTERM or SIGHUP arrived while files were staged: unwound to remove them."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _write_all(files: list[tuple[Path, Any]], remove: Sequence[Path] = ()) -> None:
    """Stage every (path, write(file)) to a temporary file, then, holding a lock on each
    folder, rename all into place and remove the files `remove` (an earlier set's stale
    sidecars). On any error or signal before the renames, remove the temporary files;
    a SIGTERM or SIGHUP is then delivered again as it was sent."""
    staged: list[tuple[Path, Path]] = []
    for folder in dict.fromkeys(Path(final).parent for final, _ in files):
        make_folder(folder)
    try:
        with _signals_unwind():
            for final, write in files:
                staged.append((_stage(final, write), final))
            with _signals_deferred(), _folder_locks([f for _, f in staged]):
                for tmp, final in staged:
                    os.replace(tmp, final)
                staged = []
                for path in remove:
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()
    except _Signalled as sig:
        _cleanup(staged)
        staged = []
        signal.raise_signal(sig.signum)  # the handler in place before the write
        raise SystemExit(128 + sig.signum) from None  # pragma: no cover (a handler returned)
    finally:
        _cleanup(staged)


def _cleanup(staged: list[tuple[Path, Path]]) -> None:
    for tmp, _ in staged:
        with contextlib.suppress(OSError):
            tmp.unlink()


@contextlib.contextmanager
def _folder_locks(paths: Sequence[Path]) -> Iterator[None]:
    """An exclusive lock (flock) on each folder of `paths` in a fixed order, so two runs'
    renames into one folder do not interleave (where the platform has flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        yield
        return
    fds = []
    try:
        for folder in sorted({str(Path(p).parent.resolve()) for p in paths}):
            try:
                fd = os.open(folder, os.O_RDONLY)
            except OSError:
                continue
            fds.append(fd)
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        for fd in fds:
            os.close(fd)  # releases the lock


def write_files(files: Mapping[Path, bytes], remove: Sequence[Path] = ()) -> None:
    """Write several files atomically as one batch (temporary files, fsync, renames), and
    remove the files `remove` (an earlier set's, not part of this one) with the renames.

    On any error or interrupt before the renames, nothing at the target paths changes.
    """
    _write_all([(Path(final), lambda f, d=data: f.write(d)) for final, data in files.items()],
               remove=[Path(p) for p in remove])
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
def _signals_unwind() -> Iterator[None]:
    """While files are staged, SIGTERM and SIGHUP (whose default ends the process at once,
    with no clean-up) unwind as _Signalled instead; SIGINT already unwinds as
    KeyboardInterrupt. Main thread only; handlers a program set itself are kept."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}

    def unwind(signum: int, frame: Any) -> None:
        raise _Signalled(signum)

    try:
        for sig in _SIGNALS:
            if sig != signal.SIGINT and signal.getsignal(sig) == signal.SIG_DFL:
                previous[sig] = signal.signal(sig, unwind)
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT, SIGTERM and SIGHUP until the block ends, then deliver them (main
    thread only): the renames of a result set are not cut in half."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[Any] = []
    previous = {sig: signal.signal(sig, lambda *a: got.append(a)) for sig in _SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for signum, frame in got[:1]:
            handler = previous[signum]
            if callable(handler):
                handler(signum, frame)
            elif handler == signal.SIG_DFL and signum == signal.SIGINT:
                raise KeyboardInterrupt
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


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
