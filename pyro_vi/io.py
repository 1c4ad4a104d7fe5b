"""Atomic file output: a file is either absent, or complete; never half-written.

Writes go to a temporary file in the same directory, are flushed and fsynced, then renamed over
the target (``os.replace`` is atomic on POSIX), so a crash or a failed write leaves the previous
version intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

from pyro_vi.errors import OutputError

__all__ = [
    "check_output_path", "prepare_output_dir", "check_writable", "lock_output", "OWNER_FILE", "FILES_FILE", "claim_output",
    "run_output", "atomic_write", "write_json", "save_figure",
]

def check_output_path(path: str | os.PathLike) -> Path:
    """Check an output path's spelling before anything touches it (no file system writes): not
    empty, no component longer than the file system allows (ENAMETOOLONG), not longer overall.
    Call it first, before e.g. ``Path(out, "checkpoint.pt").exists()``, which raises on such a path.

    Raises:
        OutputError: one line naming the problem.
    """
    if str(path).strip() == "":
        raise OutputError("the output directory is empty (--out ''); pass a directory, e.g. --out runs/mine")
    path = Path(path)
    anchor = next((parent for parent in [path, *path.parents] if _exists_quietly(parent)), Path("."))
    try:
        name_max = os.pathconf(anchor, "PC_NAME_MAX")
        path_max = os.pathconf(anchor, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    longest = max((len(os.fsencode(part)) for part in path.parts), default=0)
    if longest > name_max:
        raise OutputError(
            f"output path {_short(path)!r} has a component of {longest} bytes, more than the {name_max} this "
            "file system allows (file name too long); choose a shorter --out"
        )
    if len(os.fsencode(str(path.absolute()))) >= path_max:
        raise OutputError(f"output path {_short(path)!r} is longer than the {path_max} bytes allowed; choose a shorter --out")
    return path


def _exists_quietly(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def prepare_output_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check it is a writable directory.

    Raises:
        OutputError: if ``path`` is empty, a file, too long, or cannot be created or written.
    """
    path = check_output_path(path)
    try:
        if path.exists() and not path.is_dir():
            raise OutputError(f"output path {str(path)!r} is a file, not a directory; pass a directory with --out")
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        if isinstance(error, OutputError):
            raise
        raise OutputError(f"cannot create output directory {_short(path)!r} ({error.strerror or error}); choose another --out") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(path)!r} is not writable; choose another --out")
    return path


def check_writable(path: str | os.PathLike) -> None:
    """Check, before any work, that ``atomic_write(path, ...)`` can succeed: the parent is an
    existing writable directory, ``path`` is not a directory, and the name is not too long. Creates
    and removes one temporary file next to ``path``; writes nothing else.

    Raises:
        OutputError: one line naming the path and what is wrong.
    """
    path = Path(path)
    if str(path).strip() == "":
        raise OutputError("the output path is empty; pass a file path")
    parent = path.parent
    try:
        if path.is_dir():
            raise OutputError(f"{_short(path)!r} is a directory; remove it or choose another path")
        if not parent.is_dir():
            raise OutputError(f"the directory of {_short(path)!r} does not exist or is not a directory; create it or choose another path")
        descriptor, temporary = tempfile.mkstemp(dir=parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(descriptor)
        os.unlink(temporary)
    except OutputError:
        raise
    except OSError as error:
        raise OutputError(f"cannot write {_short(path)!r} ({error.strerror or error}); choose another path") from None


def _short(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 120 else text[:60] + "..." + text[-57:]


@contextlib.contextmanager
def lock_output(directory: str | os.PathLike) -> Iterator[Path]:
    """Hold an advisory lock on an output directory (``fcntl.flock`` on ``directory/.lock``) for
    the duration of a run; a second run into the same directory is refused. The lock file is
    removed on exit; the lock is released by the kernel if the process dies.

    Raises:
        OutputError: another process holds the lock, or the lock file cannot be created.
    """
    import fcntl

    directory = Path(directory)
    lock_path = directory / ".lock"
    while True:
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise OutputError(f"cannot create the lock file {_short(lock_path)!r} ({error.strerror}); choose another --out") from None
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise OutputError(
                f"another pyro-vi run is writing to {_short(directory)!r} (it holds {lock_path.name}); "
                "wait for it to finish or choose another --out"
            ) from None
        except OSError:  # a filesystem without flock: run unlocked rather than not at all
            os.close(descriptor)
            yield directory
            return
        try:  # the previous holder may have removed the file we opened: lock the current one
            same = os.stat(lock_path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(descriptor)
    try:
        yield directory
    finally:
        try:
            os.unlink(lock_path)  # while still holding it: see the inode check above
        except OSError:
            pass
        os.close(descriptor)


OWNER_FILE = ".pyro-vi-command"  # in OUT: the name of the command whose outputs it holds
FILES_FILE = ".pyro-vi-files"  # in OUT: the files that command wrote, one name a line


def claim_output(directory: str | os.PathLike, command: str, overwrite: bool = False, resume: bool = False) -> None:
    """The one output policy of every command: ``directory`` may hold files only of an earlier run
    of ``command`` (recorded in ``directory/.pyro-vi-command``); another command's outputs, or a
    user's own files, are refused unless ``overwrite``. With ``overwrite``, what the previous owner
    wrote (listed in ``directory/.pyro-vi-files``) is removed first; a user's own files are left
    (the new outputs replace those of the same name). ``resume`` accepts an unowned directory (the
    caller has checked the checkpoint in it is its own). Then ``command`` is recorded as the owner.
    A refusal writes nothing.

    Raises:
        OutputError: the directory holds outputs of another command, or files of a user.
    """
    directory = Path(directory)
    owner = _read_lines(directory / OWNER_FILE)[:1]
    owner = owner[0] if owner else None
    others = sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    if others and owner != command and not overwrite and not (resume and owner is None):
        made_by = f"pyro-vi {owner}" if owner else "another run"
        raise OutputError(
            f"{_short(directory)!r} already holds outputs of {made_by} ({', '.join(others[:3])}"
            f"{', ...' if len(others) > 3 else ''}); choose another --out, or pass --overwrite to replace them"
        )
    if overwrite and owner is not None:
        for name in _read_lines(directory / FILES_FILE):
            _remove(directory / name)
        (directory / FILES_FILE).unlink(missing_ok=True)
    if owner != command:
        atomic_write(directory / OWNER_FILE, lambda file: file.write(command + "\n"), mode="w")


def _read_lines(path: Path) -> list[str]:
    try:
        return [line.strip() for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    except (OSError, UnicodeDecodeError):
        return []


def _remove(path: Path) -> None:
    """Remove a file (or a folder) a previous run wrote; a name that escapes OUT is ignored."""
    if path.name in ("", ".", "..") or "/" in path.name or path.name.startswith("."):
        return
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        raise OutputError(f"cannot remove {_short(path)!r} of the previous run ({error.strerror or error}); remove it, or choose another --out") from None


def _entries(directory: Path) -> dict[str, tuple[int, int]]:
    """``{name: (inode, mtime)}`` of the visible entries: what a run wrote shows as new or changed."""
    found = {}
    try:
        paths = list(directory.iterdir())
    except OSError:  # OUT removed or unreadable meanwhile
        return found
    for path in paths:
        if not path.name.startswith("."):
            try:
                info = path.stat()
            except OSError:
                continue
            found[path.name] = (info.st_ino, info.st_mtime_ns)
    return found


def _record_written(directory: Path, before: dict[str, tuple[int, int]]) -> None:
    """Add the entries this run created or replaced to ``.pyro-vi-files``."""
    after = _entries(directory)
    written = {name for name, entry in after.items() if before.get(name) != entry}
    listed = set(_read_lines(directory / FILES_FILE))
    names = sorted((listed & set(after)) | written)
    if names != sorted(listed):
        try:
            atomic_write(directory / FILES_FILE, lambda file: file.write("".join(f"{name}\n" for name in names)), mode="w")
        except OSError:
            pass  # a full disk: the list is a convenience for a later --overwrite


@contextlib.contextmanager
def run_output(path: str | os.PathLike, command: str, overwrite: bool = False, resume: bool = False) -> Iterator[Path]:
    """The output directory of one run of ``command``: created if needed (``prepare_output_dir``),
    locked for the run (``lock_output``), refused if it holds another command's outputs or a user's
    files, cleared of the previous owner's with ``overwrite`` (``claim_output``). The files the run
    writes are recorded (``.pyro-vi-files``) for a later ``--overwrite``. If the run fails and the
    directory did not exist before, it is removed again when it holds nothing but hidden files.

    Raises:
        OutputError: see ``prepare_output_dir``, ``lock_output`` and ``claim_output``.
    """
    existed = Path(path).exists() if str(path).strip() else False
    out = prepare_output_dir(path)
    locked = False
    try:
        with lock_output(out):
            locked = True
            claim_output(out, command, overwrite, resume)
            before = _entries(out)
            try:
                yield out
            finally:
                _record_written(out, before)
    except BaseException:
        if locked and not existed:
            _remove_if_empty(out)
        raise


def _remove_if_empty(directory: Path) -> None:
    try:
        if all(p.name in (OWNER_FILE, FILES_FILE, ".lock") for p in directory.iterdir()):
            (directory / OWNER_FILE).unlink(missing_ok=True)
            (directory / FILES_FILE).unlink(missing_ok=True)
            directory.rmdir()
    except OSError:
        pass


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(file)`` on a temporary file, fsync it and rename it onto ``path``."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(descriptor, mode) as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically.

    Raises:
        OutputError: the write failed (disk full, permissions); an earlier file is intact.
    """
    text = json.dumps(data, indent=2, sort_keys=False, default=_to_builtin) + "\n"
    _write_or_explain(path, lambda file: file.write(text), "w")


def save_figure(figure, path: str | os.PathLike, **kwargs) -> None:
    """Save a matplotlib figure atomically (format from the suffix).

    Raises:
        OutputError: the write failed (disk full, permissions); an earlier file is intact.
    """
    path = Path(path)
    _write_or_explain(path, lambda file: figure.savefig(file, format=path.suffix.lstrip("."), **kwargs), "wb")


def _write_or_explain(path: str | os.PathLike, write: Callable[[Any], None], mode: str) -> None:
    try:
        atomic_write(path, write, mode)
    except OSError as error:  # PIL and matplotlib raise the writer's OSError (ENOSPC) as is
        if isinstance(error, OutputError):
            raise
        raise OutputError(
            f"could not write {_short(Path(path))!r} ({error.strerror or error}); free some space or choose another --out"
        ) from None


def _to_builtin(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialize {type(value).__name__} to JSON")
