"""Tests for recbole_ckd.data.download against a throwaway HTTP server on 127.0.0.1 (conftest's
``http_server``)."""
from __future__ import annotations

import hashlib
import io
import random
import tarfile
import zipfile

import pytest
from conftest import HTTP_TIMEOUT

from recbole_ckd.data import download as dl
from recbole_ckd.data.download import DownloadError, download_dataset

# Random bytes do not compress, so truncating the archive in half really cuts file data.
_RNG = random.Random(0)
FILES = {
    "baby.inter": b"user_id:token\titem_id:token\trating:float\n1\t2\t5.0\n",
    "image_feat.npy": _RNG.randbytes(20_000),
    "text_feat.npy": _RNG.randbytes(20_000),
}
EXPECTED = sorted(FILES)


def make_zip(files, top="baby", compression=zipfile.ZIP_STORED):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in files.items():
            zf.writestr(f"{top}/{name}" if top else name, data)
    return buf.getvalue()


def make_tar_gz(files, top="baby", links=()):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(f"{top}/{name}" if top else name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in links:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tf.addfile(info)
    return buf.getvalue()


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(autouse=True)
def _no_retry_delay(monkeypatch):
    monkeypatch.setattr(dl, "_RETRY_DELAY", 0)


def fetch(url, dest, digest, expected=EXPECTED, **kw):
    kw.setdefault("timeout", HTTP_TIMEOUT)
    kw.setdefault("show_progress", False)
    return download_dataset(url, dest, digest, expected, **kw)


def assert_dataset(dest, files=FILES):
    assert dest.is_dir()
    assert {p.name for p in dest.iterdir()} == set(files)
    for name, data in files.items():
        assert (dest / name).read_bytes() == data


def assert_clean(root, downloads=None, dest="baby"):
    """Only dest (if given), .downloads and the named cached files are left: no temp dirs."""
    names = {p.name for p in root.iterdir()}
    assert names <= {dest, ".downloads"}, names
    if downloads is not None:
        assert {p.name for p in (root / ".downloads").iterdir()} == set(downloads)


@pytest.mark.parametrize(
    "path, body",
    [("/baby.zip", make_zip(FILES)), ("/baby.tar.gz", make_tar_gz(FILES))],
    ids=["zip", "tar.gz"],
)
def test_success_strips_top_folder(http_server, tmp_path, capsys, path, body):
    http_server.files[path] = (body, "normal")
    dest = tmp_path / "baby"
    assert fetch(http_server.url + path, dest, sha(body), show_progress=True) == dest
    assert_dataset(dest)
    assert_clean(tmp_path, downloads=["baby" + path[len("/baby"):]])
    assert "/" in capsys.readouterr().err  # progress line "done / total"


def test_format_detected_by_content(http_server, tmp_path):
    body = make_tar_gz(FILES, top=None)  # no top folder, no file extension in the URL
    http_server.files["/get"] = (body, "normal")
    dest = fetch(http_server.url + "/get", tmp_path / "baby", sha(body))
    assert_dataset(dest)


def test_wrong_sha256(http_server, tmp_path):
    body = make_zip(FILES)
    http_server.files["/baby.zip"] = (body, "normal")
    wrong = "0" * 64
    with pytest.raises(DownloadError) as err:
        fetch(http_server.url + "/baby.zip", tmp_path / "baby", wrong)
    assert wrong in str(err.value) and sha(body) in str(err.value)
    assert not (tmp_path / "baby").exists()
    assert_clean(tmp_path, downloads=[])


def test_missing_sha256_reports_hash_then_reuses_download(http_server, tmp_path):
    body = make_zip(FILES)
    http_server.files["/baby.zip"] = (body, "normal")
    with pytest.raises(DownloadError, match=sha(body)):
        fetch(http_server.url + "/baby.zip", tmp_path / "baby", None)
    assert not (tmp_path / "baby").exists()
    assert len(http_server.requests) == 1

    assert_dataset(fetch(http_server.url + "/baby.zip", tmp_path / "baby", sha(body)))
    assert len(http_server.requests) == 1  # the kept archive was reused
    assert_clean(tmp_path, downloads=["baby.zip"])


@pytest.mark.parametrize("mode", ["truncate_once", "ignore_range"])
def test_interrupted_transfer_recovers(http_server, tmp_path, mode):
    body = make_zip(FILES)
    http_server.files["/baby.zip"] = (body, mode)
    assert_dataset(fetch(http_server.url + "/baby.zip", tmp_path / "baby", sha(body)))
    assert [r for _, r in http_server.requests] == [None, f"bytes={len(body) // 2}-"]
    assert_clean(tmp_path, downloads=["baby.zip"])


def test_always_truncated_keeps_part_and_later_call_resumes(http_server, tmp_path):
    body = make_zip(FILES)
    http_server.files["/baby.zip"] = (body, "always_trunc")
    with pytest.raises(DownloadError) as err:
        fetch(http_server.url + "/baby.zip", tmp_path / "baby", sha(body), retries=2)
    message = str(err.value)
    assert http_server.url + "/baby.zip" in message and "resume" in message
    assert str(len(body) // 2) in message
    part = tmp_path / ".downloads" / "baby.zip.part"
    assert part.stat().st_size == len(body) // 2
    assert not (tmp_path / "baby").exists()
    assert len(http_server.requests) == 3

    # The server recovers: a new call continues from the kept .part.
    http_server.files["/baby.zip"] = (body, "normal")
    assert_dataset(fetch(http_server.url + "/baby.zip", tmp_path / "baby", sha(body)))
    assert http_server.requests[-1][1] == f"bytes={len(body) // 2}-"
    assert_clean(tmp_path, downloads=["baby.zip"])


def test_http_404_fails_without_retrying(http_server, tmp_path):
    with pytest.raises(DownloadError, match="404"):
        fetch(http_server.url + "/nope.zip", tmp_path / "baby", "0" * 64)
    assert len(http_server.requests) == 1
    assert not (tmp_path / "baby").exists()


def test_archive_missing_expected_file(http_server, tmp_path):
    files = {k: v for k, v in FILES.items() if k != "text_feat.npy"}
    body = make_zip(files)
    http_server.files["/baby.zip"] = (body, "normal")
    with pytest.raises(DownloadError) as err:
        fetch(http_server.url + "/baby.zip", tmp_path / "baby", sha(body))
    assert "text_feat.npy" in str(err.value) and "baby.inter" in str(err.value)
    assert not (tmp_path / "baby").exists()
    assert_clean(tmp_path)


@pytest.mark.parametrize(
    "body",
    [
        make_zip({**FILES, "../evil.txt": b"x"}, top=None),
        make_tar_gz({**FILES, "../evil.txt": b"x"}, top=None),
        make_tar_gz({**FILES, "/absolute/evil.txt": b"x"}, top=None),
        make_tar_gz(FILES, links=[("baby/evil.txt", "../../evil.txt")]),
    ],
    ids=["zip-dotdot", "tar-dotdot", "tar-absolute", "tar-symlink-out"],
)
def test_unsafe_members_refused(http_server, tmp_path, body):
    http_server.files["/baby.bin"] = (body, "normal")
    data_root = tmp_path / "data"
    with pytest.raises(DownloadError, match="Refusing"):
        fetch(http_server.url + "/baby.bin", data_root / "baby", sha(body))
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (data_root / "baby").exists()
    assert_clean(data_root)


def test_existing_dataset_reused_then_force_replaces(http_server, tmp_path):
    dest = tmp_path / "baby"
    dest.mkdir()
    for name in FILES:
        (dest / name).write_bytes(b"old")
    (dest / "stale.txt").write_bytes(b"old")
    body = make_zip(FILES)
    http_server.files["/baby.zip"] = (body, "normal")

    assert fetch(http_server.url + "/baby.zip", dest, sha(body)) == dest
    assert http_server.requests == []
    assert (dest / "baby.inter").read_bytes() == b"old"

    fetch(http_server.url + "/baby.zip", dest, sha(body), force=True)
    assert len(http_server.requests) == 1
    assert_dataset(dest)  # stale.txt is gone
    assert_clean(tmp_path, downloads=["baby.zip"])


def test_incomplete_existing_dir_is_not_deleted(tmp_path):
    dest = tmp_path / "baby"
    dest.mkdir()
    (dest / "mine.txt").write_bytes(b"keep")
    with pytest.raises(DownloadError, match="force=True"):
        fetch("http://127.0.0.1:9/unused.zip", dest, "0" * 64)
    assert (dest / "mine.txt").read_bytes() == b"keep"


@pytest.mark.parametrize("as_uri", [False, True], ids=["path", "file-url"])
def test_local_archive(tmp_path, as_uri):
    body = make_tar_gz(FILES)
    src = tmp_path / "browser downloads" / "baby.tgz"
    src.parent.mkdir()
    src.write_bytes(body)
    data_root = tmp_path / "data"
    url = src.as_uri() if as_uri else str(src)
    assert_dataset(fetch(url, data_root / "baby", sha(body)))
    assert_clean(data_root, downloads=["baby.tgz"])


# ---------------------------------------------------------------------------------------------
# Caps against archive bombs, and only the dataset's files unpacked
def lying_zip(files, declared):
    """A zip whose central directory declares ``declared`` bytes for every member, whatever it holds."""
    body = bytearray(make_zip(files))
    start = body.rfind(b"PK\x01\x02", 0)  # patch every central directory entry's uncompressed size
    while start != -1:
        body[start + 24:start + 28] = declared.to_bytes(4, "little")
        start = body.rfind(b"PK\x01\x02", 0, start)
    return bytes(body)


@pytest.mark.parametrize("make", [make_zip, make_tar_gz], ids=["zip", "tar.gz"])
def test_an_archive_over_the_size_cap_is_refused_before_unpacking(tmp_path, monkeypatch, make):
    body = make(FILES)
    archive = tmp_path / "baby.bin"
    archive.write_bytes(body)
    monkeypatch.setattr(dl, "MAX_UNPACKED_BYTES", sum(map(len, FILES.values())) - 1)
    written = []
    monkeypatch.setattr(dl, "_copy_capped", lambda *args: written.append(args))
    with pytest.raises(DownloadError, match="would unpack to .* more than the cap"):
        fetch(str(archive), tmp_path / "data" / "baby", sha(body))
    assert written == [] and not (tmp_path / "data" / "baby").exists()
    assert_clean(tmp_path / "data", downloads=["baby.archive"])


@pytest.mark.parametrize("make", [lambda files: make_zip(files, compression=zipfile.ZIP_DEFLATED), make_tar_gz],
                         ids=["zip", "tar.gz"])
def test_an_archive_over_the_expansion_cap_is_refused(tmp_path, monkeypatch, make):
    # zeros compress about a thousandfold: the sort of file a bomb is made of
    files = {**FILES, "image_feat.npy": bytes(8_000_000)}
    body = make(files)
    archive = tmp_path / "baby.bin"
    archive.write_bytes(body)
    monkeypatch.setattr(dl, "_RATIO_FREE_BYTES", 0)
    with pytest.raises(DownloadError, match=r"times its .* \(at most 100 times\)"):
        fetch(str(archive), tmp_path / "data" / "baby", sha(body))
    monkeypatch.setattr(dl, "MAX_EXPANSION", 1000)  # the same archive under a looser cap
    assert_dataset(fetch(str(archive), tmp_path / "data" / "baby", sha(body)), files)


def test_a_member_larger_than_declared_is_stopped_while_unpacking(tmp_path):
    body = lying_zip(FILES, declared=100)
    archive = tmp_path / "baby.zip"
    archive.write_bytes(body)
    # the declared sizes pass the caps; zipfile's own reader stops at them too (and then finds a bad CRC)
    with pytest.raises(DownloadError, match="Bad CRC|more than the 100 bytes its header declares"):
        fetch(str(archive), tmp_path / "data" / "baby", sha(body))
    assert not (tmp_path / "data" / "baby").exists()
    assert_clean(tmp_path / "data", downloads=["baby.zip"])
    # whatever the reader: no more than the declared bytes are written
    with pytest.raises(DownloadError, match="more than the 100 bytes its header declares"):
        dl._copy_capped(io.BytesIO(bytes(3 * dl._CHUNK_SIZE)), tmp_path / "out" / "x.npy", 100, archive)
    assert (tmp_path / "out" / "x.npy").stat().st_size == 0


def test_only_the_expected_members_are_unpacked(tmp_path):
    body = make_tar_gz({**FILES, "u_id_mapping.csv": b"a,b\n", "sub/notes.txt": b"x"})
    archive = tmp_path / "baby.tgz"
    archive.write_bytes(body)
    assert_dataset(fetch(str(archive), tmp_path / "data" / "baby", sha(body)))  # exactly FILES


def test_a_member_listed_twice_is_refused(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in FILES.items():
            zf.writestr(f"baby/{name}", data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("baby/baby.inter", b"user_id:token\titem_id:token\n")
    archive = tmp_path / "baby.zip"
    archive.write_bytes(buf.getvalue())
    with pytest.raises(DownloadError, match="holds 'baby.inter' twice"):
        fetch(str(archive), tmp_path / "data" / "baby", sha(buf.getvalue()))
