"""A local stand-in for the Hugging Face Hub: the HTTP endpoints ``huggingface_hub`` calls
for ``snapshot_download`` and for a push, served from memory on 127.0.0.1.

Why a server and not a mock: the tests then run the library's real code (URL building,
error mapping from the ``X-Error-Code`` headers, the cache layout, offline fallback, the
commit payload) and ours unchanged; only the far end is local. Written against
huggingface_hub 2.5 and the Hub's documented behaviour:

- ``GET /api/models/{repo}[/revision/{rev}]``  repo info (``sha``, ``siblings``)
- ``GET /api/models/{repo}/tree/{rev}[/{path}]``  the file listing (one page)
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``  a file, with ``ETag`` (git blob sha1),
  ``X-Repo-Commit`` and ``Content-Length``; all files are served as regular git blobs
  (no LFS/CDN redirect, no Xet)
- ``POST /api/repos/create``, ``POST /api/models/{repo}/branch/{branch}``
- ``POST /api/validate-yaml`` (the model card's front matter must parse)
- ``GET /api/agent-harnesses`` (an empty list; the library asks once per process)
- ``POST /api/models/{repo}/preupload/{rev}`` (every file "regular") and
  ``POST /api/models/{repo}/commit/{rev}`` (NDJSON, base64 contents)

Errors carry the headers the library maps to its exceptions: ``X-Error-Code:
RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``, 401/403 for a missing or weak
token. Every request is logged as ``(method, unquoted path)`` in :attr:`FakeHub.log`.
Reusable: a test adds repos with :meth:`FakeHub.commit` and reads what was pushed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content (what the Hub sends as a regular file's ETag)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    """One model repo: commits (full file maps) and refs (branch and tag names)."""

    private: bool = False
    commits: dict[str, dict[str, bytes]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> str | None:
        """A branch, a tag or a full commit id -> the commit id, or None."""
        if revision in self.refs:
            return self.refs[revision]
        return revision if revision in self.commits else None


class FakeHub:
    """The Hub's HTTP API for model repos, in memory, on a free local port.

    ``tokens`` maps each accepted token to the namespaces it may write to.
    """

    def __init__(self, tokens: dict[str, set[str]] | None = None):
        self.tokens = tokens if tokens is not None else {}
        self.repos: dict[str, Repo] = {}
        self.log: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self._counter = 0
        self._server: ThreadingHTTPServer | None = None

    # --- the test's side --------------------------------------------------------------
    def commit(self, repo_id: str, files: dict[str, bytes], branch: str = "main",
               message: str = "test commit", private: bool = False) -> str:
        """Commit ``files`` on top of ``branch`` (creating repo and branch); the commit id."""
        with self.lock:
            repo = self.repos.setdefault(repo_id, Repo(private=private))
            return self._commit(repo, files, branch, message)

    def tag(self, repo_id: str, name: str, commit: str) -> None:
        with self.lock:
            self.repos[repo_id].refs[name] = commit

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        """The files of ``repo_id`` at ``revision`` (what a push left there)."""
        repo = self.repos[repo_id]
        return dict(repo.commits[repo.resolve(revision)])

    def downloads(self) -> list[str]:
        """Paths of the files the client fetched (GET on ``/resolve/``), in order."""
        return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path in self.log
                if method == "GET" and "/resolve/" in path]

    @staticmethod
    def folder_files(folder: Path) -> dict[str, bytes]:
        """Every file under ``folder`` keyed by its POSIX path relative to it."""
        return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*"))
                if p.is_file()}

    @property
    def url(self) -> str:
        assert self._server is not None, "start() the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHub:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- the server's side ------------------------------------------------------------
    def _commit(self, repo: Repo, files: dict[str, bytes], branch: str, message: str,
                deleted: tuple[str, ...] = ()) -> str:
        parent = repo.refs.get(branch)
        tree = dict(repo.commits.get(parent, {})) if parent else {}
        tree.update(files)
        for path in deleted:
            tree.pop(path, None)
        self._counter += 1
        sha = hashlib.sha1(f"{parent}:{self._counter}:{sorted(tree)}".encode()).hexdigest()
        repo.commits[sha] = tree
        repo.refs[branch] = sha
        repo.messages[sha] = message
        return sha


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$"), "info"),
    ("GET", re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"), "tree"),
    ("HEAD", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"), "resolve"),
    ("GET", re.compile(r"^/api/agent-harnesses$"), "agent_harnesses"),
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<rev>[^/]+)$"), "create_branch"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
]


class _HubError(Exception):
    def __init__(self, status: int, code: str | None = None, message: str = "", headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


def _handler_for(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the library's connection pool expects

        def log_message(self, *args: Any) -> None:  # quiet: the test reads hub.log instead
            pass

        def do_HEAD(self) -> None:
            self._dispatch("HEAD")

        def do_GET(self) -> None:
            self._dispatch("GET")

        def do_POST(self) -> None:
            self._dispatch("POST")

        def _dispatch(self, method: str) -> None:
            raw_path = urlsplit(self.path).path
            body = self._body()
            with hub.lock:
                hub.log.append((method, unquote(raw_path)))
            for route_method, pattern, name in _ROUTES:
                match = pattern.match(raw_path)
                if route_method == method and match:
                    args = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    try:
                        with hub.lock:
                            status, headers, payload = getattr(self, "_" + name)(body=body, **args)
                    except _HubError as exc:
                        headers = {"X-Error-Message": exc.message, **exc.headers}
                        if exc.code:
                            headers["X-Error-Code"] = exc.code
                        self._send(exc.status, headers, json.dumps({"error": exc.message}).encode(),
                                   method)
                        return
                    self._send(status, headers, payload, method)
                    return
            self._send(404, {}, b'{"error": "no such endpoint"}', method)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().strip() or b"0", 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _send(self, status: int, headers: dict[str, str], payload: bytes, method: str) -> None:
            self.send_response(status)
            headers = {"Content-Type": "application/json", **headers}
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(payload)

        # --- auth and lookups ---------------------------------------------------------
        def _token(self) -> str | None:
            auth = self.headers.get("Authorization", "")
            return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

        def _require_write(self, namespace: str) -> None:
            token = self._token()
            if token is None:
                raise _HubError(401, None, "You must be authenticated to do this")
            if token not in hub.tokens:
                raise _HubError(401, None, "Invalid credentials in Authorization header")
            if namespace not in hub.tokens[token]:
                raise _HubError(403, None, f"You don't have the rights to write to {namespace}")

        def _repo(self, repo_id: str) -> Repo:
            repo = hub.repos.get(repo_id)
            readable = repo is not None and (not repo.private or self._token() in hub.tokens)
            if not readable:
                raise _HubError(401 if self._token() is None else 404, "RepoNotFound",
                                "Repository not found")
            return repo

        def _commit_of(self, repo: Repo, rev: str) -> str:
            sha = repo.resolve(rev)
            if sha is None:
                raise _HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return sha

        # --- endpoints ----------------------------------------------------------------
        def _info(self, body: bytes, repo: str, rev: str | None):
            record = self._repo(repo)
            sha = self._commit_of(record, rev or "main")
            info = {"id": repo, "modelId": repo, "sha": sha, "private": record.private,
                    "siblings": [{"rfilename": p} for p in sorted(record.commits[sha])],
                    "tags": [], "downloads": 0, "likes": 0}
            return 200, {}, json.dumps(info).encode()

        def _tree(self, body: bytes, repo: str, rev: str, path: str | None):
            record = self._repo(repo)
            files = record.commits[self._commit_of(record, rev)]
            prefix = f"{path.rstrip('/')}/" if path else ""
            entries = [{"type": "file", "path": p, "size": len(data), "oid": git_blob_sha1(data)}
                       for p, data in sorted(files.items()) if p.startswith(prefix)]
            return 200, {}, json.dumps(entries).encode()

        def _resolve(self, body: bytes, repo: str, rev: str, path: str):
            record = self._repo(repo)
            sha = self._commit_of(record, rev)
            if path not in record.commits[sha]:
                raise _HubError(404, "EntryNotFound", f"{path} does not exist",
                                headers={"X-Repo-Commit": sha})
            data = record.commits[sha][path]
            headers = {"Content-Type": "application/octet-stream", "ETag": f'"{git_blob_sha1(data)}"',
                       "X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
            return 200, headers, data

        def _agent_harnesses(self, body: bytes):
            return 200, {}, json.dumps({"standardEnvVars": [], "harnesses": {}}).encode()

        def _create_repo(self, body: bytes):
            request = json.loads(body)
            repo_id = f"{request.get('organization') or ''}/{request['name']}".lstrip("/")
            self._require_write(repo_id.split("/")[0])
            url = f"{hub.url}/{repo_id}"
            if repo_id in hub.repos:
                raise _HubError(409, None, "You already created this model repo",
                                headers={"Content-Type": "application/json"})
            private = request.get("private") or request.get("visibility") == "private"
            record = hub.repos[repo_id] = Repo(private=bool(private))
            hub._commit(record, {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                        "main", "initial commit")
            return 200, {}, json.dumps({"url": url, "name": repo_id, "id": repo_id}).encode()

        def _validate_yaml(self, body: bytes):
            content = json.loads(body)["content"]
            errors = []
            if not content.startswith("---\n"):
                errors.append({"message": "no YAML front matter"})
            else:
                try:
                    meta = yaml.safe_load(content.split("---\n", 2)[1])
                    if not isinstance(meta, dict):
                        errors.append({"message": "front matter is not a mapping"})
                except yaml.YAMLError as exc:
                    errors.append({"message": f"invalid YAML: {exc}"})
            status = 400 if errors else 200
            return status, {}, json.dumps({"errors": errors, "warnings": []}).encode()

        def _create_branch(self, body: bytes, repo: str, rev: str):
            self._require_write(repo.split("/")[0])
            record = self._repo(repo)
            if rev in record.refs:
                raise _HubError(409, None, f"Reference refs/heads/{rev} already exists")
            start = (json.loads(body) if body else {}).get("startingPoint") or "main"
            record.refs[rev] = self._commit_of(record, start)
            return 200, {}, b"{}"

        def _preupload(self, body: bytes, repo: str, rev: str):
            self._require_write(repo.split("/")[0])
            self._commit_of(self._repo(repo), rev)
            files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                     for f in json.loads(body)["files"]]
            return 200, {}, json.dumps({"files": files}).encode()

        def _commit(self, body: bytes, repo: str, rev: str):
            self._require_write(repo.split("/")[0])
            record = self._repo(repo)
            self._commit_of(record, rev)
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            header = next(line["value"] for line in lines if line["key"] == "header")
            added, deleted = {}, []
            for line in lines:
                if line["key"] == "file":
                    added[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                elif line["key"] in ("deletedFile", "deletedFolder"):
                    deleted.append(line["value"]["path"])
                elif line["key"] != "header":
                    raise _HubError(400, None, f"this fake Hub does not take {line['key']!r} entries")
            sha = hub._commit(record, added, rev, header.get("summary", ""), tuple(deleted))
            reply = {"success": True, "commitOid": sha, "commitUrl": f"{hub.url}/{repo}/commit/{sha}"}
            return 200, {}, json.dumps(reply).encode()

    return Handler
