"""Checksummed downloads (from file:// URLs: no network), atomic writes, and safe extraction of
archives the tests make, including malicious and corrupt ones."""

from __future__ import annotations

import hashlib
import http.server
import io
import tarfile
import threading
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


class Host(http.server.BaseHTTPRequestHandler):
    """A local web server for the download tests: /refuse answers 503, /drop announces the whole
    file and closes half way, /file serves it with Range support, /wrong serves other bytes."""

    data: bytes = b""
    ranges: list[str] = []

    def do_GET(self):  # noqa: N802 - the name http.server calls
        body = self.data if self.path != "/wrong" else bytes(len(self.data))
        if self.path == "/refuse":
            self.send_error(503)
            return
        start = 0
        asked = self.headers.get("Range")
        if self.path == "/file" and asked:
            self.ranges.append(asked)
            start = int(asked.removeprefix("bytes=").rstrip("-"))
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        sent = body[start:] if self.path != "/drop" else body[: len(body) // 2]
        self.wfile.write(sent)

    def log_message(self, *args):
        pass


@pytest.fixture
def host(payload):
    source, _ = payload
    Host.data, Host.ranges = source.read_bytes(), []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Host)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_mirrors_in_order_and_a_dropped_transfer_resumed(tmp_path, payload, host):
    source, md5 = payload
    destination = tmp_path / "out" / "data.bin"
    mirrors = (f"{host}/drop", f"{host}/file")
    assert fetch.download(f"{host}/refuse", destination, md5, mirrors=mirrors) == destination
    assert destination.read_bytes() == source.read_bytes()
    half = len(Host.data) // 2
    assert Host.ranges == [f"bytes={half}-"]  # the third resumed where the second stopped
    assert [p.name for p in destination.parent.iterdir()] == ["data.bin"]  # no .part, no lock


def test_an_interrupted_download_is_kept_and_resumed_later(tmp_path, payload, host):
    source, md5 = payload
    destination = tmp_path / "data.bin"
    with pytest.raises(ConnectionError, match=r"/drop: .*bytes received are kept in .*\.part"):
        fetch.download(f"{host}/drop", destination, md5)
    partial = tmp_path / ".data.bin.part"
    assert not destination.exists() and partial.read_bytes() == Host.data[: len(Host.data) // 2]
    assert fetch.download(f"{host}/file", destination, md5) == destination  # a later call
    assert destination.read_bytes() == source.read_bytes() and not partial.exists()
    assert Host.ranges == [f"bytes={len(Host.data) // 2}-"]


def test_a_wrong_file_is_refused_and_nothing_is_left(tmp_path, payload, host):
    _, md5 = payload
    destination = tmp_path / "out" / "data.bin"
    with pytest.raises(fetch.ChecksumError, match=r"/wrong: the \d+ bytes received have MD5"):
        fetch.download(f"{host}/wrong", destination, md5)
    assert list(destination.parent.iterdir()) == []


def test_the_next_process_waits_for_a_download_in_progress(tmp_path, payload, host):
    _, md5 = payload
    destination = tmp_path / "data.bin"
    results = []
    threads = [
        threading.Thread(
            target=lambda: results.append(fetch.download(f"{host}/file", destination, md5))
        )
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [destination, destination] and Host.ranges == []


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
    archive = _tar(
        tmp_path / "good.tgz",
        [
            ({"name": "VOC2012/a.txt"}, b"hello"),
            ({"name": "VOC2012/sub", "type": tarfile.DIRTYPE}, None),
            ({"name": "VOC2012/sub/b.txt"}, b"world"),
        ],
    )
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
    archive = _tar(
        tmp_path / "a.tar.gz", [({"name": "a.txt"}, b"a"), ({"name": "b.zip"}, inner.getvalue())]
    )
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


def test_voc_and_sbd_are_fetched_with_their_mirrors(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        dl,
        "download",
        lambda url, path, md5, mirrors=(): calls.append((url, path, md5, mirrors)) or path,
    )
    monkeypatch.setattr(dl, "safe_extract", lambda archive, root: root)
    dl.download_voc(tmp_path)
    dl.download_sbd(tmp_path)
    for (url, path, md5, mirrors), resource in zip(calls, (dl.VOC2012, dl.SBD), strict=True):
        assert (url, path, md5) == (resource.url, tmp_path / resource.filename, resource.md5)
        assert mirrors and all(m.endswith("/" + resource.filename) for m in mirrors)
