"""Checksummed downloads (from file:// URLs: no network) and safe extraction of archives the
tests make, including malicious ones."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
import zipfile

import pytest

from deeplab_edu.data import download as dl


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def payload(tmp_path):
    source = tmp_path / "source" / "data.bin"
    source.parent.mkdir()
    data = bytes(range(256)) * 4000  # ~1 MB, more than one read block
    source.write_bytes(data)
    return source, _md5(data)


def test_download_verifies_and_renames(tmp_path, payload):
    source, md5 = payload
    destination = tmp_path / "out" / "data.bin"
    assert dl.download(source.as_uri(), destination, md5) == destination
    assert destination.read_bytes() == source.read_bytes()
    assert [p.name for p in destination.parent.iterdir()] == ["data.bin"]  # no .part left
    # a verified copy is reused: the URL is not even opened
    assert dl.download("file:///nonexistent/data.bin", destination, md5) == destination


def test_wrong_checksum_leaves_nothing(tmp_path, payload):
    source, _ = payload
    destination = tmp_path / "out" / "data.bin"
    with pytest.raises(dl.ChecksumError, match="expected 0{32}"):
        dl.download(source.as_uri(), destination, "0" * 32)
    assert list(destination.parent.iterdir()) == []


def test_unreachable_host_says_what_to_do_and_mirrors_are_tried(tmp_path, payload):
    source, md5 = payload
    destination = tmp_path / "data.bin"
    with pytest.raises(ConnectionError, match=rf"host may be down.*save it as {destination}"):
        dl.download("file:///nonexistent/data.bin", destination, md5)
    assert not destination.exists()
    dl.download("file:///nonexistent/data.bin", destination, md5, mirrors=(source.as_uri(),))
    assert destination.is_file()


def test_interrupted_download_never_counts_as_complete(tmp_path, payload, monkeypatch):
    source, md5 = payload

    class Broken(io.BytesIO):
        headers = {"Content-Length": "1024000"}

        def read(self, size=-1):
            if self.tell() > 0:
                raise ConnectionResetError("connection reset by peer")
            return super().read(size)

        def __exit__(self, *args):
            return False

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: Broken(b"x" * 2**21))
    destination = tmp_path / "data.bin"
    with pytest.raises(ConnectionError, match="connection reset"):
        dl.download("https://example.invalid/data.bin", destination, md5)
    assert list(tmp_path.iterdir()) == [tmp_path / "source"]


def test_a_file_placed_by_hand_is_verified(tmp_path, payload):
    source, md5 = payload
    destination = tmp_path / "data.bin"
    destination.write_bytes(b"truncated")
    with pytest.raises(dl.ChecksumError, match=f"expected {md5}"):
        dl.download("file:///nonexistent", destination, md5)


def _tar(path, members):
    """members: (TarInfo-like kwargs, data or None)."""
    with tarfile.open(path, "w:gz") as tf:
        for fields, data in members:
            info = tarfile.TarInfo(fields.pop("name"))
            for key, value in fields.items():
                setattr(info, key, value)
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def test_safe_extract_of_a_good_tar_and_zip(tmp_path):
    archive = _tar(tmp_path / "good.tgz", [({"name": "VOC2012/a.txt"}, b"hello"),
                                           ({"name": "VOC2012/sub", "type": tarfile.DIRTYPE}, None),
                                           ({"name": "VOC2012/sub/b.txt"}, b"world")])  # fmt: skip
    out = dl.safe_extract(archive, tmp_path / "out", md5=_md5(archive.read_bytes()))
    assert (out / "VOC2012" / "a.txt").read_text() == "hello"
    assert (out / "VOC2012" / "sub" / "b.txt").read_text() == "world"
    with zipfile.ZipFile(tmp_path / "good.zip", "w") as zf:
        zf.writestr("dataset/train.txt", "2008_000002\n")
    dl.safe_extract(tmp_path / "good.zip", tmp_path / "zout")
    assert (tmp_path / "zout" / "dataset" / "train.txt").read_text() == "2008_000002\n"


@pytest.mark.parametrize(
    "member, reason",
    [
        ({"name": "/tmp/evil.txt"}, "absolute path"),
        ({"name": "../evil.txt"}, r"'\.\.'"),
        ({"name": "ok/../../evil.txt"}, r"'\.\.'"),
        ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "symbolic link"),
        ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, "hard link"),
        ({"name": "dev", "type": tarfile.CHRTYPE}, "device"),
    ],
)
def test_malicious_tar_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    good = ({"name": "first.txt"}, b"written only if the whole archive is safe")
    data = b"evil" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None
    archive = _tar(tmp_path / "evil.tgz", [good, (dict(member), data)])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=reason):
        dl.safe_extract(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "C:/evil.txt", "a\\..\\..\\e"])
def test_malicious_zip_members_are_refused(tmp_path, name):
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as zf:
        zf.writestr("fine.txt", "fine")
        zf.writestr(zipfile.ZipInfo(name), "evil")
    with pytest.raises(ValueError, match="refusing to extract"):
        dl.safe_extract(tmp_path / "evil.zip", tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_zip_symlink_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16  # a symbolic link, as zip stores it
    with zipfile.ZipFile(tmp_path / "link.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(ValueError, match="symbolic link"):
        dl.safe_extract(tmp_path / "link.zip", tmp_path / "out")


def test_checksum_is_verified_before_extraction(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [({"name": "a.txt"}, b"a")])
    with pytest.raises(dl.ChecksumError):
        dl.safe_extract(archive, tmp_path / "out", md5="f" * 32)
    assert not (tmp_path / "out").exists()
    (tmp_path / "x.tar").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a tar or zip"):
        dl.safe_extract(tmp_path / "x.tar", tmp_path / "o")
