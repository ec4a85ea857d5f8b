"""Input limits checked before anything is decoded: drops come from outside and run inside the daemon.

Every read of outside data goes through here: regular files only (no links, FIFOs or devices, refused from
the file's own metadata before a byte is read), sizes checked against a bound before reading, gzip inflated
in chunks up to a bound. Errors are `InvalidBatchError`s that name the file and the rule it broke.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import zlib
from pathlib import Path

from mlsd_assets.core.data.batches import InvalidBatchError

MIB = 1 << 20
MAX_IMAGE_FILE_BYTES = 1 * MIB  # a 32x32 PNG/JPEG is a few KB; anything near this is not a CIFAR image
MAX_PICKLE_BYTES = 128 * MIB  # about 43,000 images (an official batch is 31 MB)
MAX_ARCHIVE_BYTES = 256 * MIB  # a tarball, before and after gunzip (all 60,000 CIFAR-10 JPEGs: 93 MB)
MAX_ARCHIVE_MEMBERS = 200_000
MAX_FOLDER_FILES = 200_000
_CHUNK = 1 * MIB


def shown(path: Path | str) -> str:
    """A path as printable text even when its name is not UTF-8 (bytes shown as \\x escapes)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def check_utf8_name(path: Path | str, where: str) -> None:
    try:
        str(path).encode()
    except UnicodeEncodeError:
        raise InvalidBatchError(f"{where}: file name is not valid UTF-8; rename it") from None


def open_regular(path: Path, max_bytes: int) -> tuple[int, int]:
    """(fd, size) of a regular file no larger than `max_bytes`; links, FIFOs and devices are refused unopened."""
    name = shown(path)
    try:
        # O_NOFOLLOW: a link is refused (ELOOP); O_NONBLOCK: opening a FIFO does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InvalidBatchError(f"{name}: is a symbolic link; only regular files are read") from None
        if exc.errno == errno.ENOENT:
            raise InvalidBatchError(f"{name}: no such file") from None
        raise InvalidBatchError(f"{name}: cannot open ({exc.strerror})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise InvalidBatchError(f"{name}: not a regular file ({_kind(info.st_mode)}); only regular files are read")
    if info.st_size > max_bytes:
        os.close(fd)
        raise InvalidBatchError(f"{name}: {info.st_size} bytes, more than the {max_bytes} bytes allowed")
    return fd, info.st_size


def read_regular(path: Path, max_bytes: int) -> bytes:
    """The bytes of a regular file, refused unread when it is a link/FIFO/device or larger than `max_bytes`."""
    fd, _ = open_regular(path, max_bytes)
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:  # grew after fstat
        raise InvalidBatchError(f"{shown(path)}: more than the {max_bytes} bytes allowed")
    return data


def read_maybe_gzip(path: Path, max_bytes: int) -> bytes:
    """A file's bytes, gunzipped when gzip, in chunks: neither side may exceed `max_bytes` (bombs stop early).

    zlib checks each gzip member's CRC and length, so a truncated or corrupted stream is an error, never a
    shorter archive.
    """
    data = read_regular(path, max_bytes)
    if data[:2] != b"\x1f\x8b":
        return data
    name = shown(path)
    declared = int.from_bytes(data[-4:], "little") if len(data) >= 18 else 0  # gzip trailer: size mod 2**32
    if declared > max_bytes:
        raise InvalidBatchError(
            f"{name}: corrupt or truncated archive, or a gzip bomb: its gzip trailer declares {declared} bytes "
            f"inflated, more than the {max_bytes} allowed; refused"
        )
    chunks: list[bytes] = []
    total = 0
    rest = memoryview(data)
    try:
        while rest:  # a gzip file may hold several members, one after another
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            while rest and not inflater.eof:
                piece = inflater.decompress(rest[:_CHUNK], _CHUNK)
                total += len(piece)
                if total > max_bytes:
                    raise InvalidBatchError(f"{name}: inflates to more than {max_bytes} bytes (gzip bomb?); refused")
                chunks.append(piece)
                consumed = min(len(rest), _CHUNK) - len(inflater.unconsumed_tail)
                rest = rest[consumed:]
            if not inflater.eof:
                raise InvalidBatchError(f"{name}: corrupt or truncated archive (gzip stream ends early)")
            rest = memoryview(inflater.unused_data)
    except zlib.error as exc:
        raise InvalidBatchError(f"{name}: corrupt or truncated archive (zlib.error: {exc})") from exc
    return b"".join(chunks)


def read_tar(path: Path, max_member_bytes: int) -> dict[str, memoryview]:
    """Every regular file of a (gzipped) tarball by its cleaned name, read with `tarfile` in one pass.

    The archive and its inflated stream are bounded by MAX_ARCHIVE_BYTES (`read_maybe_gzip`); tarfile then
    walks the inflated bytes in memory and members are views into them, not copies. Each member's type
    (files and folders only), name (no absolute or `..` names), declared size and the member count are
    checked before its bytes are taken.
    """
    raw = read_maybe_gzip(path, MAX_ARCHIVE_BYTES)
    view = memoryview(raw)
    name = shown(path)
    files: dict[str, memoryview] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:  # BytesIO shares `raw`: no copy
            for count, member in enumerate(tar, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise InvalidBatchError(f"{name}: more than {MAX_ARCHIVE_MEMBERS} members; refused")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise InvalidBatchError(f"{name}: member {member.name!r} is not a regular file or folder")
                if member.size > max_member_bytes:
                    raise InvalidBatchError(
                        f"{name}: member {member.name!r} declares {member.size} bytes, more than the "
                        f"{max_member_bytes} bytes a member may have"
                    )
                data = view[member.offset_data : member.offset_data + member.size]
                if len(data) != member.size:
                    raise InvalidBatchError(f"{name}: member {member.name!r} is truncated")
                files[_member_name(member.name, name)] = data
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidBatchError(f"{name}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    return files


def read_tar_member(path: Path, basename: str, max_bytes: int) -> tuple[str, bytes]:
    """One regular file of a (compressed) tarball, by its base name, streamed with `tarfile`: members before
    it are skipped, not held (the official archive inflates to 180 MB for the 31 MB batch wanted). Every
    member's declared size and the member count are checked before its bytes are read or skipped."""
    name = shown(path)
    fd, _ = open_regular(path, 1 << 40)  # a regular file; its members are bounded one by one
    try:
        with os.fdopen(fd, "rb") as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > MAX_ARCHIVE_MEMBERS:
                    raise InvalidBatchError(f"{name}: more than {MAX_ARCHIVE_MEMBERS} members; refused")
                if member.size > max_bytes:
                    raise InvalidBatchError(
                        f"{name}: member {member.name!r} declares {member.size} bytes, more than the "
                        f"{max_bytes} bytes a member may have"
                    )
                if member.isfile() and member.name.rsplit("/", 1)[-1] == basename:
                    fh = tar.extractfile(member)
                    data = fh.read() if fh else b""
                    if len(data) != member.size:
                        raise InvalidBatchError(f"{name}: member {member.name!r} is truncated")
                    return member.name, data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise InvalidBatchError(f"{name}: corrupt or truncated archive ({type(exc).__name__}: {exc})") from exc
    raise InvalidBatchError(f"{name}: archive has no member named {basename!r}")


def _member_name(member: str, archive: str) -> str:
    """`./a//b` -> `a/b`; absolute, `..` or non-UTF-8 names are refused (outside the archive, or unprintable)."""
    parts = [p for p in member.split("/") if p not in ("", ".")]
    if member.startswith("/") or ".." in parts:
        raise InvalidBatchError(f"{archive}: member {member!r} points outside the archive")
    check_utf8_name(member, f"{archive}: member {shown(member)!r}")
    return "/".join(parts)


def regular_files(root: Path, max_files: int = MAX_FOLDER_FILES) -> list[str]:
    """Every file under `root` as a POSIX path relative to it; links, FIFOs and devices anywhere are refused."""
    found: list[str] = []
    for folder, dirs, files in os.walk(root, followlinks=False, onerror=_raise_walk_error):
        for entry in (*dirs, *files):
            path = Path(folder) / entry
            mode = os.lstat(path).st_mode
            if stat.S_ISDIR(mode):
                continue
            relative = path.relative_to(root).as_posix()
            if not stat.S_ISREG(mode):
                raise InvalidBatchError(
                    f"{shown(path)}: {_kind(mode)} inside {shown(root)}; only regular files are read"
                )
            check_utf8_name(relative, shown(path))
            found.append(relative)
            if len(found) > max_files:
                raise InvalidBatchError(f"{shown(root)}: more than {max_files} files; refused")
    return sorted(found)


def _raise_walk_error(exc: OSError) -> None:
    raise InvalidBatchError(f"{shown(exc.filename or '?')}: cannot list ({exc.strerror})")


def _kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a folder"),
    ):
        if test(mode):
            return kind
    return "not a regular file"
