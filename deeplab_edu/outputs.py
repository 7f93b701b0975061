"""Where a command may write: one rule for every output location, so that no work is lost.

The lowest layer of the package (standard library only): the writers (:mod:`deeplab_edu.fetch`'s
atomic writes, checkpoints, results, the generated data set) and every command go through it.

- **Only files it owns.** A command replaces a file only if it wrote it (its own format or
  manifest says so); any other file in its way is refused, naming the file and the flag that
  forces it (:func:`refuse_foreign`).
- **Never an input.** An output path that names one of the command's own inputs, or a folder,
  is refused before anything runs (:func:`refuse_input`).
- **One run per folder.** A run folder is locked while a run uses it; a second process gets
  one line naming the holder's process (:func:`locked`, :func:`run_lock`).
- **No leftovers.** A file or folder is written under a temporary name beside it
  (:func:`temporary_path`) and renamed when complete; the temporaries of a process that died
  (killed while saving a checkpoint, say) are removed by the next writer of the same path
  (:func:`sweep_temporaries`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path

try:  # file locks are POSIX-only; without them (Windows) a run folder is not locked
    import fcntl
except ImportError:
    fcntl = None  # type: ignore[assignment]

RUN_LOCK = ".train.lock"


def temporary_path(path: str | Path) -> Path:
    """Where this process writes ``path`` before renaming it into place: ``.NAME.tmp-PID``
    beside it (the process ID lets :func:`sweep_temporaries` tell a live writer's from a dead
    one's)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def sweep_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` (:func:`temporary_path`) left by processes that no
    longer exist; a live process's are kept. Returns what was removed.

    Process IDs can only be checked on POSIX; elsewhere nothing is removed.
    """
    path = Path(path)
    removed: list[Path] = []
    if os.name != "posix" or not path.parent.is_dir():
        return removed
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            if stale.is_dir() and not stale.is_symlink():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)
            removed.append(stale)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except OSError:  # it exists but belongs to another user: leave its files
        return True
    return True


def refuse_input(out: str | Path, inputs: Mapping[str, str | Path | None], flag: str) -> None:
    """Refuse an output path that is a folder or names one of the command's inputs.

    Args:
        out: the output file path.
        inputs: each input's flag (``"--checkpoint"``) and path (None: not given).
        flag: the output's own flag, for the message (``"--out"``).

    Raises:
        IsADirectoryError: if ``out`` is a folder.
        ValueError: if ``out`` is one of ``inputs`` (naming the flag).
    """
    out = Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"{flag} {out} is a folder; expected a file path")
    for name, path in inputs.items():
        if path is not None and out.resolve() == Path(path).resolve():
            raise ValueError(
                f"{flag} {out} is this command's {name} input; writing there would "
                f"destroy it: choose another {flag}"
            )


def refuse_foreign(path: str | Path, *, owned: bool, writer: str, force: str | None) -> None:
    """Refuse to replace an existing file that ``writer`` did not write.

    Args:
        path: the file about to be written.
        owned: whether ``path`` is ``writer``'s own (checked by the caller, from the file's
            format or manifest).
        writer: who writes it, for the message (``"evaluate"``).
        force: the flag that replaces it anyway (None: nothing can).

    Raises:
        FileExistsError: if ``path`` exists and is not owned (naming it and ``force``).
    """
    path = Path(path)
    if path.exists() and not owned:
        hint = f", or pass {force} to replace it" if force else " (or move it away)"
        raise FileExistsError(
            f"{path} exists and was not written by {writer}; choose another location{hint}"
        )


@contextlib.contextmanager
def locked(path: str | Path, *, wait: bool = True, what: str = "another process") -> Iterator[None]:
    """Hold the lock file ``path`` (its folder is created): with ``wait``, until the holder
    releases it; without, fail at once. The holder's PID is written into the file, and the
    holder may delete the file before it releases it (a waiting process then takes a new one).
    Without ``fcntl`` (Windows) nothing is locked.

    Raises:
        BlockingIOError: without ``wait``, if the file is held (naming ``what`` and its PID).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    while True:
        handle = open(path, "a+")  # noqa: SIM115 - closed below or by the with block
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise BlockingIOError(
                f"{path.parent} is in use by {what} (process {holder}); wait for it to finish, "
                "or use another folder"
            ) from None
        # the holder before us may have deleted the file when it finished: a lock on a deleted
        # file excludes nobody, so take the file now at that path instead
        if path.exists() and os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
            break
        handle.close()
    with handle:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def run_lock(run_folder: str | Path) -> contextlib.AbstractContextManager[None]:
    """Hold ``run_folder`` for one training run: a second run on the same folder, in this
    process or another, fails at once instead of mixing its files with the first one's
    (:func:`locked` without waiting)."""
    return locked(Path(run_folder) / RUN_LOCK, wait=False, what="another training run")
