"""The fair-timing harness (benchmarks/timing.py, issue 21 item 5): the driver's protocol logic against scripted
workers (interleaving, one warm-up per request, paired-ratio statistics, answers found among noise, a failing or
dead side reported), the per-call peak-memory measurement, and a tiny real run of our worker."""

import os
import sys
import time

import pytest
import torch


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import timing  # noqa: E402
import timing_proto  # noqa: E402


FAKE = os.path.join(ROOT, "tests", "timing_fake_worker.py")
REQ = {"model": "m", "batch_files": {"batches": "b"}, "sequential_target": "BertLayer", "describe": "scripted"}


def _run(tmp_path, cells, ours=(), peer=(), pairs=3, commands=None):
    log = tmp_path / "calls.log"

    def fake(side, extra):
        return [sys.executable, FAKE, "--side", side, "--log", str(log), *extra], None

    commands = commands or {"ours": fake("ours", ours), "peer": fake("peer", peer)}
    opts = {"threads": 1, "pairs": pairs, "timeout": 120, "logs": str(tmp_path)}
    rows = timing.run_model(REQ, cells, commands, opts)
    calls = [ln.split() for ln in log.read_text().splitlines()] if log.exists() else []
    return rows, calls


def test_interleaved_pairs_one_warmup_and_paired_ratio_statistics(tmp_path):
    cells = [timing.Cell("m", "sparsegpt", "0.6"), timing.Cell("m", "sparsegpt", "0.6", load="burner")]
    rows, calls = _run(tmp_path, cells, ours=["--walls", "2,3,4,2,2,2"], peer=["--walls", "4"])
    # one untimed warm-up per side and request, then ours / peer alternately, 3 pairs per cell
    assert [(c[0], c[1]) for c in calls] == [("ours", "1"), ("peer", "1")] + [("ours", "0"), ("peer", "0")] * 6
    spans = [(float(c[2]), float(c[3])) for c in calls]
    assert all(b[0] >= a[1] for a, b in zip(spans, spans[1:]))  # one side at a time
    r = rows[0]
    assert r["status"] == "ok" and r["pairs"] == 3 and r["order"] == ["ours", "peer"] * 3
    assert r["ratios"] == [0.5, 0.75, 1.0]
    assert (r["ratio_median"], r["ratio_iqr"]) == (0.75, [0.625, 0.875])
    assert r["cpu_ratios"] == [0.75, 1.125, 1.5]
    assert r["ours"]["wall_s"] == [2.0, 3.0, 4.0]  # the warm-up's 99 s is not a timing
    assert r["ours"]["peak_rss_mib"] == [100.0, 101.0, 102.0]
    assert r["ours"]["phases_median"] == {"step_s": 1.0}
    assert r["noise_lines"] == {"ours": 0, "peer": 0}  # the workers' prints went to stderr, not the protocol
    loaded = rows[1]
    assert loaded["load"] == "burner" and loaded["ratios"] == [0.5, 0.5, 0.5]
    assert loaded["burner"]["matmuls"] > 0 and rows[0]["burner"] is None
    assert "×0.75 [0.62, 0.88]" in timing.table({"rows": rows})


def test_a_failing_side_is_reported_not_hidden(tmp_path):
    rows, _ = _run(tmp_path, [timing.Cell("m", "mp-wanda+rec", "0.5")], ours=["--walls", "2"],
                   peer=["--walls", "4", "--fail-at", "1"])  # fmt: skip
    r = rows[0]
    assert r["status"] == "failed" and "scripted failure of peer at call 1" in r["errors"]["peer"]
    assert r["pairs"] == 2 and r["ratios"] == [0.5, 0.5]  # only the pairs where both sides answered
    assert (r["ours"]["ok"], r["peer"]["ok"], r["peer"]["calls"]) == (3, 2, 3)
    assert "FAILED: peer: RuntimeError: scripted failure" in timing.table({"rows": rows})


@pytest.mark.parametrize(("peer", "why"), [(["--die-at", "0"], "exited (status 3)"), (["--fail-load"], "load: ")])
def test_a_dead_or_unloadable_worker_fails_every_row_without_hanging(tmp_path, peer, why):
    cells = [timing.Cell("m", "sparsegpt", "0.5"), timing.Cell("m", "sparsegpt", "0.7")]
    t0 = time.monotonic()
    rows, _ = _run(tmp_path, cells, peer=peer, pairs=2)
    assert time.monotonic() - t0 < 60
    assert why in rows[0]["errors"]["peer"]
    assert all(r["status"] == "failed" and r["pairs"] == 0 and "peer" in r["errors"] for r in rows)


def test_worker_finds_its_answer_among_other_lines(tmp_path):
    script = (
        "import json, sys\n"
        "req = json.loads(sys.stdin.readline())\n"
        "print('tqdm 10%|#'); print(json.dumps({'id': 99, 'ok': True})); print('[1, 2]')\n"
        "print(json.dumps({'id': req['id'], 'ok': True, 'wall_s': 1.5}), flush=True)\n"
    )
    w = timing.Worker("ours", [sys.executable, "-c", script], str(tmp_path / "w.log"))
    assert w.call({"op": "prune", "spec": {}}, timeout=60) == {"id": 1, "ok": True, "wall_s": 1.5}
    assert len(w.noise) == 3
    w.proc.wait(timeout=30)


def _allocate_200_mib() -> float:
    t = torch.ones(50 * 2**20)  # 200 MiB, written
    time.sleep(0.05)
    return float(t[0])


@pytest.mark.parametrize("reset", [True, False])
def test_peak_memory_is_per_call(monkeypatch, reset):
    if not reset:  # where /proc/self/clear_refs is refused: the sampling thread
        monkeypatch.setattr(timing_proto, "_reset_hwm", lambda: False)
    _, big = timing_proto.measure(_allocate_200_mib)
    _, small = timing_proto.measure(lambda: None)
    assert big["peak_method"] == small["peak_method"] == ("vmhwm" if reset else "sampled")
    assert big["peak_rss_mib"] - big["rss_before_mib"] >= 190
    assert small["peak_rss_mib"] - small["rss_before_mib"] < 50  # the earlier call's peak does not carry over
    assert big["wall_s"] >= 0.05 and big["cpu_s"] >= 0


def test_tiny_run_of_our_worker(tmp_path, tiny_bert):
    """Our real worker (a subprocess importing hf_mpprune) against the scripted peer, on padded batches."""
    tiny_bert.save_pretrained(tmp_path / "bert")
    batches = []
    for seq in (6, 9):
        mask = torch.ones(4, seq, dtype=torch.long)
        mask[1:, seq - 2 :] = 0  # padded rows, as tokenizer(..., padding=True) returns
        batches.append({"input_ids": torch.randint(1, 99, (4, seq)) * mask, "attention_mask": mask})
    torch.save(batches, tmp_path / "b.pt")
    commands = timing.worker_commands(str(tmp_path / "no-peer-venv"))
    commands["peer"] = ([sys.executable, FAKE, "--side", "peer", "--log", str(tmp_path / "calls.log")], None)
    req = {**REQ, "model": str(tmp_path / "bert"), "batch_files": {"batches": str(tmp_path / "b.pt")}}
    opts = {"threads": 1, "pairs": 1, "timeout": 300, "logs": str(tmp_path)}
    [row] = timing.run_model(req, [timing.Cell("tiny", "sparsegpt", "0.5")], commands, opts)
    assert row["status"] == "ok", row["errors"]
    ours = row["ours"]
    assert abs(ours["achieved"][0] - 0.5) < 1e-3  # the encoder Linears (pooler ignored) at exactly 50 %
    assert ours["wall_s"][0] > 0 and ours["cpu_s"][0] > 0 and ours["peak_method"] == ["vmhwm"]
    assert {"setup_s", "spectra_s"} <= set(ours["phases_median"])
    assert row["workers"]["ours"]["ok"] and row["workers"]["ours"]["threads"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bert", "vit"])
def test_both_real_workers_on_a_tiny_model(tmp_path, kind, tiny_bert, tiny_vit, minilm_path):
    """Ours and llm-compressor's SparseGPT in its own venv (`benchmarks/peer_venv.sh`) on the same tiny model."""
    venv = os.environ.get("PEER_VENV", "/work/peer-venv")
    if not os.path.exists(os.path.join(venv, "bin", "python")):
        pytest.skip(f"no peer venv at {venv}: bash benchmarks/peer_venv.sh")
    from transformers import AutoTokenizer, ViTImageProcessor, ViTModel

    model_dir = tmp_path / kind
    if kind == "bert":
        tiny_bert.save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(minilm_path).save_pretrained(model_dir)  # the peer wants a processor
        batches = [{"input_ids": torch.randint(1, 99, (4, s)), "attention_mask": torch.ones(4, s, dtype=torch.long)}
                   for s in (6, 9)]  # fmt: skip
    else:
        ViTModel(tiny_vit.config, add_pooling_layer=False).save_pretrained(model_dir)
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)
        batches = [{"pixel_values": torch.randn(4, 3, 32, 32)} for _ in range(2)]
    torch.save(batches, tmp_path / "b.pt")
    import timing_data

    torch.save(timing_data.join(batches, {}), tmp_path / "j.pt")
    req = {"model": str(model_dir), "batch_files": {"batches": str(tmp_path / "b.pt"), "joined": str(tmp_path / "j.pt")},
           "sequential_target": "BertLayer" if kind == "bert" else "ViTLayer", "describe": "tiny"}  # fmt: skip
    cells = [timing.Cell(kind, "sparsegpt", "0.5"), timing.Cell(kind, "sparsegpt", "0.5", feed="joined")]
    opts = {"threads": 1, "pairs": 1, "timeout": 900, "logs": str(tmp_path)}
    rows = timing.run_model(req, cells, timing.worker_commands(venv), opts)
    for row in rows:
        assert row["status"] == "ok", row["errors"]
        assert abs(row["peer"]["achieved"][0] - 0.5) < 0.02 and abs(row["ours"]["achieved"][0] - 0.5) < 1e-3
        assert {"tracing_s", "forwards_s", "compression_s", "other_s"} <= set(row["peer"]["phases_median"])
        assert row["workers"]["peer"]["llmcompressor"] == "0.14.0.1"


def test_plan_rows_follow_the_protocol():
    from timing import OURS, plan

    cells = plan(["minilm", "vit-b"], ["joined", "load", "frontier"])
    assert all(c.name in OURS for c in cells)
    minilm = [(c.name, c.target, c.feed, c.load) for c in cells if c.model == "minilm"]
    assert ("mp-wanda+alps", "0.7", "batches", "quiet") in minilm and (
        "cast+alps",
        "2:4",
        "batches",
        "quiet",
    ) in minilm
    assert ("sparsegpt", "0.6", "joined", "quiet") in minilm and ("mp-wanda+rec", "0.6", "batches", "burner") in minilm
    assert [(c.name, c.target) for c in cells if c.model == "vit-b"] == [
        ("mp-wanda+rec", "0.5"), ("cast+rec", "2:4"), ("mp-wanda+alps", "0.6"), ("mp-wanda+alps+bt", "0.6"),
        ("cast+alps", "2:4"),
    ]  # fmt: skip
    assert ("mp-wanda+alps+bt", "0.6", "batches", "quiet") in minilm
    assert ("mp-wanda+alps+bt+aug31e3cos", "0.6", "batches", "quiet") in minilm
    assert not any("alps" in c.name for c in plan(["minilm", "vit-b"], ["joined"]))


def test_llama_shapes_follow_the_vit_rows_and_warm_ups_can_use_the_first_batch():
    from timing import Cell, plan, run_cell

    assert [(c.name, c.target) for c in plan(["llama-160m"], [])] == [("mp-wanda+rec", "0.5"), ("cast+rec", "2:4")]

    class Fake:  # a worker that records the requests it gets
        def __init__(self):
            self.seen = []

        def call(self, req, timeout):
            self.seen.append(req)
            return {
                "ok": True,
                "wall_s": 1.0,
                "cpu_s": 1.0,
                "peak_rss_mib": 1.0,
                "achieved": 0.5,
                "phases": {},
                "peak_method": "vmhwm",
            }

    workers = {"ours": Fake(), "peer": Fake()}
    cell = Cell("llama-60m", "mp-wanda+rec", "0.5")
    run_cell(cell, workers, cell.specs("LlamaDecoderLayer"), 2, {"ours": set(), "peer": set()}, 10.0, 1)
    for w in workers.values():
        warm, *timed = w.seen
        assert warm["warmup"] and warm["spec"]["warmup_batches"] == 1
        assert len(timed) == 2 and all("warmup_batches" not in r["spec"] and not r.get("warmup") for r in timed)


def test_light_warm_up_runs_one_iteration_and_one_block_epoch_and_times_the_full_call():
    from timing import Cell, run_cell

    class Fake:
        def __init__(self):
            self.seen = []

        def call(self, req, timeout):
            self.seen.append(req)
            return {"ok": True, "wall_s": 1.0, "cpu_s": 1.0, "peak_rss_mib": 1.0, "achieved": 0.6, "phases": {},
                    "peak_method": "vmhwm"}  # fmt: skip

    workers = {"ours": Fake(), "peer": Fake()}
    cell = Cell("vit-l", "mp-wanda+alps+bt", "0.6")
    run_cell(cell, workers, cell.specs("ViTLayer"), 1, {"ours": set(), "peer": set()}, 10.0, 1, warm_light=True)
    (warm, timed), (peer_warm, _) = workers["ours"].seen, workers["peer"].seen
    assert (warm["spec"]["refine_iters"], warm["spec"]["block_epochs"]) == (1, 1) and warm["warmup"]
    assert timed["spec"]["block_epochs"] == 10 and "refine_iters" not in timed["spec"]
    assert "refine_iters" not in peer_warm["spec"] and "block_epochs" not in peer_warm["spec"]
    assert timing.light_warmup({"method": "sparsegpt"}) == {}
