"""Downloading PASCAL VOC 2012 and SBD safely: checksums, atomic files, safe extraction.

- A download goes to a temporary name next to its destination and is renamed only once it is
  complete *and* its checksum matches, so a partial or corrupt file never counts as done.
- Archives are verified before anything is extracted, and extraction refuses any member that
  would land outside the target folder: absolute paths, ``..`` components, symbolic and hard
  links, and device files.
- The VOC host is often down. Every failure says what to do: fetch the file from a mirror
  yourself and put it where the message says (it is then verified, not downloaded), or point
  ``DEEPLAB_EDU_VOC`` at an unpacked copy.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from deeplab_edu import runtime


@dataclass(frozen=True)
class Resource:
    """A file to download: where from, its name, its MD5 (as published with torchvision)."""

    url: str
    filename: str
    md5: str


VOC2012 = Resource(
    "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "VOCtrainval_11-May-2012.tar",
    "6cd6e144f989b92b3379bac3b3de84fd",
)
SBD = Resource(
    "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz",
    "benchmark.tgz",
    "82b4d87ceb2ed10f6038a1cba92111cb",
)
VOC2012_MIRRORS = ("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",)


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


def download(
    url: str,
    destination: str | Path,
    checksum: str,
    *,
    algorithm: str = "md5",
    mirrors: tuple[str, ...] = (),
) -> Path:
    """Download ``url`` to ``destination`` unless a verified copy is already there.

    The bytes go to ``destination.part-<pid>``, are verified, then renamed into place (an
    atomic rename on one file system), so an interrupted download never leaves a file that
    looks complete.

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
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f"{destination.name}.part-{os.getpid()}")
    errors = []
    for source in (url, *mirrors):
        try:
            with urllib.request.urlopen(source, timeout=60) as response, open(partial, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name) as bar:
                    while block := response.read(1 << 20):
                        out.write(block)
                        bar.update(len(block))
        except (urllib.error.URLError, OSError, TimeoutError) as error:
            partial.unlink(missing_ok=True)
            errors.append(f"{source}: {error}")
            continue
        try:
            verify(partial, checksum, algorithm)
        except ChecksumError:
            partial.unlink(missing_ok=True)
            raise
        os.replace(partial, destination)
        return destination
    raise ConnectionError(
        f"could not download {destination.name} ({'; '.join(errors)}). The host may be down. "
        f"Fetch the file from any mirror yourself and save it as {destination} (its "
        f"{algorithm.upper()} must start with {checksum}); it will then be verified and used "
        "without downloading."
    )


def _check_member(name: str, target: Path, kind: str) -> Path:
    """The path a member would be written to, or ValueError if it would escape ``target``."""
    posix = PurePosixPath(name.replace("\\", "/"))
    if (
        posix.is_absolute()
        or name.startswith(("/", "\\"))
        or (posix.parts and ":" in posix.parts[0])
    ):
        raise ValueError(f"refusing to extract {name!r}: absolute path")
    if ".." in posix.parts:
        raise ValueError(f"refusing to extract {name!r}: '..' would leave the target folder")
    if kind != "ok":
        raise ValueError(f"refusing to extract {name!r}: {kind} (only files and folders allowed)")
    path = (target / Path(*posix.parts)).resolve() if posix.parts else target
    if path != target and target not in path.parents:
        raise ValueError(f"refusing to extract {name!r}: it would land outside {target}")
    return path


def safe_extract(archive: str | Path, target: str | Path, md5: str | None = None) -> Path:
    """Extract a ``.tar``/``.tar.gz``/``.tgz`` or ``.zip`` archive into ``target``, safely.

    Every member is checked before anything is written: the whole archive is refused if one
    member has an absolute path, a ``..`` component, is a symbolic or hard link, or a device.

    Args:
        archive: the archive file.
        target: the folder to extract into (created).
        md5: if given, the archive is verified first.

    Returns:
        ``target``.

    Raises:
        ChecksumError: if ``md5`` is given and does not match.
        ValueError: for an unsafe member or an unknown archive type.
    """
    archive, target = Path(archive), Path(target)
    if md5 is not None:
        verify(archive, md5)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                mode = info.external_attr >> 16
                kind = "a symbolic link" if stat.S_ISLNK(mode) else "ok"
                _check_member(info.filename, target, kind)
            zf.extractall(target)
        return target
    if not tarfile.is_tarfile(archive):
        raise ValueError(f"{archive}: not a tar or zip archive")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            kind = "ok" if member.isfile() or member.isdir() else (
                "a symbolic link" if member.issym() else
                "a hard link" if member.islnk() else "a device or special file"
            )  # fmt: skip
            _check_member(member.name, target, kind)
        for member in members:
            tf.extract(member, target, set_attrs=False, **_tar_filter())
    return target


def _tar_filter() -> dict:
    # Python >= 3.12 (and patched 3.8+) also offer tarfile's own "data" filter: use it too
    return {"filter": "data"} if hasattr(tarfile, "data_filter") else {}


def download_voc(root: str | Path | None = None) -> Path:
    """Download and unpack PASCAL VOC 2012 trainval (2 GB) under ``root`` (default: the data
    root), giving ``root/VOCdevkit/VOC2012``.

    Returns:
        The ``VOC2012`` folder.

    Raises:
        ConnectionError: if the host and mirrors are unreachable (says how to use a local copy).
    """
    root = Path(root) if root is not None else runtime.data_root()
    voc_dir = root / "VOCdevkit" / "VOC2012"
    if (voc_dir / "ImageSets" / "Segmentation" / "val.txt").is_file():
        return voc_dir
    archive = download(VOC2012.url, root / VOC2012.filename, VOC2012.md5, mirrors=VOC2012_MIRRORS)
    safe_extract(archive, root)
    return voc_dir


def download_sbd(root: str | Path | None = None) -> Path:
    """Download and unpack SBD (1.4 GB) under ``root``, giving ``root/benchmark_RELEASE/dataset``
    (``cls/*.mat``, ``train.txt``, ``val.txt``).

    Returns:
        SBD's ``dataset`` folder.
    """
    root = Path(root) if root is not None else runtime.data_root()
    sbd_dir = root / "benchmark_RELEASE" / "dataset"
    if (sbd_dir / "train.txt").is_file():
        return sbd_dir
    archive = download(SBD.url, root / SBD.filename, SBD.md5)
    safe_extract(archive, root)
    return sbd_dir


def prepare_voc(root: str | Path | None = None) -> Path:
    """Everything full mode needs: VOC 2012, SBD, and the ``train_aug`` list built from them.

    Returns:
        The ``VOC2012`` folder, ready for ``VOCSegmentation(voc_dir, "train_aug")``.
    """
    from deeplab_edu.data.sbd import build_train_aug

    voc_dir = download_voc(root)
    if not (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").is_file():
        build_train_aug(voc_dir, download_sbd(root))
    return voc_dir


def remove_archives(root: str | Path | None = None) -> None:
    """Delete the downloaded archives once unpacked (saves 3.4 GB)."""
    root = Path(root) if root is not None else runtime.data_root()
    for resource in (VOC2012, SBD):
        (root / resource.filename).unlink(missing_ok=True)


__all__ = [
    "SBD",
    "VOC2012",
    "ChecksumError",
    "Resource",
    "download",
    "download_sbd",
    "download_voc",
    "file_digest",
    "remove_archives",
    "prepare_voc",
    "safe_extract",
    "verify",
]
