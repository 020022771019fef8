"""Hub pushes against the local test server (`tests/hub_server.py`), in-process and in seconds (default suite):
a push → pull round trip that merges the card, a shard-layout change that deletes the other layout in the same
commit (and nothing of the user's), and answers other than "not found" (5xx, 401) that stop the push loudly."""

import functools
import json

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError

from hf_mpprune import HubError, MPPruner
from hf_mpprune.core.constants import LEDGER_NAME, MASKS_NAME
from hf_mpprune.hub import checkpoint
from hf_mpprune.hub.network import is_not_found
from tests.fault_helpers import make_checkpoint
from tests.hub_server import HubServer, _Handler
from tests.test_faults_hub import online  # noqa: F401  (fixture: endpoint patched for the test only)
from tests.tiny_models import vit_inputs


@pytest.fixture(scope="module")
def pruner(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("hub") / "ckpt", analyze=False)


def _logits(model, x):
    with torch.no_grad():
        return model(**x).logits


def test_push_pull_round_trip_merges_the_card(pruner, online, tmp_path):  # noqa: F811
    x = vit_inputs()
    with HubServer() as hub:
        online(hub.url)
        api = HfApi()
        api.create_repo("org/rt")
        api.upload_file(path_or_fileobj=b"---\nlicense: mit\ntags: [mine]\n---\n# My notes\nKEEP-ME\n",
                        path_in_repo="README.md", repo_id="org/rt")  # fmt: skip
        pruner.push_to_hub("org/rt", commit_message="one commit")
        back = MPPruner.from_pretrained("org/rt", cache_dir=str(tmp_path / "cache"))
        files = hub.files("org/rt")
        pushes = [c for c in hub.commits if c["summary"] == "one commit"]
    assert len(pushes) == 1 and {MASKS_NAME, LEDGER_NAME, "model.safetensors", "config.json"} <= set(files)
    assert torch.equal(_logits(back.model, x), _logits(pruner.model, x))
    assert back.masks.sha256() == pruner.masks.sha256() == json.loads(files[LEDGER_NAME])["identity"]["mask_sha256"]
    card = ModelCard(files["README.md"].decode())
    assert "KEEP-ME" in card.text and card.data.license == "mit"  # the user's card merged, not replaced
    assert {"mine", "hf-mpprune"} <= set(card.data.tags) and card.text.count("hf-mpprune:begin") == 1


def test_layout_change_deletes_the_other_layout_in_the_same_commit(pruner, online, monkeypatch):  # noqa: F811
    user_files = {"adapter_model.safetensors": b"user adapter", "notes/model.safetensors": b"user copy"}
    with HubServer() as hub:
        online(hub.url)
        api = HfApi()
        api.create_repo("org/layout")
        for path, data in {**user_files, "model.safetensors": b"stale single file"}.items():
            api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id="org/layout")
        with monkeypatch.context() as m:
            m.setattr(
                checkpoint, "save_pretrained", functools.partial(checkpoint.save_pretrained, max_shard_size="40KB")
            )
            pruner.push_to_hub("org/layout", commit_message="sharded")
        after_sharded = hub.files("org/layout")
        pruner.push_to_hub("org/layout", commit_message="single")
        after_single = hub.files("org/layout")
        summaries = [c["summary"] for c in hub.commits]
    shards = [f for f in after_sharded if f.startswith("model-0")]
    assert len(shards) >= 2 and "model.safetensors.index.json" in after_sharded
    assert "model.safetensors" not in after_sharded  # transformers would load the stale file first
    assert "model.safetensors" in after_single and not [f for f in after_single if f.startswith("model-0")]
    assert "model.safetensors.index.json" not in after_single
    for snapshot in (after_sharded, after_single):  # the user's files are never ours to delete
        assert all(snapshot[p] == d for p, d in user_files.items())
    assert summaries[-2:] == ["sharded", "single"]  # each push is one commit: adds and deletes together


class _Fails(_Handler):
    """Answers `status` to one kind of request (listing the repo's files, or downloading its card)."""

    status, route = 500, "tree"

    def _get(self, head: bool):
        path = self.path.split("?")[0]
        hit = "/tree/" in path if self.route == "tree" else path.endswith("/README.md")
        if hit:
            return self._error(self.status, "Unauthorized" if self.status == 401 else "", "injected", head)
        return super()._get(head)


@pytest.mark.parametrize(
    ("route", "status", "operation"),
    [("tree", 501, "listing the files of"), ("tree", 401, "listing the files of"),
     ("readme", 501, "reading the model card (README.md) of"), ("readme", 403, "reading the model card")],
)  # fmt: skip  # 5xx that huggingface_hub does not retry (500/502/503/504 are retried with back-off: seconds)
def test_hub_failures_other_than_not_found_stop_the_push(pruner, online, route, status, operation):  # noqa: F811
    handler = type("H", (_Fails,), {"status": status, "route": route})
    with HubServer() as hub:
        hub.server.RequestHandlerClass = handler  # before the first request (connections are kept alive)
        online(hub.url)
        with pytest.raises(HubError) as info:
            pruner.push_to_hub("org/x")
        assert hub.commits == []  # nothing decided on an answer that never came
    msg = str(info.value)
    assert operation in msg and "'org/x'" in msg and hub.url in msg
    assert str(status) in msg  # the HTTP answer, also when huggingface_hub wraps it


class _Response:
    def __init__(self, status):
        self.status_code, self.headers, self.request = status, {}, None


@pytest.mark.parametrize(
    ("error", "expected"),
    [(EntryNotFoundError("gone"), True), (LocalEntryNotFoundError("offline, not cached"), False),
     (RepositoryNotFoundError("no repo", response=_Response(404)), True),
     (RepositoryNotFoundError("invalid credentials", response=_Response(401)), False),
     (ConnectionError("reset"), False), (OSError("disk"), False)],
)  # fmt: skip
def test_only_not_found_means_nothing_there(error, expected):
    assert is_not_found(error) is expected
