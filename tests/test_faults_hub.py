"""Fault suite, Hub: a push interrupted mid-upload (the local test server drops the connection while the commit
is uploading) and a push to an unreachable endpoint are one clear `HubError` line, leave no partial commit on the
remote and leave the local checkpoint untouched. In-process: the Hub endpoint and offline switch are patched on
`huggingface_hub.constants` for the test only."""

import socket

import pytest
from huggingface_hub import constants

from hf_mpprune import HubError, MPPruner
from hf_mpprune.cli.main import main
from tests.fault_helpers import fingerprint, make_checkpoint
from tests.hub_server import HubServer, _Handler


class _DropsCommits(_Handler):
    """Reads half of a commit upload, then closes the connection without answering."""

    def do_POST(self):
        if "/commit/" in self.path:
            self.server.log.append(("POST-DROPPED", self.path, {}))
            self.rfile.read(int(self.headers.get("Content-Length") or 0) // 2)
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        return super().do_POST()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "ckpt"
    make_checkpoint(path, analyze=False)
    return path


@pytest.fixture
def online(monkeypatch, tmp_path):
    def point_to(url: str) -> None:
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_TOKEN", "hf_dummy")
    return point_to


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_push_dropped_mid_upload_leaves_no_commit(saved, online, capsys):
    before = fingerprint(saved)
    with HubServer() as hub:
        hub.server.RequestHandlerClass = _DropsCommits
        online(hub.url)
        rc = main(["push", str(saved), "--repo-id", "org/x"])
        dropped = [p for m, p, _ in hub.log if m == "POST-DROPPED"]
        commits, files = list(hub.commits), hub.files("org/x")
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("hf-mpprune")]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in lines[0]
    assert "'org/x'" in lines[0] and hub.url in lines[0] and "no partial commit" in lines[0]
    assert dropped == ["/api/models/org/x/commit/main"]  # the upload really started, then broke
    assert commits == [] and files == {}  # the remote has only its empty initial commit
    assert fingerprint(saved) == before


def test_push_after_a_dropped_push_succeeds_with_one_commit(saved, online):
    with HubServer() as hub:
        online(hub.url)
        pruner = MPPruner.from_pretrained(saved)
        hub.server.RequestHandlerClass = _DropsCommits
        with pytest.raises(HubError) as info:
            pruner.push_to_hub("org/x")
        assert isinstance(info.value, OSError) and hub.commits == []
        hub.server.RequestHandlerClass = _Handler
        pruner.push_to_hub("org/x")
        assert len(hub.commits) == 1 and "mpprune_masks.safetensors" in hub.files("org/x")


def test_push_to_unreachable_endpoint(saved, online, capsys):
    before = fingerprint(saved)
    url = f"http://127.0.0.1:{_closed_port()}"
    online(url)
    assert main(["push", str(saved), "--repo-id", "org/x"]) == 1
    lines = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("hf-mpprune")]
    assert len(lines) == 1 and url in lines[0] and "ConnectError" in lines[0]
    assert fingerprint(saved) == before
