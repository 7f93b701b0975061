"""Files that are whole or absent: checksums, atomic writes and verified downloads.

The first layer of the package, beside :mod:`deeplab_edu.runtime`: the data sets, the VGG-16
weights, checkpoints and results all go through it.

- :func:`atomic_write` writes to a temporary file in the destination's folder, ``fsync``-s it
  and renames it into place (:func:`os.replace` is atomic on one file system), so a crash
  leaves either the old file or the new one, never half of one.
- :func:`download` fetches into such a temporary file and renames it only once its checksum
  matches the published one; a file put in place by hand is verified instead of fetched.
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

from deeplab_edu.outputs import sweep_temporaries, temporary_path


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
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def download(
    url: str,
    destination: str | Path,
    checksum: str,
    *,
    algorithm: str = "md5",
    mirrors: tuple[str, ...] = (),
) -> Path:
    """Download ``url`` to ``destination`` unless a verified copy is already there.

    The bytes go to a temporary file (:func:`atomic_write`) and are hashed as they arrive; the
    file is renamed into place only when the transfer ended and the digest matches, so an
    interrupted, truncated or corrupt download never looks complete. Any failure (no host, a
    reset connection, a short or wrong file) moves on to the next URL.

    Args:
        url: where to fetch from (``http(s)://`` or ``file://``).
        destination: the final file path.
        checksum: the expected hex digest (or its published prefix, see :func:`verify`).
        algorithm: the digest's :mod:`hashlib` name.
        mirrors: further URLs tried in order when one fails.

    Returns:
        ``destination``.

    Raises:
        IsADirectoryError: if ``destination`` is a folder (before any transfer).
        ConnectionError: if every URL failed (each one's reason, and where to put a manually
            fetched copy).
        ChecksumError: if a file placed at ``destination`` by hand has the wrong checksum, or
            every URL gave a wrong or short file.
    """
    destination = Path(destination)
    if destination.is_dir():
        raise IsADirectoryError(
            f"the download destination {destination} is a folder; expected the path of the "
            f"file to write (e.g. {destination / Path(url).name})"
        )
    if destination.is_file():
        # a file someone put there by hand must be the right one
        verify(destination, checksum, algorithm)
        return destination
    if len(checksum) < 8:
        raise ValueError(f"a checksum needs at least 8 hex digits, got {checksum!r}")
    errors: list[Exception] = []
    sources = (url, *mirrors)
    for source in sources:
        try:
            with atomic_write(destination) as out:
                _transfer(source, out, checksum, algorithm, destination.name)
        except (urllib.error.URLError, OSError, TimeoutError, HTTPException, ChecksumError) as e:
            errors.append(e)
            continue
        return destination
    # every source was tried: a wrong file from each is a checksum error, else a connection one
    kind = ChecksumError if all(isinstance(e, ChecksumError) for e in errors) else ConnectionError
    reasons = "; ".join(f"{s}: {e}" for s, e in zip(sources, errors, strict=True))
    cause = "" if kind is ChecksumError else " The host may be down."
    raise kind(
        f"could not download {destination.name} ({reasons}).{cause} Fetch the file from any "
        f"mirror yourself and save it as {destination} (its {algorithm.upper()} must start with "
        f"{checksum}); it will then be verified and used without downloading."
    )


def _transfer(source: str, out: IO[bytes], checksum: str, algorithm: str, name: str) -> None:
    """Copy ``source`` into ``out``, hashing as it goes.

    Raises:
        ChecksumError: if fewer bytes came than the server announced, or the digest differs
            (the message names the URL, never the temporary file).
    """
    digest = hashlib.new(algorithm, usedforsecurity=False)
    received = 0
    with urllib.request.urlopen(source, timeout=60) as response:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=name) as bar:
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                received += len(block)
                bar.update(len(block))
    if total is not None and received != total:
        raise ChecksumError(f"the transfer stopped after {received} of {total} bytes")
    actual = digest.hexdigest()
    if not actual.startswith(checksum.lower()):
        raise ChecksumError(
            f"the {received} bytes received have {algorithm.upper()} {actual}, expected "
            f"{checksum} (truncated, or not the published file)"
        )
