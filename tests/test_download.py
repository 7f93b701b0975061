"""Checksummed downloads (from file:// URLs: no network), atomic writes, and safe extraction of
archives the tests make, including malicious and corrupt ones."""

from __future__ import annotations

import hashlib
import io
import tarfile
import urllib.request
import zipfile

import pytest

from deeplab_edu import fetch
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
    assert fetch.download(source.as_uri(), destination, md5) == destination
    assert destination.read_bytes() == source.read_bytes()
    assert [p.name for p in destination.parent.iterdir()] == ["data.bin"]  # no .part left
    # a verified copy is reused: the URL is not even opened
    assert fetch.download("file:///nonexistent/data.bin", destination, md5) == destination


def test_wrong_checksum_leaves_nothing(tmp_path, payload):
    source, _ = payload
    destination = tmp_path / "out" / "data.bin"
    with pytest.raises(fetch.ChecksumError, match="expected 0{32}"):
        fetch.download(source.as_uri(), destination, "0" * 32)
    assert list(destination.parent.iterdir()) == []


def test_unreachable_host_says_what_to_do_and_mirrors_are_tried(tmp_path, payload):
    source, md5 = payload
    destination = tmp_path / "data.bin"
    with pytest.raises(ConnectionError, match=rf"host may be down.*save it as {destination}"):
        fetch.download("file:///nonexistent/data.bin", destination, md5)
    assert not destination.exists()
    fetch.download("file:///nonexistent/data.bin", destination, md5, mirrors=(source.as_uri(),))
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
        fetch.download("https://example.invalid/data.bin", destination, md5)
    assert list(tmp_path.iterdir()) == [tmp_path / "source"]


def test_a_truncated_transfer_moves_on_to_the_next_mirror(tmp_path, payload, monkeypatch):
    source, md5 = payload
    data = source.read_bytes()
    real_urlopen = urllib.request.urlopen

    class Short(io.BytesIO):  # announces every byte, sends half, ends without an error
        headers = {"Content-Length": str(len(data))}

        def __exit__(self, *args):
            return False

    def urlopen(url, timeout):
        return Short(data[: len(data) // 2]) if url.startswith("https://") else real_urlopen(url)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    destination = tmp_path / "out" / "data.bin"
    mirror = source.as_uri()
    assert fetch.download("https://first.invalid/d", destination, md5, mirrors=(mirror,))
    assert destination.read_bytes() == data
    # with no mirror left: one error naming the URL and the byte counts, no temporary file
    destination.unlink()
    with pytest.raises(fetch.ChecksumError, match=r"first.invalid/d: the transfer stopped") as e:
        fetch.download("https://first.invalid/d", destination, md5)
    assert ".tmp" not in str(e.value) and "delete it" not in str(e.value)
    assert list(destination.parent.iterdir()) == []


def test_a_folder_destination_is_refused_before_any_transfer(tmp_path, monkeypatch):
    def urlopen(url, timeout):
        raise AssertionError("nothing may be fetched")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    with pytest.raises(IsADirectoryError, match=f"{tmp_path} is a folder; expected the path"):
        fetch.download("https://example.invalid/data.bin", tmp_path, "0" * 32)


def test_a_file_placed_by_hand_is_verified(tmp_path, payload):
    source, md5 = payload
    destination = tmp_path / "data.bin"
    destination.write_bytes(b"truncated")
    with pytest.raises(fetch.ChecksumError, match=f"expected {md5}"):
        fetch.download("file:///nonexistent", destination, md5)


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


def test_safe_extract_of_a_good_tar(tmp_path):
    archive = _tar(tmp_path / "good.tgz", [({"name": "VOC2012/a.txt"}, b"hello"),
                                           ({"name": "VOC2012/sub", "type": tarfile.DIRTYPE}, None),
                                           ({"name": "VOC2012/sub/b.txt"}, b"world")])  # fmt: skip
    out = dl.safe_extract(archive, tmp_path / "out", md5=_md5(archive.read_bytes()))
    assert (out / "VOC2012" / "a.txt").read_text() == "hello"
    assert (out / "VOC2012" / "sub" / "b.txt").read_text() == "world"


@pytest.mark.parametrize(
    "member, reason",
    [
        ({"name": "../evil.txt"}, "outside the destination"),
        ({"name": "ok/../../evil.txt"}, "outside the destination"),
        ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "/etc/passwd"}, "absolute path"),
        ({"name": "link", "type": tarfile.SYMTYPE, "linkname": "../../x"}, "outside the dest"),
        ({"name": "hard", "type": tarfile.LNKTYPE, "linkname": "../outside"}, "outside the dest"),
        ({"name": "dev", "type": tarfile.CHRTYPE}, "special file"),
    ],
)
def test_malicious_tar_members_are_refused_before_anything_is_written(tmp_path, member, reason):
    good = ({"name": "first.txt"}, b"written only if the whole archive is safe")
    data = b"evil" if member.get("type", tarfile.REGTYPE) == tarfile.REGTYPE else None
    archive = _tar(tmp_path / "evil.tgz", [good, (dict(member), data)])
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=f"refusing to extract evil.tgz: .*{reason}"):
        dl.safe_extract(archive, out)
    assert list(out.iterdir()) == []
    assert not (tmp_path / "evil.txt").exists()


def test_an_absolute_member_lands_inside_the_target(tmp_path):
    # tarfile's "data" filter strips the leading slash instead of refusing the archive
    evil = tmp_path / "elsewhere" / "evil.txt"
    archive = _tar(tmp_path / "abs.tgz", [({"name": str(evil)}, b"evil")])
    out = dl.safe_extract(archive, tmp_path / "out")
    assert not evil.exists() and (out / str(evil).lstrip("/")).read_bytes() == b"evil"


def test_the_format_comes_from_the_start_of_the_file_not_its_tail(tmp_path):
    # a tar whose last member is a zip: the tar is extracted, the zip stays a file
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("inner.txt", "inside the zip")
    archive = _tar(tmp_path / "a.tar.gz", [({"name": "a.txt"}, b"a"),
                                           ({"name": "b.zip"}, inner.getvalue())])  # fmt: skip
    out = dl.safe_extract(archive, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["a.txt", "b.zip"]
    # a plain tar holding the 22 bytes of an empty zip's end record is still a tar
    archive = _tar(tmp_path / "b.tgz", [({"name": "eocd.bin"}, b"PK\x05\x06" + bytes(18))])
    assert (dl.safe_extract(archive, tmp_path / "out2") / "eocd.bin").stat().st_size == 22
    # and a zip is not a tar: refused with a clear message
    with zipfile.ZipFile(tmp_path / "c.zip", "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(ValueError, match="not a complete tar archive"):
        dl.safe_extract(tmp_path / "c.zip", tmp_path / "out3")


def test_a_corrupt_compressed_archive_is_refused_even_without_a_checksum(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [({"name": "a.txt"}, b"a" * 5000)])
    data = bytearray(archive.read_bytes())
    data[-6] ^= 0xFF  # inside gzip's CRC trailer: tarfile alone would not notice
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not a complete tar archive"):
        dl.safe_extract(archive, tmp_path / "out")


def test_checksum_is_verified_before_extraction(tmp_path):
    archive = _tar(tmp_path / "a.tgz", [({"name": "a.txt"}, b"a")])
    with pytest.raises(fetch.ChecksumError):
        dl.safe_extract(archive, tmp_path / "out", md5="f" * 32)
    assert not (tmp_path / "out").exists()
    (tmp_path / "x.tar").write_bytes(b"not an archive")
    with pytest.raises(ValueError, match="not a complete tar archive"):
        dl.safe_extract(tmp_path / "x.tar", tmp_path / "o")


def test_an_interrupted_atomic_write_leaves_the_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt), fetch.atomic_write(path, "w") as handle:
        handle.write("half of the new")
        raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == [path.name]
    with fetch.atomic_write(path, "w") as handle:
        handle.write("new")
    assert path.read_text() == "new"
