"""The loopback Hub emulator itself, driven by the real huggingface_hub client: both upload paths, listings,
downloads, errors. Other tests (artifacts, transformers integration) rely on it behaving like the Hub."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest
from hub_server import HubServer
from huggingface_hub import HfApi, hf_hub_download, snapshot_download
from huggingface_hub.errors import RemoteEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError


@pytest.fixture
def api(hub_server: HubServer) -> HfApi:
    return HfApi(endpoint=hub_server.endpoint)


def test_upload_modes_follow_gitattributes_threshold_and_binary_content(
    hub_server: HubServer, api: HfApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_server.state, "lfs_threshold", 1000)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "small.txt").write_text("hello")
    (folder / "big.txt").write_text("x" * 1000)
    (folder / "sub" / "blob.dat").write_bytes(b"\0\1\2")
    (folder / "weights.safetensors").write_bytes(b"{}")
    repo_id = api.create_repo("modes").repo_id
    assert repo_id == "dccl-tester/modes"
    api.upload_folder(repo_id=repo_id, folder_path=folder)
    files = hub_server.files(repo_id)
    lfs = {path for path, stored in files.items() if stored.lfs_sha256 is not None}
    assert lfs == {"big.txt", "sub/blob.dat", "weights.safetensors"}
    for name in ("small.txt", "big.txt", "sub/blob.dat", "weights.safetensors"):
        downloaded = hf_hub_download(repo_id, name, cache_dir=tmp_path / "cache")
        assert Path(downloaded).read_bytes() == (folder / name).read_bytes()


def test_listings_info_and_snapshot(hub_server: HubServer, api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo("listed").repo_id
    api.upload_file(path_or_fileobj=b"a", path_in_repo="dir/a.txt", repo_id=repo_id)
    commit = api.upload_file(path_or_fileobj=b"\0" * 10, path_in_repo="w.bin", repo_id=repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "dir/a.txt", "w.bin"]
    top = {entry.path for entry in api.list_repo_tree(repo_id)}
    assert top == {".gitattributes", "dir", "w.bin"}
    info = api.model_info(repo_id)
    assert info.sha == commit.oid
    assert {sibling.rfilename for sibling in info.siblings} == {".gitattributes", "dir/a.txt", "w.bin"}
    paths = {entry.path: entry for entry in api.get_paths_info(repo_id, ["w.bin", "dir", "missing"])}
    assert set(paths) == {"w.bin", "dir"}
    assert paths["w.bin"].lfs is not None
    assert paths["w.bin"].lfs.size == 10
    snapshot = Path(snapshot_download(repo_id, cache_dir=tmp_path))
    assert (snapshot / "dir" / "a.txt").read_bytes() == b"a"
    assert (snapshot / "w.bin").read_bytes() == b"\0" * 10
    api.delete_file("dir/a.txt", repo_id=repo_id)
    assert sorted(api.list_repo_files(repo_id)) == [".gitattributes", "w.bin"]
    assert hf_hub_download(repo_id, "dir/a.txt", revision=commit.oid, cache_dir=tmp_path / "old")


def test_errors_have_the_hub_error_codes(api: HfApi, tmp_path: Path) -> None:
    repo_id = api.create_repo("errors").repo_id
    assert api.create_repo("errors", exist_ok=True).repo_id == repo_id
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download(repo_id, "nope.txt", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_id, ".gitattributes", revision="v9", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        api.model_info("dccl-tester/never-created")


def test_range_requests_and_lfs_redirect(hub_server: HubServer, api: HfApi) -> None:
    repo_id = api.create_repo("ranged").repo_id
    api.upload_file(path_or_fileobj=bytes(range(100)), path_in_repo="r.bin", repo_id=repo_id)
    head = httpx2.head(f"{hub_server.endpoint}/{repo_id}/resolve/main/r.bin")
    assert head.status_code == 302
    assert head.headers["X-Linked-Size"] == "100"
    assert head.headers["X-Repo-Commit"] == api.model_info(repo_id).sha
    part = httpx2.get(head.headers["Location"], headers={"Range": "bytes=90-"})
    assert part.status_code == 206
    assert part.content == bytes(range(90, 100))
