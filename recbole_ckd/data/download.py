"""Fetch, verify and unpack a dataset archive (for example MMRec's "baby").

``download_dataset(url, dest_dir, sha256, expected_files)`` leaves ``dest_dir`` holding the
archive's ``expected_files`` (its other members are not unpacked), or raises
:class:`DownloadError` and leaves no ``dest_dir`` behind.

Layout next to ``dest_dir`` (``<root>/<name>``)::

    <root>/.downloads/<name>.zip.part   while downloading; kept on failure so a rerun resumes
    <root>/.downloads/<name>.zip        the complete archive; kept so reruns skip the download
    <root>/.<name>.tmp-XXXX/            extraction area, always removed before returning
    <root>/<name>/                      the dataset, swapped in only once it is complete

Only the standard library is used, so the download works before anything else is installed.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import pathlib
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib

from recbole_ckd.errors import UserError

logger = logging.getLogger(__name__)

__all__ = ["DownloadError", "download_dataset"]

_CHUNK_SIZE = 1 << 20
# Seconds to wait before retry n is n * _RETRY_DELAY; tests set it to 0.
_RETRY_DELAY = 1.0
# Seconds between progress line redraws, so the terminal is not flooded.
_PROGRESS_INTERVAL = 0.25
_USER_AGENT = "recbole-ckd-downloader"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
# Caps against archive bombs, checked on the sizes the archive declares before anything is
# unpacked and enforced while unpacking: at most MAX_UNPACKED_BYTES in all, and at most
# MAX_EXPANSION times the archive's own size (float features barely compress; a bomb expands a
# thousandfold), a ratio waived below _RATIO_FREE_BYTES, where well-compressed text is harmless.
MAX_UNPACKED_BYTES = 32 << 30
MAX_EXPANSION = 100
_RATIO_FREE_BYTES = 64 << 20


class DownloadError(UserError, RuntimeError):
    """The dataset could not be downloaded, verified or unpacked."""


class _Interrupted(Exception):
    """A transfer ended early; the caller retries it."""


def download_dataset(
    url: str,
    dest_dir: str | os.PathLike,
    sha256: str | None,
    expected_files: list[str],
    *,
    force: bool = False,
    retries: int = 3,
    timeout: float = 60,
    show_progress: bool = True,
) -> pathlib.Path:
    """Download the archive at ``url``, check its SHA-256 and unpack it into ``dest_dir``.

    ``url`` may be http(s)://, file:// or a plain local path (an archive fetched by hand).
    ``expected_files`` are paths relative to ``dest_dir`` that the archive must provide.
    If ``dest_dir`` already holds them, it is returned as is unless ``force`` is set.
    ``sha256=None`` stops after the download with an error that reports the hash to pass.
    """
    url = os.fspath(url)
    dest = pathlib.Path(os.path.abspath(dest_dir))
    expected = list(expected_files)

    if dest.exists() or dest.is_symlink():
        missing = _missing_files(dest, expected)
        if not missing and not force:
            logger.info("Dataset already present at %s; skipping download", dest)
            return dest
        if missing and not force:
            # Someone else put this folder here; do not delete their files without being asked.
            raise DownloadError(
                f"{dest} exists but lacks {missing}; remove it or pass force=True to replace it"
            )

    downloads = dest.parent / ".downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / (dest.name + _archive_suffix(url))

    _fetch_archive(url, archive, retries, timeout, show_progress)
    _verify_sha256(archive, sha256, url)
    _install(archive, dest, expected)
    logger.info("Dataset ready at %s", dest)
    return dest


# ---------------------------------------------------------------------------------------------
# Fetching


def _archive_suffix(url: str) -> str:
    # The suffix only names the cached file; the format is detected from the content later.
    name = urllib.parse.urlparse(url).path.lower()
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return suffix
    return ".archive"


def _local_source(url: str) -> pathlib.Path | None:
    """The file behind a file:// URL or plain path; None for a remote URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return pathlib.Path(urllib.request.url2pathname(parsed.path))
    if parsed.scheme in ("http", "https", "ftp"):
        return None
    # No scheme, or a one-letter "scheme" that is really a Windows drive (C:\...).
    if len(parsed.scheme) <= 1:
        return pathlib.Path(url)
    raise DownloadError(f"Unsupported URL scheme {parsed.scheme!r} in {url}")


def _fetch_archive(url: str, archive: pathlib.Path, retries: int, timeout: float, show_progress: bool) -> None:
    part = archive.with_name(archive.name + ".part")
    local = _local_source(url)
    if local is not None:
        # Copy even local files, so they are verified and cached exactly like downloads.
        # Always copy afresh: the user may have replaced the file they point at.
        if not local.is_file():
            raise DownloadError(f"Archive {local} does not exist")
        logger.info("Copying %s to %s", local, archive)
        shutil.copyfile(local, part)
    elif archive.is_file():
        # A finished download from an earlier call (e.g. one that stopped because sha256 was None).
        logger.info("Reusing previously downloaded %s", archive)
        return
    else:
        _download(url, part, retries, timeout, show_progress)
    # Only a complete transfer gets the final name, so an existing archive is never partial.
    os.replace(part, archive)


def _download(url: str, part: pathlib.Path, retries: int, timeout: float, show_progress: bool) -> None:
    """Download ``url`` into ``part``, resuming from whatever ``part`` already holds."""
    last_error: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(_RETRY_DELAY * attempt)
        offset = part.stat().st_size if part.exists() else 0
        if offset:
            logger.info("Resuming %s at byte %d", url, offset)
        else:
            logger.info("Downloading %s", url)
        try:
            _fetch_once(url, part, offset, timeout, show_progress)
            return
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 416 and _range_total(exc.headers.get("Content-Range")) == (None, offset):
                return  # asked for bytes past the end: the .part file was already complete
            if exc.code == 416:
                part.unlink(missing_ok=True)  # the .part does not match the remote file; start over
            elif 400 <= exc.code < 500 and exc.code not in (408, 429):
                # Not found, forbidden, ...: asking again will not help.
                raise DownloadError(f"Downloading {url} failed: HTTP {exc.code} {exc.reason}") from exc
            last_error = exc
        except (OSError, http.client.HTTPException, _Interrupted) as exc:
            # URLError, timeouts and connection resets are OSErrors; short bodies are _Interrupted.
            last_error = exc
        logger.warning(
            "Download of %s interrupted (%s); %s", url, last_error,
            "retrying" if attempt < retries else "giving up",
        )

    received = part.stat().st_size if part.exists() else 0
    hint = (f"The partial file is kept at {part}; rerun to resume." if received
            else "Check the URL and your connection, then rerun.")
    raise DownloadError(
        f"Downloading {url} failed after {retries + 1} attempt(s); {received} bytes received "
        f"(last error: {last_error}). {hint}"
    )


def _fetch_once(url: str, part: pathlib.Path, offset: int, timeout: float, show_progress: bool) -> None:
    headers = {"User-Agent": _USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        length = response.headers.get("Content-Length")
        length = int(length) if length and length.strip().isdigit() else None
        if offset and response.status == 206:
            start, total = _range_total(response.headers.get("Content-Range"))
            if start != offset:
                # Appending a different slice than the one asked for would corrupt the file.
                part.unlink()
                raise _Interrupted(f"server sent bytes from {start}, expected {offset}; restarting")
            if total is None and length is not None:
                total = offset + length
            mode = "ab"
        else:
            if offset:
                logger.info("Server does not support resuming; downloading %s from the start", url)
            offset, total, mode = 0, length, "wb"

        done = offset
        progress = _Progress(part.name[: -len(".part")], total, offset, show_progress)
        try:
            with open(part, mode) as fh:
                while True:
                    chunk = response.read(_CHUNK_SIZE)
                    if not chunk:
                        break
                    fh.write(chunk)
                    done += len(chunk)
                    progress.update(done)
        finally:
            progress.close(done)
    # http.client returns a short body silently when the peer closes early, so count ourselves.
    if total is not None and done < total:
        raise _Interrupted(f"connection closed after {done} of {total} bytes")


def _range_total(content_range: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) from a Content-Range header such as "bytes 100-199/200"."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", content_range or "")
    if not match:
        return None, None
    start, total = match.groups()
    return (int(start) if start else None), (int(total) if total != "*" else None)


class _Progress:
    """A single, redrawn stderr line: bytes done / total and the transfer rate."""

    def __init__(self, label: str, total: int | None, start: int, enabled: bool):
        self.label, self.total, self.start, self.enabled = label, total, start, enabled
        self.began = self.last_draw = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last_draw >= _PROGRESS_INTERVAL:
            self.last_draw = now
            self._draw(done, now)

    def close(self, done: int) -> None:
        if self.enabled:
            self._draw(done, time.monotonic())
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self, done: int, now: float) -> None:
        # The rate counts only this attempt's bytes, not the resumed part.
        rate = (done - self.start) / max(now - self.began, 1e-6)
        total = f"{_human(self.total)} ({100 * done // max(self.total, 1)}%)" if self.total else "?"
        sys.stderr.write(f"\r{self.label}: {_human(done)} / {total}  {_human(rate)}/s   ")
        sys.stderr.flush()


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


# ---------------------------------------------------------------------------------------------
# Verifying


def _verify_sha256(archive: pathlib.Path, sha256: str | None, url: str) -> None:
    digest = hashlib.sha256()
    with open(archive, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK_SIZE), b""):
            digest.update(chunk)
    actual = digest.hexdigest()
    if sha256 is None:
        # Keep the archive: the rerun with the hash verifies it without downloading again.
        raise DownloadError(
            f"No sha256 was given for {url}. The downloaded archive has sha256 {actual}; "
            f"check it against a trusted source and pass sha256='{actual}'. "
            f"The archive is kept at {archive} and the rerun uses it without downloading again."
        )
    expected = sha256.strip().lower()
    if actual != expected:
        archive.unlink()
        raise DownloadError(
            f"Checksum mismatch for {url}: expected sha256 {expected}, got {actual}. "
            f"The file was deleted; rerun to download it again."
        )


# ---------------------------------------------------------------------------------------------
# Unpacking


def _install(archive: pathlib.Path, dest: pathlib.Path, expected: list[str]) -> None:
    """Extract next to ``dest`` and swap the result in, so ``dest`` is never half-written."""
    # Same parent as dest => same filesystem => os.replace is an atomic rename.
    staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        # Extract into a subfolder: mkdtemp's 0700 mode should not become the dataset's mode.
        root = staging / "archive"
        _extract(archive, root, expected)
        if dest.exists() or dest.is_symlink():
            # force=True: move the old copy aside first, so a failed swap can put it back.
            # It sits inside staging, which is deleted below.
            old = staging / "old"
            os.replace(dest, old)
            try:
                os.replace(root, dest)
            except BaseException:
                os.replace(old, dest)
                raise
        else:
            os.replace(root, dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _extract(archive: pathlib.Path, target: pathlib.Path, expected: list[str]) -> None:
    """Unpack the ``expected`` files of ``archive`` (and nothing else) into ``target``, within the caps."""
    target.mkdir()
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                members = zf.infolist()
                entries = [(_member_parts(info.filename, archive), info.is_dir()) for info in members]
                # zipfile never creates links, so checking names is enough.
                wanted = _wanted_members(members, entries, expected, archive)
                _check_sizes({name: info.file_size for name, info in wanted.items()}, archive)
                for name, info in wanted.items():
                    with zf.open(info) as source:
                        _copy_capped(source, target / name, info.file_size, archive)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as tf:
                members = tf.getmembers()
                entries = [(_member_parts(m.name, archive), m.isdir()) for m in members]
                top = _single_top_folder(entries)
                for member, (parts, _) in zip(members, entries):
                    _check_tar_member(member, parts[1:] if top else parts, top, archive)
                wanted = _wanted_members(members, entries, expected, archive)
                for name, member in wanted.items():
                    if not member.isfile():
                        raise DownloadError(f"Refusing archive {archive}: {member.name!r} is a link, not a plain file")
                _check_sizes({name: member.size for name, member in wanted.items()}, archive)
                for name, member in wanted.items():
                    with tf.extractfile(member) as source:
                        _copy_capped(source, target / name, member.size, archive)
        else:
            raise DownloadError(f"{archive} is neither a zip nor a tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as exc:
        raise DownloadError(f"Cannot unpack {archive}: {exc}") from exc


def _wanted_members(members: list, entries: list[tuple[tuple[str, ...], bool]], expected: list[str],
                    archive: pathlib.Path) -> dict:
    """``{expected file: its member}``; the archive's other members are not unpacked."""
    # One wrapping folder (baby/baby.inter, ...) is dropped so files land directly in dest.
    top = _single_top_folder(entries)
    found, names = {}, []
    for member, (parts, is_dir) in zip(members, entries):
        if is_dir or not parts:
            continue
        name = "/".join(parts[1:] if top else parts)
        names.append(name)
        if name in expected:
            if name in found:
                raise DownloadError(f"Refusing archive {archive}: it holds {name!r} twice")
            found[name] = member
    missing = [name for name in expected if name not in found]
    if missing:
        shown = ", ".join(names[:20]) + (f", ... ({len(names)} files)" if len(names) > 20 else "")
        raise DownloadError(f"Archive {archive} lacks the expected file(s) {missing}; it contains: {shown or 'nothing'}")
    if len(names) > len(found):
        logger.info("Unpacking the %d dataset files of %s; its %d other file(s) are left out",
                    len(found), archive, len(names) - len(found))
    return found


def _check_sizes(sizes: dict[str, int], archive: pathlib.Path) -> None:
    """Refuse, before unpacking anything, an archive whose files would exceed the caps (a zip bomb)."""
    total, packed = sum(sizes.values()), archive.stat().st_size
    if total > MAX_UNPACKED_BYTES:
        raise DownloadError(f"Refusing archive {archive}: its dataset files would unpack to {_human(total)}, more than "
                            f"the cap of {_human(MAX_UNPACKED_BYTES)}")
    if total > max(MAX_EXPANSION * packed, _RATIO_FREE_BYTES):
        raise DownloadError(f"Refusing archive {archive}: its dataset files would unpack to {_human(total)}, "
                            f"{total / max(packed, 1):.0f} times its {_human(packed)} (at most {MAX_EXPANSION} times)")


def _copy_capped(source, path: pathlib.Path, declared: int, archive: pathlib.Path) -> None:
    """Copy one member, refusing it as soon as it grows past the size its header declared (and so past the caps)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(path, "wb") as out:
        for chunk in iter(lambda: source.read(_CHUNK_SIZE), b""):
            written += len(chunk)
            if written > declared:
                raise DownloadError(f"Refusing archive {archive}: {path.name} unpacks to more than the "
                                    f"{declared} bytes its header declares")
            out.write(chunk)


def _member_parts(name: str, archive: pathlib.Path) -> tuple[str, ...]:
    """Split an archive member name, refusing names that could escape the extraction folder."""
    # Check both separators: a Windows-made archive may use backslashes.
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise DownloadError(f"Refusing archive {archive}: member {name!r} has an absolute path")
    if ".." in re.split(r"[\\/]", name):
        raise DownloadError(f"Refusing archive {archive}: member {name!r} contains '..'")
    return tuple(p for p in name.split("/") if p not in ("", "."))


def _single_top_folder(entries: list[tuple[tuple[str, ...], bool]]) -> str | None:
    """The folder that every member sits under, or None if there is no single one."""
    tops = {parts[0] for parts, _ in entries if parts}
    if len(tops) != 1:
        return None
    # A lone top-level *file* (an archive holding just "baby.inter") is content, not a wrapper.
    if any(len(parts) == 1 and not is_dir for parts, is_dir in entries):
        return None
    return tops.pop()


def _check_tar_member(member: tarfile.TarInfo, final_parts: tuple[str, ...], top: str | None,
                      archive: pathlib.Path) -> None:
    """Refuse links that would point outside the dataset folder, and special files."""
    if member.isfile() or member.isdir():
        return
    if member.issym():
        # A symlink target is relative to the link's own folder in the final layout.
        if not _stays_inside(final_parts[:-1], member.linkname):
            raise DownloadError(
                f"Refusing archive {archive}: symlink {member.name!r} points outside ({member.linkname!r})"
            )
    elif member.islnk():
        # A hard link target is another member's name, relative to the archive root.
        target = _member_parts(member.linkname, archive)
        if top and target[:1] != (top,):
            raise DownloadError(
                f"Refusing archive {archive}: hard link {member.name!r} points outside ({member.linkname!r})"
            )
    else:
        raise DownloadError(f"Refusing archive {archive}: {member.name!r} is a device or other special file")


def _stays_inside(folder: tuple[str, ...], link: str) -> bool:
    if link.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", link):
        return False
    parts = list(folder)
    for part in re.split(r"[\\/]", link):
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return True


def _missing_files(folder: pathlib.Path, expected: list[str]) -> list[str]:
    return [name for name in expected if not (folder / name).is_file()]
