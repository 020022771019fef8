"""A tiny in-memory Hub for upload tests: stdlib `ThreadingHTTPServer` speaking the routes `huggingface_hub` 2.x
calls for create_repo, create_commit, file listings and downloads. Commits are stored per repo as {path: bytes}
snapshots and served back through the revision / tree / resolve routes, so `snapshot_download` and
`from_pretrained("org/repo")` work against it.

Start with `with HubServer() as hub: ...` (binds 127.0.0.1 on a free port; always shut down on exit).
"""

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse


class _Repo:
    def __init__(self):
        self.commits: dict[str, dict[str, bytes]] = {}
        self.refs: dict[str, str] = {}
        self.private = False
        self.prs = 0

    def snapshot(self, rev: str) -> tuple[str, dict[str, bytes]] | None:
        sha = self.refs.get(rev, rev if rev in self.commits else None)
        return (sha, self.commits[sha]) if sha is not None else None


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    # ---- plumbing -------------------------------------------------------------------------------------------
    def _send(self, code: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, code: int, obj, headers: dict | None = None, head: bool = False):
        self._send(code, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})}, head)

    def _error(self, code: int, kind: str, msg: str, head: bool = False):
        self._json(code, {"error": msg}, {"X-Error-Code": kind, "X-Error-Message": msg}, head)

    def _body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _split(self, rest: str) -> tuple[str, str]:
        """'org/name/<tail>' -> (repo_id, tail)."""
        parts = rest.split("/", 2)
        return "/".join(parts[:2]), parts[2] if len(parts) > 2 else ""

    # ---- routes ---------------------------------------------------------------------------------------------
    def do_POST(self):
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        self.server.log.append(("POST", path, {k.lower(): v for k, v in self.headers.items()}))
        body = self._body()
        if path == "/api/repos/create":
            req = json.loads(body)
            repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
            repo = self.server.repos.setdefault(repo_id, _Repo())
            repo.private = bool(req.get("private"))
            if not repo.refs:
                self._commit(repo, "main", [], "initial commit")
            return self._json(200, {"url": f"{self.server.url}/{repo_id}", "name": repo_id})
        if path == "/api/validate-yaml":
            return self._json(200, {})
        if not path.startswith("/api/models/"):
            return self._error(404, "NotFound", f"no route {path}")
        repo_id, tail = self._split(path[len("/api/models/") :])
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found")
        if tail.startswith("branch/"):
            branch = tail[len("branch/") :]
            repo.refs.setdefault(branch, repo.refs["main"])
            return self._json(200, {})
        if tail.startswith("preupload/"):
            files = json.loads(body)["files"]
            return self._json(
                200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if tail.startswith("commit/"):
            return self._do_commit(repo, repo_id, tail[len("commit/") :], body, query)
        return self._error(404, "NotFound", f"no route {path}")

    def _do_commit(self, repo: _Repo, repo_id: str, rev: str, body: bytes, query: dict):
        ops, summary = [], ""
        for line in body.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            if item["key"] == "header":
                summary = item["value"].get("summary", "")
            elif item["key"] == "file":
                ops.append(("add", item["value"]["path"], base64.b64decode(item["value"]["content"])))
            elif item["key"] == "deletedFile":
                ops.append(("del", item["value"]["path"], b""))
            else:
                return self._error(400, "BadRequest", f"unsupported commit operation {item['key']!r}")
        if rev not in repo.refs:
            return self._error(404, "RevisionNotFound", f"revision {rev} not found")
        target = rev
        if query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
            repo.prs += 1
            target = f"refs/pr/{repo.prs}"
            repo.refs[target] = repo.refs[rev]
        sha = self._commit(repo, target, ops, summary)
        out = {"commitUrl": f"{self.server.url}/{repo_id}/commit/{sha}", "commitOid": sha, "commitMessage": summary}
        if target != rev:
            out["pullRequestUrl"] = f"{self.server.url}/{repo_id}/discussions/{repo.prs}"
        self.server.commits.append({"repo": repo_id, "revision": target, "summary": summary, "ops": len(ops)})
        return self._json(200, out)

    def _commit(self, repo: _Repo, ref: str, ops: list, summary: str) -> str:
        files = dict(repo.commits[repo.refs[ref]]) if ref in repo.refs else {}
        for op, p, data in ops:
            if op == "add":
                files[p] = data
            else:
                files.pop(p, None)
        h = hashlib.sha1(summary.encode() + str(len(repo.commits)).encode())
        for p in sorted(files):
            h.update(p.encode() + hashlib.sha1(files[p]).digest())
        sha = h.hexdigest()
        repo.commits[sha] = files
        repo.refs[ref] = sha
        return sha

    def do_HEAD(self):
        self._get(head=True)

    def do_GET(self):
        self._get(head=False)

    def _get(self, head: bool):
        path = unquote(urlparse(self.path).path)
        self.server.log.append(("HEAD" if head else "GET", path, {k.lower(): v for k, v in self.headers.items()}))
        if path.startswith("/api/models/"):
            return self._api_get(path[len("/api/models/") :], head)
        repo_id, tail = self._split(path.lstrip("/"))
        if not tail.startswith("resolve/"):
            return self._error(404, "NotFound", f"no route {path}", head)
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found", head)
        rev, file = self._rev_and_rest(repo, tail[len("resolve/") :])
        snap = repo.snapshot(rev) if rev is not None else None
        if snap is None:
            return self._error(404, "RevisionNotFound", f"revision not found in {tail}", head)
        sha, files = snap
        if file not in files:
            return self._error(404, "EntryNotFound", f"{file} not found at {rev}", head)
        data = files[file]
        etag = f'"{hashlib.sha1(data).hexdigest()}"'
        return self._send(200, data, {"X-Repo-Commit": sha, "ETag": etag}, head)

    def _rev_and_rest(self, repo: _Repo, rest: str) -> tuple[str | None, str]:
        """Revisions may contain '/' (refs/pr/1): match the longest known ref prefix."""
        for ref in sorted(list(repo.refs) + list(repo.commits), key=len, reverse=True):
            if rest == ref or rest.startswith(ref + "/"):
                return ref, rest[len(ref) + 1 :]
        return None, rest

    def _api_get(self, rest: str, head: bool):
        repo_id, tail = self._split(rest)
        repo = self.server.repos.get(repo_id)
        if repo is None:
            return self._error(404, "RepoNotFound", f"repository {repo_id} not found", head)
        if tail in ("", "revision") or tail.startswith("revision/"):
            rev = tail[len("revision/") :] if tail.startswith("revision/") else "main"
            snap = repo.snapshot(rev)
            if snap is None:
                return self._error(404, "RevisionNotFound", f"revision {rev} not found", head)
            sha, files = snap
            sib = [{"rfilename": p, "size": len(d)} for p, d in sorted(files.items())]
            info = {"id": repo_id, "modelId": repo_id, "sha": sha, "private": repo.private, "siblings": sib}
            return self._json(200, info, head=head)
        if tail.startswith("tree/"):
            rev, sub = self._rev_and_rest(repo, tail[len("tree/") :])
            snap = repo.snapshot(rev) if rev is not None else None
            if snap is None:
                return self._error(404, "RevisionNotFound", f"revision not found in {tail}", head)
            _, files = snap
            entries = [
                {"type": "file", "path": p, "size": len(d), "oid": hashlib.sha1(d).hexdigest()}
                for p, d in sorted(files.items())
                if not sub or p.startswith(sub.rstrip("/") + "/")
            ]
            return self._json(200, entries, head=head)
        return self._error(404, "NotFound", f"no route /api/models/{rest}", head)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    url: str
    repos: dict[str, _Repo]
    log: list
    commits: list


class HubServer:
    """Context manager: an in-memory Hub on 127.0.0.1; `.url`, `.repos`, `.commits`, `.log`, `.files(repo)`."""

    def __init__(self, port: int = 0):
        self.server = _Server(("127.0.0.1", port), _Handler)
        self.server.timeout = 5
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.server.url, self.server.repos, self.server.log, self.server.commits = self.url, {}, [], []
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    @property
    def commits(self) -> list:
        return self.server.commits

    @property
    def log(self) -> list:
        return self.server.log

    def files(self, repo_id: str, rev: str = "main") -> dict[str, bytes]:
        snap = self.server.repos[repo_id].snapshot(rev)
        return {} if snap is None else snap[1]
