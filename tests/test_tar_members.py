"""The tar reader of tar shards: every member ``tarfile`` reads as a file, read the same, in
each of the formats ``tarfile`` writes; damage raised after the members before it."""

from __future__ import annotations

import contextlib
import io
import random
import tarfile

import pytest

from headstart.extract.samples import SampleFault, TarSample, iter_tar_samples
from headstart.extract.tar_members import BLOCK, TarDamage, TarMember, iter_tar_members

CAP = 1 << 20


def build_tar(tar_format: int, pax_headers: dict[str, str] | None = None) -> bytes:
    """An archive with what webdataset writers and hand-made tars hold: long, nested and
    non-ASCII names, sizes on and off block boundaries, folders, links and an empty file."""
    buffer = io.BytesIO()
    long_folder = "/".join(["folder"] * 20)  # 139 characters: ustar splits it into a prefix
    with tarfile.open(
        fileobj=buffer, mode="w", format=tar_format, pax_headers=pax_headers or {}
    ) as tar:

        def add(name: str, data: bytes | None, kind: bytes = tarfile.REGTYPE) -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            if kind == tarfile.SYMTYPE or kind == tarfile.LNKTYPE:
                info.linkname = "000000.jpg"
            info.size = len(data) if data is not None else 0
            tar.addfile(info, io.BytesIO(data) if data is not None else None)

        add("000000.jpg", bytes(range(256)) * 3)
        add("000000.cls", b"7")
        add("d", None, tarfile.DIRTYPE)
        add(f"{long_folder}/000001.jpg", b"x" * BLOCK)
        add(f"{long_folder}/000001.txt", b"")
        add("link.jpg", None, tarfile.SYMTYPE)
        add("hard.jpg", None, tarfile.LNKTYPE)
        add("ünïcode/000002.jpg", b"y" * (BLOCK + 1))
        if tar_format != tarfile.USTAR_FORMAT:  # ustar has no room for a name this long
            add("n" * 150 + "/000003.json", b'{"label": 1}')
    return buffer.getvalue()


def tarfile_members(archive: bytes) -> list[tuple[str, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile()]


def read_all(archive: bytes, cap: int = CAP) -> list[TarMember]:
    return list(iter_tar_members(io.BytesIO(archive), cap))


@pytest.mark.parametrize(
    "tar_format", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT]
)
def test_file_members_read_as_tarfile_reads_them(tar_format: int) -> None:
    archive = build_tar(tar_format)
    expected = tarfile_members(archive)
    assert len(expected) == (6 if tar_format != tarfile.USTAR_FORMAT else 5)
    assert [(m.name, m.data) for m in read_all(archive)] == expected


def test_a_global_pax_header_is_applied_to_the_members_after_it() -> None:
    archive = build_tar(tarfile.PAX_FORMAT, {"comment": "written by a test"})
    assert b"comment=written by a test" in archive
    assert [(m.name, m.data) for m in read_all(archive)] == tarfile_members(archive)


def test_a_size_in_gnu_base_256_is_read() -> None:
    archive = bytearray(build_tar(tarfile.USTAR_FORMAT))
    archive[124:136] = b"\x80" + (768).to_bytes(11, "big")  # the first member's 768 bytes
    rewrite_checksum(archive, 0)
    assert read_all(bytes(archive))[0] == TarMember("000000.jpg", 768, bytes(range(256)) * 3)


def test_a_member_over_the_cap_is_stepped_over_and_the_next_one_read() -> None:
    members = read_all(build_tar(tarfile.GNU_FORMAT), cap=BLOCK)
    unread = [m for m in members if m.data is None]
    assert [(m.name, m.size) for m in unread] == [
        ("000000.jpg", 768),
        ("ünïcode/000002.jpg", BLOCK + 1),
    ]
    assert all("too large" in m.unread for m in unread)
    assert [m.data for m in members if m.name.endswith("000001.jpg")] == [b"x" * BLOCK]
    assert members[-1].name.endswith("000003.json") and members[-1].data == b'{"label": 1}'


def test_sparse_members_are_named_as_unread_and_the_next_one_read() -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in [("a.jpg", b"a" * 700), ("b.jpg", b"b" * 10), ("c.jpg", b"c" * 5)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if name == "b.jpg":  # GNU sparse 1.0, as GNU tar --sparse --format=pax writes it
                info.pax_headers = {"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}
            tar.addfile(info, io.BytesIO(data))
    archive = bytearray(buffer.getvalue())
    # The first member becomes an old GNU sparse member (type S, no extension blocks).
    archive[156:157] = b"S"
    rewrite_checksum(archive, 0)
    members = read_all(bytes(archive))
    assert [(m.name, m.data is None) for m in members] == [
        ("a.jpg", True),
        ("b.jpg", True),
        ("c.jpg", False),
    ]
    assert all("sparse" in m.unread for m in members[:2]) and members[2].data == b"c" * 5
    events = list(iter_tar_samples(io.BytesIO(bytes(archive))))
    faults = [e.member for e in events if isinstance(e, SampleFault)]
    assert faults == ["a.jpg", "b.jpg"]
    assert [e.key for e in events if isinstance(e, TarSample)] == ["c"]


def test_a_damaged_header_ends_the_members_with_the_damage_named() -> None:
    archive = bytearray(build_tar(tarfile.GNU_FORMAT))
    second = header_offsets(bytes(archive))[1]
    archive[second + 10] ^= 0xFF  # one flipped byte of the second header's name
    read: list[TarMember] = []
    with pytest.raises(
        TarDamage, match=f"damaged tar after 1 members: bad header at byte {second}"
    ):
        read.extend(iter_tar_members(io.BytesIO(bytes(archive)), CAP))
    assert [m.name for m in read] == ["000000.jpg"]


def test_an_empty_stream_and_a_stream_of_zeros() -> None:
    with pytest.raises(TarDamage, match="empty file"):
        read_all(b"")
    assert read_all(bytes(2 * BLOCK)) == []


def test_any_cut_or_flipped_byte_yields_a_prefix_then_damage_never_another_error() -> None:
    for tar_format in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        archive = build_tar(tar_format)
        whole = [(m.name, m.data) for m in read_all(archive)]
        end = len(archive) - 2 * BLOCK
        while not archive[end - BLOCK : end].strip(b"\0"):  # where the end-of-archive begins
            end -= BLOCK
        for cut in range(0, end + 1, 61):
            read = []
            with pytest.raises(TarDamage):
                read.extend(
                    (m.name, m.data) for m in iter_tar_members(io.BytesIO(archive[:cut]), CAP)
                )
            assert read == whole[: len(read)]
        rng = random.Random(tar_format)
        for _ in range(300):
            damaged = bytearray(archive)
            damaged[rng.randrange(end)] ^= 1 << rng.randrange(8)
            with contextlib.suppress(TarDamage):  # any other exception fails the test
                list(iter_tar_members(io.BytesIO(bytes(damaged)), CAP))


def header_offsets(archive: bytes) -> list[int]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return [m.offset for m in tar.getmembers()]


def rewrite_checksum(archive: bytearray, offset: int) -> None:
    header = archive[offset : offset + BLOCK]
    header[148:156] = b" " * 8
    archive[offset + 148 : offset + 156] = b"%06o\0 " % sum(header)
