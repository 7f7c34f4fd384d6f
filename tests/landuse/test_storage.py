"""Storage: safe path segments, atomic writes, joins, globs and Parquet on local folders."""

from __future__ import annotations

import os
import socket
import stat

import pyarrow as pa
import pytest

from landuse import storage


@pytest.mark.parametrize(
    "name", ["stutsman-nd", "synthetic-county-1", "a", "0", "x_y", "a" * 63, "2016"]
)
def test_safe_names(name):
    assert storage.safe_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "../x", "..", ".", "a/b", "a\\b", "", "Stutsman", "ABC", "a" * 64, "-a", "_a",
        "a b", "a.b", "abc\n", "\nabc", "ä", "/abs",
    ],
)
def test_unsafe_names(name):
    with pytest.raises(ValueError, match="not allowed"):
        storage.safe_name(name)


def test_safe_name_says_what_was_named():
    with pytest.raises(ValueError, match=r"^model name '\.\./m'"):
        storage.safe_name("../m", what="model")


@pytest.mark.parametrize(
    ("base", "parts", "joined"),
    [
        ("/out", ("naip", "c", "2016"), "/out/naip/c/2016"),
        ("/out/", ("/naip/", "x.png"), "/out/naip/x.png"),
        ("abfs://container/prefix/", ("naip",), "abfs://container/prefix/naip"),
        ("abfs://container", (), "abfs://container"),
        ("rel", ("a/b", "c"), "rel/a/b/c"),
    ],
)
def test_join(base, parts, joined):
    assert storage.join(base, *parts) == joined


def test_write_bytes_creates_folders_and_is_shared_readable(tmp_path):
    url = str(tmp_path / "a" / "b" / "manifest.parquet")
    old = os.umask(0o077)  # a private umask must not make outputs private
    try:
        storage.write_bytes(url, b"first")
    finally:
        os.umask(old)
    assert storage.read_bytes(url) == b"first"
    assert stat.S_IMODE(os.stat(url).st_mode) == 0o644
    assert os.listdir(tmp_path / "a" / "b") == ["manifest.parquet"]


def test_write_bytes_overwrites_without_leftovers(tmp_path):
    url = str(tmp_path / "x.bin")
    storage.write_bytes(url, b"old contents, longer")
    inode = os.stat(url).st_ino
    storage.write_bytes(url, b"new")
    assert storage.read_bytes(url) == b"new"
    assert os.stat(url).st_ino != inode  # replaced by rename, not rewritten in place
    assert os.listdir(tmp_path) == ["x.bin"]


def test_failed_write_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep").write_bytes(b"k")
    with pytest.raises(OSError):
        storage.write_bytes(str(target), b"data")  # cannot replace a folder with a file
    assert sorted(os.listdir(tmp_path)) == ["taken"]
    assert os.listdir(target) == ["keep"]


def test_read_missing(tmp_path):
    url = str(tmp_path / "nope.json")
    with pytest.raises(storage.StorageError, match=r"nope\.json does not exist"):
        storage.read_bytes(url)
    assert not storage.exists(url)


def test_exists_for_objects_and_folders(tmp_path):
    assert not storage.exists(str(tmp_path / "d"))
    storage.write_bytes(str(tmp_path / "d" / "e" / "f.txt"), b"x")
    assert storage.exists(str(tmp_path / "d"))
    assert storage.exists(str(tmp_path / "d" / "e" / "f.txt"))


def test_glob_on_local_folders(tmp_path):
    for rel in ("b/m_2.tif", "a/m_1.tif", "m_0.tif", "a/deeper/m_3.tif", "a/notes.txt"):
        storage.write_bytes(str(tmp_path / rel), b"")
    found = storage.glob(storage.join(str(tmp_path), "**", "*.tif"))
    assert found == sorted(found)
    assert {os.path.relpath(p, tmp_path) for p in found} == {
        "m_0.tif", "a/m_1.tif", "b/m_2.tif", "a/deeper/m_3.tif"
    }
    assert all(os.path.isabs(p) for p in found)
    assert [os.path.basename(p) for p in storage.glob(str(tmp_path / "a" / "*"))] == [
        "deeper", "m_1.tif", "notes.txt"
    ]
    assert storage.glob(str(tmp_path / "missing" / "*.tif")) == []


def test_parquet_roundtrip(tmp_path):
    table = pa.table({"tile_id": ["a", "b"], "purity": pa.array([1.0, 0.5], pa.float32())})
    url = str(tmp_path / "t.parquet")
    storage.write_parquet(url, table)
    assert storage.read_parquet(url).equals(table)


def test_local_urls():
    assert storage.is_local("/tmp/x")
    assert storage.is_local("relative/x")
    assert storage.storage_options("/tmp/x") == {}


def test_storage_options_from_environment(monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_SAS_TOKEN", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_NAME", "acct")
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT_KEY", "a2V5")
    assert storage.storage_options("abfs://c/x") == {"account_name": "acct", "account_key": "a2V5"}
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true")
    assert storage.storage_options("az://c/x") == {
        "connection_string": "UseDevelopmentStorage=true"
    }


# --- write_folder --------------------------------------------------------------------------


def _tree(folder):
    return {
        os.path.relpath(os.path.join(d, n), folder): open(os.path.join(d, n), "rb").read()
        for d, _, names in os.walk(folder) for n in names
    }


def test_write_folder_publishes_every_file(tmp_path):
    url = str(tmp_path / "change" / "county=a" / "2010-2016")
    files = {"report.md": b"# r", "maps/change.tif": b"tif", "summary.json": b"{}"}
    old = os.umask(0o077)
    try:
        storage.write_folder(url, files, commit="summary.json")
    finally:
        os.umask(old)
    assert _tree(url) == files
    assert stat.S_IMODE(os.stat(url).st_mode) == 0o755  # shared, like write_bytes
    assert os.listdir(tmp_path / "change" / "county=a") == ["2010-2016"]


def test_write_folder_rerun_replaces_the_folder(tmp_path):
    url = str(tmp_path / "out" / "report")
    storage.write_folder(url, {"a.txt": b"1", "old.png": b"o", "s.json": b"1"}, commit="s.json")
    storage.write_folder(url, {"a.txt": b"2", "s.json": b"2"}, commit="s.json")
    assert _tree(url) == {"a.txt": b"2", "s.json": b"2"}  # old.png is gone
    assert os.listdir(tmp_path / "out") == ["report"]  # no .tmp- folders left


def test_write_folder_needs_its_commit_file(tmp_path):
    url = str(tmp_path / "out" / "report")
    with pytest.raises(ValueError, match=r"commit file summary\.json is not among the files"):
        storage.write_folder(url, {"a.txt": b"1"}, commit="summary.json")
    assert not os.path.exists(tmp_path / "out")


def test_failed_write_folder_keeps_the_old_folder(tmp_path):
    url = str(tmp_path / "out" / "report")
    storage.write_folder(url, {"a.txt": b"1", "s.json": b"1"}, commit="s.json")
    with pytest.raises(TypeError):
        storage.write_folder(url, {"a.txt": b"2", "b.txt": None, "s.json": b"2"},  # type: ignore[dict-item]
                             commit="s.json")
    assert _tree(url) == {"a.txt": b"1", "s.json": b"1"}
    assert os.listdir(tmp_path / "out") == ["report"]


@pytest.fixture
def memory_root(request):
    """A fresh folder on fsspec's in-memory filesystem: a remote store, like blob storage."""
    import fsspec

    root = f"memory://write-folder-{request.node.name}"
    yield root
    fs = fsspec.filesystem("memory")
    if fs.exists(root):
        fs.rm(root, recursive=True)


def test_write_folder_on_a_remote_store_commits_last_and_replaces(memory_root, monkeypatch):
    url = storage.join(memory_root, "report")
    storage.write_folder(url, {"a.txt": b"1", "old.png": b"o", "s.json": b"1"}, commit="s.json")
    fs, path = storage.filesystem(url)
    written: list[str] = []
    seen_marker: list[bool] = []
    pipe = fs.pipe_file

    def recording_pipe(p, data, **kwargs):
        written.append(p.rsplit("/", 1)[-1])
        seen_marker.append(fs.exists(f"{path}/s.json"))
        return pipe(p, data, **kwargs)

    monkeypatch.setattr(fs, "pipe_file", recording_pipe)
    storage.write_folder(url, {"b.txt": b"2", "a.txt": b"2", "s.json": b"2"}, commit="s.json")
    assert written[-1] == "s.json" and sorted(written) == ["a.txt", "b.txt", "s.json"]
    assert not any(seen_marker)  # the old marker went first: never whole while rewriting
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.find(path)) == ["a.txt", "b.txt", "s.json"]
    assert storage.read_bytes(storage.join(url, "a.txt")) == b"2"


def test_write_folder_on_blob_storage_replaces_the_folder(azure_env):
    url = f"abfs://{azure_env}/change/county=a/2010-2016"
    storage.write_folder(url, {"a.txt": b"1", "maps/old.tif": b"o", "s.json": b"1"},
                         commit="s.json")
    storage.write_folder(url, {"a.txt": b"2", "s.json": b"2"}, commit="s.json")
    fs, path = storage.filesystem(url)
    assert sorted(p.removeprefix(f"{path}/") for p in fs.find(path)) == ["a.txt", "s.json"]
    assert storage.read_bytes(f"{url}/s.json") == b"2"


def test_write_folder_on_blob_storage_keeps_the_named_subfolders(azure_env):
    url = f"abfs://{azure_env}/change/county=b/2010-2016"
    storage.write_folder(url, {"a.txt": b"1", "s.json": b"1"}, commit="s.json")
    storage.write_bytes(f"{url}/reviews/1.json", b"answer")
    storage.write_folder(url, {"s.json": b"2"}, commit="s.json", keep=("reviews",))
    fs, path = storage.filesystem(url)
    assert sorted(p.removeprefix(f"{path}/") for p in fs.find(path)) == [
        "reviews/1.json", "s.json"]


def test_remove_temporaries_deletes_only_a_killed_writers_debris(tmp_path):
    from landuse import storage

    (tmp_path / ".tmp-abc123tile.png").write_bytes(b"half a tile")
    (tmp_path / "tile.png").write_bytes(b"whole")
    assert storage.remove_temporaries(str(tmp_path)) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["tile.png"]
    assert storage.remove_temporaries(str(tmp_path / "missing")) == 0
    assert storage.remove_temporaries("abfs://container/prefix") == 0


def _http_error(status: int) -> Exception:
    from azure.core.exceptions import HttpResponseError

    err = HttpResponseError(message=f"status {status}")
    err.status_code = status
    return err


@pytest.mark.parametrize(
    ("make", "transient"),
    [
        (lambda: ConnectionResetError("reset by peer"), True),
        (lambda: TimeoutError("read timed out"), True),
        (lambda: _http_error(429), True),
        (lambda: _http_error(503), True),
        (lambda: _http_error(403), False),
        (lambda: _http_error(404), False),
        (lambda: FileNotFoundError("gone"), False),
        (lambda: ValueError("not a PNG"), False),
    ],
)
def test_transient_errors_are_told_by_what_happened(make, transient):
    from azure.core.exceptions import ServiceRequestError

    err = make()
    assert storage.is_transient(err) is transient
    # Wrapped in a content-looking error, the cause still decides.
    try:
        try:
            raise err
        except Exception as inner:
            raise ValueError("cannot decode tile") from inner
    except ValueError as outer:
        assert storage.is_transient(outer) is transient
    assert storage.is_transient(ServiceRequestError("Cannot connect to host"))


def test_transient_reads_are_retried_with_back_off(monkeypatch):
    monkeypatch.setenv("LANDUSE_STORAGE_RETRIES", "4")
    monkeypatch.setenv("LANDUSE_STORAGE_RETRY_MAX_WAIT_S", "0.01")
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise _http_error(503)
        return "ok"

    assert storage.with_retries("read x", flaky) == "ok" and len(calls) == 3

    def throttled() -> None:
        calls.append(1)
        raise _http_error(429)

    calls.clear()
    with pytest.raises(storage.StorageUnavailable, match="read x: storage unavailable"):
        storage.with_retries("read x", throttled)
    assert len(calls) == 4  # bounded: every attempt, then up to the orchestrator

    def missing() -> None:
        calls.append(1)
        raise FileNotFoundError("/nonexistent/x")

    calls.clear()
    with pytest.raises(FileNotFoundError):
        storage.with_retries("read x", missing)
    assert len(calls) == 1  # what cannot heal is not retried


def test_reachability_check(azurite, monkeypatch):
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite)
    storage.check_reachable("abfs://nocontainer/missing.tif")  # up, though nothing is there
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.replace(
        azurite.split("BlobEndpoint=http://127.0.0.1:", 1)[1].split("/", 1)[0], str(port)))
    with pytest.raises(storage.StorageUnavailable, match=r"missing\.tif"):
        storage.check_reachable("abfs://nocontainer/missing.tif")


def test_write_folder_keeps_the_named_subfolders_of_a_rerun(tmp_path):
    url = str(tmp_path / "out" / "report")
    storage.write_folder(url, {"a.txt": b"1", "s.json": b"1"}, commit="s.json")
    storage.write_bytes(f"{url}/reviews/1.json", b"answer")
    storage.write_folder(url, {"a.txt": b"2", "s.json": b"2"}, commit="s.json",
                         keep=("reviews",))
    assert storage.read_bytes(f"{url}/reviews/1.json") == b"answer"
    assert storage.read_bytes(f"{url}/a.txt") == b"2"
    storage.write_folder(url, {"s.json": b"3"}, commit="s.json")  # nothing kept
    assert not (tmp_path / "out" / "report" / "reviews").exists()
