"""Downloading PASCAL VOC 2012 and SBD safely: checksums, atomic files, safe extraction.

- A download (:func:`deeplab_edu.fetch.download`) goes to a ``.part`` file next to its
  destination and is renamed only once it is complete *and* its checksum matches, so a partial
  or corrupt file never counts as done; an interrupted one resumes, from the same host or a
  mirror.
- Archives are verified before anything is extracted, and extraction refuses any member that
  would land outside the target folder: absolute paths, ``..`` components, links pointing
  outside, and device files (tarfile's ``"data"`` filter, applied to every member first).
- The VOC host is often down. Every failure says what to do: fetch the file from a mirror
  yourself and put it where the message says (it is then verified, not downloaded), or point
  ``DEEPLAB_EDU_VOC`` at an unpacked copy.
"""

from __future__ import annotations

import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from deeplab_edu import runtime
from deeplab_edu.data.sbd import build_train_aug
from deeplab_edu.fetch import download, verify


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
# further copies of the same files, tried in order (each checked against the same MD5): the VOC
# host's second server, and the copy the darknet (YOLO) instructions download; SBD's host over
# plain HTTP, for networks whose proxies refuse its certificate
VOC2012_MIRRORS = (
    "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    "https://pjreddie.com/media/files/VOCtrainval_11-May-2012.tar",
)
SBD_MIRRORS = (
    "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/"
    "benchmark.tgz",
)


def safe_extract(archive: str | Path, target: str | Path, md5: str | None = None) -> Path:
    """Extract a tar archive (plain, gzip, bzip2 or xz) into ``target``, safely.

    The format is read from the file's first bytes, never from its name or its tail. Every
    member goes through :func:`tarfile.data_filter` before anything is written, so the whole
    archive is refused if one member would land outside ``target`` (``..``), is a link pointing
    outside it, or is a device or special file; absolute names are made relative to ``target``.
    After extraction the rest of the file is read to its end, so a compressed archive's own
    checksum (gzip's CRC) is checked too.

    Args:
        archive: the archive file.
        target: the folder to extract into (created).
        md5: if given, the archive is verified first.

    Returns:
        ``target``.

    Raises:
        ChecksumError: if ``md5`` is given and does not match.
        ValueError: for an unsafe member, or a file that is not a complete tar archive.
    """
    archive, target = Path(archive), Path(target)
    if md5 is not None:
        verify(archive, md5)
    target.mkdir(parents=True, exist_ok=True)
    target = target.resolve()
    try:
        with tarfile.open(archive) as tf:
            members = tf.getmembers()
            for member in members:  # all of them, before the first byte is written
                try:
                    tarfile.data_filter(member, str(target))
                except tarfile.FilterError as error:
                    raise ValueError(f"refusing to extract {archive.name}: {error}") from error
            tf.extractall(target, members=members, filter="data")
            while tf.fileobj.read(1 << 20):  # to the end: gzip checks its CRC there
                pass
    except (tarfile.ReadError, EOFError, OSError, zlib.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{archive}: not a complete tar archive ({error})") from error
    return target


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
    archive = download(SBD.url, root / SBD.filename, SBD.md5, mirrors=SBD_MIRRORS)
    safe_extract(archive, root)
    return sbd_dir


def prepare_voc(root: str | Path | None = None) -> Path:
    """Everything full mode needs: VOC 2012, SBD, and the ``train_aug`` list built from them.

    Returns:
        The ``VOC2012`` folder, ready for ``VOCSegmentation(voc_dir, "train_aug")``.
    """
    voc_dir = download_voc(root)
    if not (voc_dir / "ImageSets" / "Segmentation" / "train_aug.txt").is_file():
        build_train_aug(voc_dir, download_sbd(root))
    return voc_dir


__all__ = [
    "SBD",
    "VOC2012",
    "Resource",
    "download_sbd",
    "download_voc",
    "prepare_voc",
    "safe_extract",
]
