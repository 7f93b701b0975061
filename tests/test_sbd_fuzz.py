"""The SBD ``.mat`` reader on damaged and hostile files: a ``ValueError`` naming the file, in
bounded memory and time, and nothing else (no MemoryError, RecursionError, TypeError, ...)."""

import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import pytest

from deeplab_edu.data.sbd import MAX_BYTES, MAX_DEPTH, read_mat

FIXTURES = Path(__file__).parent / "data"
HEADER = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x100) + b"IM"


def element(kind: int, payload: bytes) -> bytes:
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def matrix(array_class: int, dims: tuple[int, ...], rest: bytes, name: bytes = b"") -> bytes:
    flags = element(6, struct.pack("<II", array_class, 0))
    shape = element(5, struct.pack(f"<{len(dims)}i", *dims))
    return element(14, flags + shape + element(1, name) + rest)


def huge_empty_struct() -> bytes:
    """The issue's 208-byte file: a 30000 x 30000 struct array with no fields."""
    fields = element(5, struct.pack("<i", 8)) + element(1, b"")
    return HEADER + matrix(2, (30000, 30000), fields, b"GTcls")


def nested_cells(depth: int) -> bytes:
    inner = matrix(6, (1, 1), element(9, struct.pack("<d", 1.0)))
    for _ in range(depth):
        inner = matrix(1, (1, 1), inner)
    return HEADER + inner


def write(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "hostile.mat"
    path.write_bytes(data)
    return path


def test_crafted_files_are_refused_before_allocating(tmp_path):
    assert len(huge_empty_struct()) == 208
    with pytest.raises(ValueError, match=r"hostile\.mat: .*struct array of shape \(30000, 30000\)"):
        read_mat(write(tmp_path, huge_empty_struct()))
    with pytest.raises(ValueError, match=f"nested deeper than {MAX_DEPTH}"):
        read_mat(write(tmp_path, nested_cells(MAX_DEPTH + 5)))
    assert read_mat(write(tmp_path, nested_cells(3))) == {"": 1.0}
    bomb = element(15, zlib.compress(b"\0" * (MAX_BYTES + 1), 9))
    with pytest.raises(ValueError, match="larger than 64 MiB once inflated"):
        read_mat(write(tmp_path, HEADER + bomb))
    wrong_count = matrix(6, (3, 3), element(9, struct.pack("<2d", 1, 2)), b"x")
    with pytest.raises(ValueError, match=r"shape \(3, 3\) holding 2 numbers"):
        read_mat(write(tmp_path, HEADER + wrong_count))
    negative = matrix(6, (-1, 2), element(9, struct.pack("<2d", 1, 2)), b"x")
    with pytest.raises(ValueError, match="dimensions as integers >= 0"):
        read_mat(write(tmp_path, HEADER + negative))
    bad_char = matrix(4, (1, 1), element(6, struct.pack("<I", 0x110000)), b"x")
    with pytest.raises(ValueError, match="beyond Unicode"):
        read_mat(write(tmp_path, HEADER + bad_char))
    float_name = matrix(4, (1, 1), element(9, struct.pack("<d", 65.5)), b"x")
    with pytest.raises(ValueError, match="characters as integers"):
        read_mat(write(tmp_path, HEADER + float_name))


FUZZ = textwrap.dedent(
    """
    import random, resource, struct, sys
    from pathlib import Path
    from deeplab_edu.data.sbd import read_mat, read_sbd_mask

    # at most 512 MiB more than the interpreter with torch already holds
    status = Path("/proc/self/status").read_text()
    used = int(status.split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (used + (512 << 20), resource.RLIM_INFINITY))
    seeds = [Path(p).read_bytes() for p in sys.argv[3:]]
    rng = random.Random(int(sys.argv[1]))
    path = Path(sys.argv[2])
    outcomes = {"read": 0, "refused": 0}
    for trial in range(3000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 8)):
            i, op = rng.randrange(128, len(data)), rng.random()
            if op < 0.5:
                data[i] = rng.randrange(256)
            elif op < 0.7:
                big = rng.choice([0, 1, 2**31 - 1, 2**32 - 1, 1 << 20, rng.randrange(1 << 32)])
                data[i : i + 4] = struct.pack("<I", big)
            elif op < 0.85:
                del data[i : i + rng.randrange(1, 16)]
            else:
                data[i:i] = rng.randbytes(rng.randrange(1, 16))
        path.write_bytes(bytes(data))
        for reader in (read_mat, read_sbd_mask):
            try:
                reader(path)
                outcomes["read"] += 1
            except ValueError as error:
                assert str(error).startswith(str(path)), error
                outcomes["refused"] += 1
            except BaseException as error:
                Path(str(path) + ".failed").write_bytes(bytes(data))
                raise SystemExit(f"trial {trial}: {type(error).__name__}: {error}")
    print(outcomes)
    """
)


@pytest.mark.slow  # seconds: `make unit` leaves it out
def test_fuzz_damaged_files_end_in_value_errors(tmp_path):
    """6000 reads of mutated real and crafted files, in a child process whose address space is
    capped at 512 MiB above its start (one unbounded allocation fails the test)."""
    seeds = [tmp_path / "crafted.mat", FIXTURES / "sbd_cls_plain.mat"]
    seeds[0].write_bytes(huge_empty_struct())
    seeds.append(FIXTURES / "sbd_cls_compressed.mat")
    result = subprocess.run(
        [sys.executable, "-c", FUZZ, "2026", str(tmp_path / "fuzzed.mat"), *map(str, seeds)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
    counts = eval(result.stdout.strip().splitlines()[-1])  # noqa: S307 - our own child's dict
    assert counts["refused"] > 1000 and counts["read"] > 0, counts
