"""A loopback Hugging Face Hub emulator, good enough for the real `huggingface_hub` client (Xet disabled).

It keeps repositories in memory and serves what ``create_repo``, ``upload_folder`` / ``create_commit`` (preupload,
LFS batch + PUT, ndjson commit), ``model_info`` / ``repo_info``, ``list_repo_files`` / ``list_repo_tree``,
``get_paths_info``, ``hf_hub_download`` and ``snapshot_download`` need, with the Hub's headers (``ETag``,
``X-Repo-Commit``, ``X-Linked-Etag``, ``X-Linked-Size``, ``X-Error-Code``). LFS objects live on a second port that
plays the CDN: ``resolve`` of an LFS file answers 302 to it, as the Hub redirects to its storage host.

Which files go through LFS: those matched by the repo's ``.gitattributes`` LFS patterns, those of at least
``lfs_threshold`` bytes, and binary ones (a NUL byte in the sample); ``force_upload_mode`` overrides it all.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import itertools
import json
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_USER = "dccl-tester"
REPO_TYPES = ("model", "dataset", "space")
URL_PREFIXES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
API_ACTIONS = frozenset({"revision", "tree", "paths-info", "preupload", "commit", "refs"})
LFS_BATCH_SUFFIX = ".git/info/lfs/objects/batch"
DEFAULT_GITATTRIBUTES = "".join(
    f"{pattern} filter=lfs diff=lfs merge=lfs -text\n"
    for pattern in ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.npy", "*.h5", "*.onnx", "*.zip", "*.gz")
)


def git_blob_id(content: bytes) -> str:
    """The git object id of a blob, as the Hub reports for regular files."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The git-lfs pointer file stored in git in place of an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass(frozen=True)
class StoredFile:
    """One file of a commit: regular (content in git) or LFS (content in the LFS store, keyed by sha256)."""

    size: int
    content: bytes | None = None
    lfs_sha256: str | None = None

    @property
    def blob_id(self) -> str:
        if self.lfs_sha256 is not None:
            return git_blob_id(lfs_pointer(self.lfs_sha256, self.size))
        assert self.content is not None
        return git_blob_id(self.content)

    def tree_entry(self, path: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_sha256 is not None:
            pointer_size = len(lfs_pointer(self.lfs_sha256, self.size))
            entry["lfs"] = {"oid": self.lfs_sha256, "size": self.size, "pointerSize": pointer_size}
        return entry


@dataclass
class Repo:
    """A repository: commits (full file trees) and refs (branch or PR name → commit id)."""

    repo_type: str
    repo_id: str
    private: bool
    commits: dict[str, dict[str, StoredFile]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    )


class HubError(Exception):
    """An HTTP error answer, with the Hub's ``X-Error-Code`` when it has one."""

    def __init__(self, status: int, message: str, code: str | None = None, commit: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.commit = commit


class HubState:
    """All repositories and LFS objects, shared by the request handler threads."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_threshold = 10 * 1024 * 1024
        self.force_upload_mode: str | None = None
        self.requests: list[tuple[str, str]] = []
        self._counter = itertools.count()

    def new_commit_id(self, seed: bytes) -> str:
        return hashlib.sha1(seed + str(next(self._counter)).encode()).hexdigest()

    def repo(self, repo_type: str, repo_id: str) -> Repo:
        repo = self.repos.get((repo_type, repo_id))
        if repo is None:
            raise HubError(404, f"Repository {repo_type}s/{repo_id} not found", "RepoNotFound")
        return repo

    def resolve(self, repo: Repo, revision: str) -> str:
        if revision in repo.refs:
            return repo.refs[revision]
        if revision in repo.commits:
            return revision
        raise HubError(404, f"Revision {revision!r} not found in {repo.repo_id}", "RevisionNotFound")

    def upload_mode(self, tree: dict[str, StoredFile], path: str, size: int, sample: bytes) -> str:
        """Decide "lfs" or "regular" like the Hub: .gitattributes LFS patterns, size, binary content."""
        if self.force_upload_mode is not None:
            return self.force_upload_mode
        attributes = tree.get(".gitattributes")
        lines = (attributes.content or b"").decode().splitlines() if attributes is not None else []
        patterns = [line.split()[0] for line in lines if "filter=lfs" in line]
        name = path.rsplit("/", 1)[-1]
        if any(fnmatch.fnmatch(name, pattern) or fnmatch.fnmatch(path, pattern) for pattern in patterns):
            return "lfs"
        return "lfs" if size >= self.lfs_threshold or b"\0" in sample else "regular"


class HubServer:
    """Two loopback HTTP servers in daemon threads: the Hub API (``endpoint``) and the LFS storage ("CDN")."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.state = HubState()
        self._servers = [ThreadingHTTPServer((host, 0), HubRequestHandler) for _ in range(2)]
        for server in self._servers:
            server.daemon_threads = True
            server.hub = self  # type: ignore[attr-defined]
        self.endpoint = f"http://{host}:{self._servers[0].server_port}"
        self.storage_endpoint = f"http://{host}:{self._servers[1].server_port}"
        self._threads = [
            threading.Thread(target=server.serve_forever, daemon=True) for server in self._servers
        ]

    def start(self) -> HubServer:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def files(self, repo_id: str, revision: str = "main", repo_type: str = "model") -> dict[str, StoredFile]:
        """The files of a revision, for assertions in tests."""
        with self.state.lock:
            repo = self.state.repo(repo_type, repo_id)
            return dict(repo.commits[self.state.resolve(repo, revision)])


class HubRequestHandler(BaseHTTPRequestHandler):
    """Routes requests to the emulated Hub endpoints; errors become JSON answers with ``X-Error-Code``."""

    protocol_version = "HTTP/1.1"
    server_version = "LoopbackHub/1.0"

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    @property
    def state(self) -> HubState:
        return self.hub.state

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; requests are recorded in ``HubState.requests``."""

    # ---- plumbing ----------------------------------------------------------------------------------------------

    def read_body(self) -> bytes:
        """The request body, de-chunked when sent with ``Transfer-Encoding: chunked`` (streamed uploads)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def send(
        self,
        status: int,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> None:
        """Answer with `body` (omitted for HEAD, whose Content-Length still gives the full size)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_json(self, value: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        self.send(status, json.dumps(value).encode(), headers)

    def dispatch(self) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        segments = [segment for segment in url.path.split("/") if segment]
        with self.state.lock:
            self.state.requests.append((self.command, url.path))
        body = self.read_body() if self.command in ("POST", "PUT") else b""
        try:
            try:
                self.route(segments, body)
            except (ValueError, KeyError, TypeError) as error:
                raise HubError(400, f"Bad request to {self.path}: {error!r}") from error
        except HubError as error:
            headers = {"X-Error-Message": str(error)}
            if error.code:
                headers["X-Error-Code"] = error.code
            if error.commit:
                headers["X-Repo-Commit"] = error.commit
            self.send_json({"error": str(error)}, error.status, headers)

    do_GET = do_HEAD = do_POST = do_PUT = dispatch  # noqa: N815 (http.server method names)

    def route(self, segments: list[str], body: bytes) -> None:
        command = self.command
        if segments[:1] == ["api"]:
            self.route_api(segments[1:], body)
        elif segments[:1] == ["lfs-objects"] and len(segments) == 2:
            if command == "PUT":
                self.put_lfs_object(segments[1], body)
            else:
                self.get_lfs_object(segments[1])
        elif self.path.split("?")[0].endswith(LFS_BATCH_SUFFIX) and command == "POST":
            repo_type, rest = self.split_repo_type(segments)
            repo_path = "/".join(rest)[: -len(LFS_BATCH_SUFFIX)]
            self.state.repo(repo_type, unquote(repo_path))  # unknown repos get the Hub's 404
            self.lfs_batch(json.loads(body))
        elif "resolve" in segments[:4] and command in ("GET", "HEAD"):
            repo_type, rest = self.split_repo_type(segments)
            position = rest.index("resolve")
            if position not in (1, 2) or len(rest) < position + 3:
                raise HubError(400, f"Malformed resolve url {self.path}")
            repo_id = "/".join(unquote(part) for part in rest[:position])
            revision = unquote(rest[position + 1])
            filename = "/".join(unquote(part) for part in rest[position + 2 :])
            self.resolve_file(repo_type, repo_id, revision, filename)
        else:
            raise HubError(404, f"No route for {command} {self.path}")

    @staticmethod
    def split_repo_type(segments: list[str]) -> tuple[str, list[str]]:
        for repo_type, prefix in URL_PREFIXES.items():
            if prefix and segments[:1] == [prefix.rstrip("/")]:
                return repo_type, segments[1:]
        return "model", segments

    def route_api(self, segments: list[str], body: bytes) -> None:
        command = self.command
        if segments == ["repos", "create"] and command == "POST":
            return self.create_repo(json.loads(body))
        if segments == ["repos", "delete"] and command == "POST":
            return self.delete_repo(json.loads(body))
        if segments == ["whoami-v2"] and command == "GET":
            return self.send_json({"type": "user", "name": DEFAULT_USER, "orgs": [], "auth": {}})
        if segments == ["validate-yaml"] and command == "POST":
            return self.send_json({"errors": [], "warnings": []})
        if len(segments) < 2 or segments[0].removesuffix("s") not in REPO_TYPES:
            raise HubError(404, f"No route for {command} {self.path}")
        repo_type, rest = segments[0].removesuffix("s"), segments[1:]
        two_part = (len(rest) >= 3 and rest[2] in API_ACTIONS) or (
            len(rest) == 2 and rest[1] not in API_ACTIONS
        )
        split = 2 if two_part else 1
        repo = self.state.repo(repo_type, "/".join(unquote(part) for part in rest[:split]))
        action, arguments = (rest[split], rest[split + 1 :]) if len(rest) > split else ("info", [])
        revision = unquote(arguments[0]) if arguments else "main"
        if action in ("info", "revision") and command == "GET":
            return self.repo_info(repo, revision)
        if action == "tree" and command == "GET":
            path = "/".join(unquote(part) for part in arguments[1:])
            return self.list_tree(repo, revision, path)
        if action == "paths-info" and command == "POST":
            return self.paths_info(repo, revision, body)
        if action == "preupload" and command == "POST":
            return self.preupload(repo, revision, json.loads(body))
        if action == "commit" and command == "POST":
            return self.commit(repo, revision, body)
        if action == "refs" and command == "GET":
            branches = [
                {"name": name, "ref": f"refs/heads/{name}", "targetCommit": oid}
                for name, oid in repo.refs.items()
                if not name.startswith("refs/pr/")
            ]
            return self.send_json({"branches": branches, "tags": [], "converts": []})
        raise HubError(404, f"No route for {command} {self.path}")

    # ---- repositories ------------------------------------------------------------------------------------------

    def repo_url(self, repo: Repo) -> str:
        return f"{self.hub.endpoint}/{URL_PREFIXES[repo.repo_type]}{repo.repo_id}"

    def create_repo(self, payload: dict[str, Any]) -> None:
        repo_type = payload.get("type") or "model"
        name, organization = payload["name"], payload.get("organization") or DEFAULT_USER
        repo_id = f"{organization}/{name}"
        with self.state.lock:
            existing = self.state.repos.get((repo_type, repo_id))
            if existing is not None:
                message = f"You already created this {repo_type} repo: {repo_id}"
                return self.send_json({"error": message, "url": self.repo_url(existing)}, 409)
            repo = Repo(repo_type, repo_id, private=payload.get("visibility") == "private")
            initial = self.state.new_commit_id(repo_id.encode())
            attributes = DEFAULT_GITATTRIBUTES.encode()
            repo.commits[initial] = {".gitattributes": StoredFile(len(attributes), content=attributes)}
            repo.refs["main"] = initial
            self.state.repos[(repo_type, repo_id)] = repo
        self.send_json({"url": self.repo_url(repo), "name": repo_id, "id": repo_id})

    def delete_repo(self, payload: dict[str, Any]) -> None:
        repo_type = payload.get("type") or "model"
        repo_id = f"{payload.get('organization') or DEFAULT_USER}/{payload['name']}"
        with self.state.lock:
            self.state.repo(repo_type, repo_id)
            del self.state.repos[(repo_type, repo_id)]
        self.send_json({})

    def repo_info(self, repo: Repo, revision: str) -> None:
        with self.state.lock:
            sha = self.state.resolve(repo, revision)
            tree = repo.commits[sha]
        siblings = [
            {"rfilename": path, "size": stored.size, "blobId": stored.blob_id}
            for path, stored in sorted(tree.items())
        ]
        self.send_json(
            {
                "id": repo.repo_id,
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "author": repo.repo_id.split("/")[0],
                "sha": sha,
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "createdAt": repo.created_at,
                "lastModified": repo.created_at,
                "tags": [],
                "siblings": siblings,
            }
        )

    def list_tree(self, repo: Repo, revision: str, path: str) -> None:
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        with self.state.lock:
            sha = self.state.resolve(repo, revision)
            tree = repo.commits[sha]
        prefix = f"{path.strip('/')}/" if path.strip("/") else ""
        if prefix and not any(name.startswith(prefix) for name in tree):
            raise HubError(404, f"Path {path!r} not found in {repo.repo_id}", "EntryNotFound", sha)
        entries: dict[str, dict[str, Any]] = {}
        for name, stored in sorted(tree.items()):
            if not name.startswith(prefix):
                continue
            parts = name[len(prefix) :].split("/")
            for depth in range(1, len(parts)):
                folder = prefix + "/".join(parts[:depth])
                if recursive or depth == 1:
                    entries.setdefault(
                        folder,
                        {"type": "directory", "oid": git_blob_id(folder.encode()), "size": 0, "path": folder},
                    )
                if not recursive:
                    break
            if recursive or len(parts) == 1:
                entries[name] = stored.tree_entry(name)
        self.send_json(list(entries.values()))

    def paths_info(self, repo: Repo, revision: str, body: bytes) -> None:
        content_type = self.headers.get("Content-Type", "")
        if content_type.startswith("application/json"):
            paths = json.loads(body).get("paths", [])
        else:
            paths = parse_qs(body.decode()).get("paths", [])
        with self.state.lock:
            tree = repo.commits[self.state.resolve(repo, revision)]
        result = []
        for path in paths:
            path = path.strip("/")
            if path in tree:
                result.append(tree[path].tree_entry(path))
            elif any(name.startswith(f"{path}/") for name in tree):
                result.append(
                    {"type": "directory", "oid": git_blob_id(path.encode()), "size": 0, "path": path}
                )
        self.send_json(result)

    # ---- uploads -----------------------------------------------------------------------------------------------

    def preupload(self, repo: Repo, revision: str, payload: dict[str, Any]) -> None:
        with self.state.lock:
            tree = repo.commits[self.state.resolve(repo, revision)]
        files = []
        for item in payload["files"]:
            sample = base64.b64decode(item.get("sample", ""))
            mode = self.state.upload_mode(tree, item["path"], item["size"], sample)
            existing = tree.get(item["path"])
            oid = None
            if existing is not None:
                oid = existing.lfs_sha256 if existing.lfs_sha256 is not None else existing.blob_id
            files.append({"path": item["path"], "uploadMode": mode, "shouldIgnore": False, "oid": oid})
        self.send_json({"files": files, "commitOid": self.state.resolve(repo, revision)})

    def lfs_batch(self, payload: dict[str, Any]) -> None:
        if payload.get("operation") != "upload":
            raise HubError(400, "The loopback Hub only supports LFS uploads through the batch API")
        objects = []
        for item in payload["objects"]:
            oid, size = item["oid"], item["size"]
            entry: dict[str, Any] = {"oid": oid, "size": size, "authenticated": True}
            with self.state.lock:
                present = oid in self.state.lfs_objects
            if not present:
                href = f"{self.hub.storage_endpoint}/lfs-objects/{oid}"
                entry["actions"] = {"upload": {"href": href, "header": {}}}
            objects.append(entry)
        self.send(
            200,
            json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode(),
            content_type="application/vnd.git-lfs+json",
        )

    def put_lfs_object(self, oid: str, body: bytes) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f"Uploaded content does not match sha256 {oid}")
        with self.state.lock:
            self.state.lfs_objects[oid] = body
        self.send(200, b"", {"ETag": f'"{hashlib.md5(body).hexdigest()}"'})

    def commit(self, repo: Repo, revision: str, body: bytes) -> None:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "The commit payload must start with a header line")
        header = lines[0]["value"]
        create_pr = self.query.get("create_pr", ["0"])[0] in ("1", "true")
        with self.state.lock:
            parent = self.state.resolve(repo, revision)
            if header.get("parentCommit") not in (None, parent):
                raise HubError(
                    412, f"Parent commit {header['parentCommit']} is not the head {parent} of {revision}"
                )
            tree = dict(repo.commits[parent])
            for line in lines[1:]:
                self.apply_operation(tree, line["key"], line["value"], parent)
            oid = self.state.new_commit_id(body)
            repo.commits[oid] = tree
            pull_request_url = None
            if create_pr:
                number = 1 + sum(name.startswith("refs/pr/") for name in repo.refs)
                repo.refs[f"refs/pr/{number}"] = oid
                pull_request_url = f"{self.repo_url(repo)}/discussions/{number}"
            else:
                repo.refs[revision] = oid
        self.send_json(
            {
                "commitUrl": f"{self.repo_url(repo)}/commit/{oid}",
                "commitOid": oid,
                "pullRequestUrl": pull_request_url,
            }
        )

    def apply_operation(
        self, tree: dict[str, StoredFile], key: str, value: dict[str, Any], parent: str
    ) -> None:
        path = value["path"].strip("/")
        if key == "file":
            if value.get("encoding", "base64") != "base64":
                raise HubError(400, f"Unsupported encoding {value.get('encoding')!r} for {path}")
            content = base64.b64decode(value["content"])
            tree[path] = StoredFile(len(content), content=content)
        elif key == "lfsFile":
            oid = value["oid"]
            stored = self.state.lfs_objects.get(oid)
            if stored is None:
                raise HubError(422, f"LFS object {oid} for {path} was never uploaded")
            tree[path] = StoredFile(len(stored), lfs_sha256=oid)
        elif key == "deletedFile":
            if path not in tree:
                raise HubError(404, f"A file with this name doesn't exist: {path}", "EntryNotFound", parent)
            del tree[path]
        elif key == "deletedFolder":
            for name in [name for name in tree if name.startswith(f"{path}/")]:
                del tree[name]
        else:
            raise HubError(400, f"Unsupported commit operation {key!r}")

    # ---- downloads ---------------------------------------------------------------------------------------------

    def resolve_file(self, repo_type: str, repo_id: str, revision: str, filename: str) -> None:
        with self.state.lock:
            repo = self.state.repo(repo_type, repo_id)
            sha = self.state.resolve(repo, revision)
            stored = repo.commits[sha].get(filename)
        if stored is None:
            raise HubError(404, f"Entry {filename!r} not found in {repo_id}@{revision}", "EntryNotFound", sha)
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if stored.lfs_sha256 is not None:
            headers.update(
                {
                    "Location": f"{self.hub.storage_endpoint}/lfs-objects/{stored.lfs_sha256}",
                    "X-Linked-Etag": f'"{stored.lfs_sha256}"',
                    "X-Linked-Size": str(stored.size),
                    "ETag": f'"{stored.blob_id}"',
                }
            )
            return self.send(HTTPStatus.FOUND, b"", headers, content_type="text/plain")
        assert stored.content is not None
        headers["ETag"] = f'"{stored.blob_id}"'
        self.send_content(stored.content, headers)

    def get_lfs_object(self, oid: str) -> None:
        with self.state.lock:
            content = self.state.lfs_objects.get(oid)
        if content is None:
            raise HubError(404, f"LFS object {oid} not found")
        self.send_content(content, {"ETag": f'"{oid}"', "Accept-Ranges": "bytes"})

    def send_content(self, content: bytes, headers: dict[str, str]) -> None:
        """Send a file body, honouring a ``Range: bytes=start-[end]`` request (resumed downloads)."""
        requested = self.headers.get("Range", "")
        if requested.startswith("bytes=") and self.command == "GET":
            start_text, _, end_text = requested.removeprefix("bytes=").partition("-")
            start = int(start_text or 0)
            end = int(end_text) if end_text else len(content) - 1
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(content)}"}
            return self.send(206, content[start : end + 1], headers, content_type="application/octet-stream")
        self.send(200, content, headers, content_type="application/octet-stream")
