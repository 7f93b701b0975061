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
from pathlib import Path
from typing import IO

from tqdm import tqdm


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

    Args:
        path: the destination; its folder is created.
        mode: ``"wb"`` or ``"w"``.

    Yields:
        The open temporary file (its name is ``handle.name``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
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

    The bytes go to a temporary file (:func:`atomic_write`) and are verified before the file is
    renamed into place, so an interrupted or corrupt download never looks complete.

    Args:
        url: where to fetch from (``http(s)://`` or ``file://``).
        destination: the final file path.
        checksum: the expected hex digest (or its published prefix, see :func:`verify`).
        algorithm: the digest's :mod:`hashlib` name.
        mirrors: further URLs tried in order when one fails.

    Returns:
        ``destination``.

    Raises:
        ConnectionError: if every URL failed (says where to put a manually fetched copy).
        ChecksumError: if a downloaded file has the wrong checksum.
    """
    destination = Path(destination)
    if destination.is_file():
        # a file someone put there by hand must be the right one
        verify(destination, checksum, algorithm)
        return destination
    errors = []
    for source in (url, *mirrors):
        try:
            with atomic_write(destination) as out, urllib.request.urlopen(source, timeout=60) as r:
                total = int(r.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
                    while block := r.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
                out.flush()
                verify(out.name, checksum, algorithm)  # before the rename: never a bad file
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            errors.append(f"{source}: {error}")
            continue
        return destination
    raise ConnectionError(
        f"could not download {destination.name} ({'; '.join(errors)}). The host may be down. "
        f"Fetch the file from any mirror yourself and save it as {destination} (its "
        f"{algorithm.upper()} must start with {checksum}); it will then be verified and used "
        "without downloading."
    )
