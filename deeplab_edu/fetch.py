"""Files that are whole or absent: checksums, atomic writes and verified downloads.

The first layer of the package, beside :mod:`deeplab_edu.runtime`: the data sets, the VGG-16
weights, checkpoints and results all go through it.

- :func:`atomic_write` writes to a temporary file in the destination's folder, ``fsync``-s it
  and renames it into place (:func:`os.replace` is atomic on one file system), so a crash
  leaves either the old file or the new one, never half of one.
- :func:`download` fetches into a ``.part`` file beside the destination and renames it only once
  its checksum matches the published one; an interrupted transfer is resumed, from the same
  host or a mirror; a file put in place by hand is verified instead of fetched.
- The host of a data set is often down. Every failure says what to do: fetch the file from a
  mirror yourself and put it where the message says.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.client import HTTPException
from pathlib import Path
from typing import IO

from tqdm import tqdm

from deeplab_edu.outputs import locked, sweep_temporaries, temporary_path


class ChecksumError(ValueError):
    """A file's checksum differs from the published one."""


def file_digest(path: str | Path, algorithm: str = "md5", chunk: int = 1 << 20) -> str:
    """The hex digest of a file (``algorithm`` as named by :mod:`hashlib`), read in chunks."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify(path: str | Path, checksum: str, algorithm: str = "md5") -> None:
    """Check a file against its published checksum.

    Args:
        path: the file.
        checksum: the published hex digest, or its leading digits (at least 8) where only
            those are published (torchvision names its weight files by a SHA-256 prefix).
        algorithm: the :mod:`hashlib` name of the digest.

    Raises:
        FileNotFoundError: if the file is missing.
        ValueError: if ``checksum`` has fewer than 8 hex digits.
        ChecksumError: if the digest differs (the message gives both).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file to verify not found: {path}")
    if len(checksum) < 8:
        raise ValueError(f"a checksum needs at least 8 hex digits, got {checksum!r}")
    actual = file_digest(path, algorithm)
    if not actual.startswith(checksum.lower()):
        raise ChecksumError(
            f"{path}: {algorithm.upper()} is {actual}, expected {checksum}: the file is "
            "incomplete or not the published one; delete it and download it again"
        )


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that replaces ``path`` when the ``with`` block succeeds.

    On success the file is flushed, ``fsync``-ed and renamed over ``path``, and the folder is
    ``fsync``-ed so that the rename itself survives a power cut (POSIX). On any exception,
    ``KeyboardInterrupt`` included, the temporary file is deleted and ``path`` is untouched.
    A temporary of ``path`` left by a process that was killed is removed first
    (:func:`~deeplab_edu.outputs.sweep_temporaries`).

    Args:
        path: the destination; its folder is created.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open temporary file (its name is ``handle.name``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(path)  # a dead process's half-written copy (a killed save) goes first
    temporary = temporary_path(path)
    try:
        with open(temporary, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _sync_folder(folder: Path) -> None:
    """``fsync`` a folder, so that a rename in it survives a power cut (POSIX only)."""
    if hasattr(os, "O_DIRECTORY"):
        handle = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(handle)
        finally:
            os.close(handle)


def download(
    url: str,
    destination: str | Path,
    checksum: str,
    *,
    algorithm: str = "md5",
    mirrors: tuple[str, ...] = (),
) -> Path:
    """Download ``url`` to ``destination`` unless a verified copy is already there.

    The bytes go to ``.NAME.part`` beside ``destination`` and are hashed as they arrive; the
    file is renamed into place only when it is complete and its digest matches, so an
    interrupted, truncated or corrupt download never looks complete. A failure (no host, a
    reset connection, a transfer that stops short) moves on to the next URL, which resumes from
    the bytes already received (an HTTP ``Range`` request; a server that ignores it sends the
    whole file again); so does a later call after a crash or Ctrl-C. Wrong bytes (a digest that
    differs once the file is complete) are deleted and the next URL starts afresh. Two
    processes downloading the same file take turns (a lock file beside it).

    Args:
        url: where to fetch from (``http(s)://`` or ``file://``).
        destination: the final file path.
        checksum: the expected hex digest (or its published prefix, see :func:`verify`).
        algorithm: the digest's :mod:`hashlib` name.
        mirrors: further URLs tried in order when one fails; they must serve the same file.

    Returns:
        ``destination``.

    Raises:
        IsADirectoryError: if ``destination`` is a folder (before any transfer).
        ConnectionError: if every URL failed (each one's reason, what was kept, and where to
            put a manually fetched copy).
        ChecksumError: if a file placed at ``destination`` by hand has the wrong checksum, or
            every URL gave a wrong file.
    """
    destination = Path(destination)
    if destination.is_dir():
        raise IsADirectoryError(
            f"the download destination {destination} is a folder; expected the path of the "
            f"file to write (e.g. {destination / Path(url).name})"
        )
    if len(checksum) < 8:
        raise ValueError(f"a checksum needs at least 8 hex digits, got {checksum!r}")
    partial = destination.with_name(f".{destination.name}.part")
    lock = destination.with_name(f".{destination.name}.lock")
    with locked(lock, what="a download"):
        try:
            if destination.is_file():  # put there by hand, or by the process we waited for
                verify(destination, checksum, algorithm)
                return destination
            errors: list[Exception] = []
            sources = (url, *mirrors)
            for source in sources:
                try:
                    _transfer(source, partial, checksum, algorithm, destination.name)
                except ChecksumError as error:  # complete but wrong: start afresh
                    partial.unlink(missing_ok=True)
                    errors.append(error)
                    continue
                except (urllib.error.URLError, OSError, TimeoutError, HTTPException) as error:
                    errors.append(error)  # what arrived is kept: the next URL resumes it
                    continue
                os.replace(partial, destination)
                _sync_folder(destination.parent)
                return destination
        finally:
            lock.unlink(missing_ok=True)  # held until released: see locked()
    # every source was tried: a wrong file from each is a checksum error, else a connection one
    kind = ChecksumError if all(isinstance(e, ChecksumError) for e in errors) else ConnectionError
    reasons = "; ".join(f"{s}: {e}" for s, e in zip(sources, errors, strict=True))
    cause = "" if kind is ChecksumError else " The host may be down."
    kept = (
        f" The {partial.stat().st_size} bytes received are kept in {partial}; the next "
        "attempt resumes from them."
        if partial.is_file()
        else ""
    )
    raise kind(
        f"could not download {destination.name} ({reasons}).{cause}{kept} Fetch the file from "
        f"any mirror yourself and save it as {destination} (its {algorithm.upper()} must start "
        f"with {checksum}); it will then be verified and used without downloading."
    )


class IncompleteTransfer(ConnectionError):
    """A transfer ended before the announced number of bytes (kept, to be resumed)."""


def _transfer(source: str, partial: Path, checksum: str, algorithm: str, name: str) -> None:
    """Complete ``partial`` from ``source``, resuming after the bytes it holds, and check it.

    Raises:
        IncompleteTransfer: if the transfer ended before the announced size (kept).
        ChecksumError: if the complete file's digest differs (the message names the URL).
    """
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset and file_digest(partial, algorithm).startswith(checksum.lower()):
        return  # complete already (a crash between the last byte and the rename)
    headers = {"Range": f"bytes={offset}-"} if offset else {}
    with urllib.request.urlopen(urllib.request.Request(source, headers=headers), timeout=60) as r:
        resumed = getattr(r, "status", None) == 206 and r.headers.get(
            "Content-Range", ""
        ).startswith(f"bytes {offset}-")
        offset = offset if resumed else 0  # a server that ignores Range sends the whole file
        length = int(r.headers.get("Content-Length") or 0) or None
        total = None if length is None else offset + length
        digest = hashlib.new(algorithm, usedforsecurity=False)
        if offset:  # the bytes kept from before count in the digest
            with open(partial, "rb") as kept:
                while block := kept.read(1 << 20):
                    digest.update(block)
        with (
            open(partial, "ab" if offset else "wb") as out,
            tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=name) as bar,
        ):
            while block := r.read(1 << 20):
                out.write(block)
                digest.update(block)
                bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
    size = partial.stat().st_size
    if total is not None and size != total:
        raise IncompleteTransfer(f"the transfer stopped after {size} of {total} bytes")
    actual = digest.hexdigest()
    if not actual.startswith(checksum.lower()):
        raise ChecksumError(
            f"the {size} bytes received have {algorithm.upper()} {actual}, expected "
            f"{checksum} (not the published file)"
        )
