"""benchmarks/bench_digits_alloc.py without running a model: its arguments, the LR choice on validation, the
paired bootstrap against uniform, and the files it writes."""

import importlib.util
import json
import os

import numpy as np
import pytest

from benchmarks.stats import bootstrap_diff


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_bench():
    spec = importlib.util.spec_from_file_location(
        "bench_digits_alloc", os.path.join(ROOT, "benchmarks", "bench_digits_alloc.py")
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bootstrap_diff_known_truth():
    a, b = np.array([1, 1, 1, 0] * 50), np.array([1, 0, 1, 0] * 50)  # a wins 50 of 200 items, never loses
    ci = bootstrap_diff(a, b, resamples=2000, seed=0)
    assert ci["diff"] == 0.25 and ci["lo"] < 0.25 < ci["hi"] and ci["lo"] > 0.15 and ci["hi"] < 0.35
    assert (bootstrap_diff(a, a)["lo"], bootstrap_diff(a, a)["hi"]) == (0.0, 0.0)
    x, y = np.random.default_rng(0).normal(size=(2, 200))  # continuous scores: resampling seeds give other bounds
    assert bootstrap_diff(x, y, seed=1)["lo"] != bootstrap_diff(x, y, seed=2)["lo"]
    with pytest.raises(ValueError, match="paired per-item"):
        bootstrap_diff([1, 0], [1, 0, 1])


def test_arguments():
    bench = load_bench()
    a = bench.parse_args(["--seeds", "3", "4", "--sparsities", "0.7", "--allocations", "uniform", "owl"])
    assert a.seeds == [3, 4] and a.sparsities == [0.7] and a.allocations == ["uniform", "owl"]
    assert a.lrs == [1e-4] and a.pruners == ["wanda", "wanda+refit"] and a.ft_batch == 32
    for bad in (["--allocations", "owl"], ["--sparsities", "1.2"], ["--allocations", "lamp"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)
    cfg = bench.config("owl", bench.PRUNERS["wanda+refit"], 0.6, 2)
    assert (cfg.method, cfg.allocation, cfg.reconstruct, cfg.sparsity, cfg.seed) == ("wanda", "owl", True, 0.6, 2)
    assert bench.config("mp-wanda-global", bench.PRUNERS["wanda"], 0.5, 0).method == "mp-wanda"
    alps = bench.config("mp-wanda-global", bench.PRUNERS["wanda+alps"], 0.7, 1)
    assert (alps.method, alps.refine, alps.sparsity) == ("mp-wanda", "alps", 0.7)
    dsnot = bench.config("uniform", bench.PRUNERS["wanda+dsnot+refit"], 0.6, 0)
    assert (dsnot.method, dsnot.refine, dsnot.reconstruct) == ("wanda", "dsnot", True)
    c = bench.config("uniform", bench.PRUNERS["wanda+alps+bt+aug15cos"], 0.6, 0)  # every option reaches the config
    assert (c.refine, c.block_epochs, c.block_augment, c.block_schedule) == ("alps", 5, 15, "cosine")
    e = bench.config("uniform", bench.PRUNERS["wanda+alps+bt+aug31e3cos"], 0.6, 0)
    assert (e.refine, e.block_epochs, e.block_augment, e.block_schedule) == ("alps", 3, 31, "cosine")


def fake_row(seed, alloc, pre, ft_val, ft_test):
    return {
        "seed": seed, "sparsity": 0.6, "allocation": alloc, "pruner": "wanda", "achieved": 0.6,
        "layer_sparsity_range": [0.5, 0.7], "statistic": {},
        "pre": {"val": 0.9, "test": pre}, "ft": {lr: {"val": v, "test": t} for lr, v, t in zip(("0.0001", "0.001"), ft_val, ft_test)},
    }  # fmt: skip


def test_summary_and_files(tmp_path):
    bench = load_bench()
    ones, zeros = [1] * 10, [0] * 10
    rows = [
        fake_row(0, "uniform", ones[:5] + zeros[:5], (0.8, 0.9), (zeros, ones)),
        fake_row(1, "uniform", ones[:5] + zeros[:5], (0.8, 0.9), (zeros, ones)),
        fake_row(0, "owl", ones, (0.95, 0.9), (ones[:8] + zeros[:2], zeros)),
        fake_row(1, "owl", ones, (0.95, 0.9), (ones[:8] + zeros[:2], zeros)),
    ]
    out, md = tmp_path / "r.json", tmp_path / "r.md"
    summary = bench.write_results(rows, {"cmd": "x"}, str(out), str(md), boot=200)
    owl = next(x for x in summary if x["allocation"] == "owl")
    uni = next(x for x in summary if x["allocation"] == "uniform")
    assert uni["lr"] == 1e-3 and owl["lr"] == 1e-4  # each arm's LR chosen on its mean val
    assert owl["pre"]["mean"] == 100 and owl["pre"]["diff"] == 50  # against uniform's 50 %
    assert owl["ft"]["mean"] == 80 and owl["ft"]["diff"] == pytest.approx(-20)  # uniform at its own LR: 100 %
    assert owl["ft"]["lo"] <= -20 <= owl["ft"]["hi"] and owl["seeds"] == [0, 1]
    saved = json.loads(out.read_text())
    assert saved["meta"] == {"cmd": "x"} and len(saved["rows"]) == 4 and saved["summary"] == summary
    text = md.read_text()
    assert "| wanda | 0.60 | 50.00 ± 0.00 | 100.00 ± 0.00 (+50.00 [" in text and "after 1 KD epoch" in text
    merged = bench.main(["--merge", str(out), "--out", str(tmp_path / "m.json"), "--boot", "200"])
    assert merged == 0 and json.loads((tmp_path / "m.json").read_text())["summary"] == summary


def test_new_options_against_the_refit_pipeline(tmp_path):
    bench = load_bench()
    ones, zeros = [1] * 10, [0] * 10
    ref = [{**fake_row(s, "uniform", ones[:6] + zeros[:4], (0.9,), (ones[:7] + zeros[:3],)), "pruner": "wanda+refit"}
           for s in (0, 1)]  # fmt: skip
    new = [{**fake_row(s, "uniform", ones[:8] + zeros[:2], (0.9,), (ones[:9] + zeros[:1],)), "pruner": "wanda+alps"}
           for s in (0, 1)]  # fmt: skip
    summary = bench.write_results(ref + new, {}, str(tmp_path / "r.json"), str(tmp_path / "r.md"), boot=200)
    alps = next(x for x in summary if x["pruner"] == "wanda+alps")
    assert alps["vs_ref"]["pre"]["diff"] == pytest.approx(20) and alps["vs_ref"]["ft"]["diff"] == pytest.approx(20)
    assert alps["vs_ref"]["ft"]["lo"] <= 20 <= alps["vs_ref"]["ft"]["hi"]
    assert "vs_ref" not in next(x for x in summary if x["pruner"] == "wanda+refit")
    assert "| wanda+alps | 0.60 | uniform | +20.00 [" in (tmp_path / "r.md").read_text()


def load_kn():
    spec = importlib.util.spec_from_file_location(
        "bench_digits_kn", os.path.join(ROOT, "benchmarks", "bench_digits_kn.py")
    )
    kn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kn)
    return kn


def test_every_digits_kn_cell_builds_its_config():
    """benchmarks/bench_digits_kn.py's cells: each (method, options) is a valid config at 2:4 (an unknown or
    inapplicable option would be refused), and the (c) / (e) cells carry the block step's three settings."""
    from hf_mpprune import PruningConfig

    kn = load_kn()
    cfgs = {k: PruningConfig.from_dict({"method": m, "pattern": "2:4", **o}) for k, (m, o) in kn.CELLS.items()}
    c = cfgs["cast+alps+bt+aug15cos"]
    assert (c.method, c.refine, c.block_epochs, c.block_augment, c.block_schedule) == ("cast", "alps", 5, 15, "cosine")
    e = cfgs["cast+alps+bt+aug31e3cos"]
    assert (e.method, e.refine, e.block_epochs, e.block_augment, e.block_schedule) == ("cast", "alps", 3, 31, "cosine")


def kn_row(seed, cell, items):
    return {"seed": seed, "pattern": "2:4", "cell": cell, "kd": {"0.0001": [0.9, 0.9]}, "kd_items": {"0.0001": items}}


def test_digits_kn_merge_keeps_agreeing_duplicates_and_refuses_conflicts(tmp_path):
    """`bench_digits_kn.load_rows` reads both file layouts, keeps one copy of a row present in two files (so a pooled
    bootstrap does not count a seed twice) and refuses two different rows for the same (seed, pattern, cell)."""
    kn = load_kn()
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    a.write_text(json.dumps({"rows": [kn_row(0, "cast+rec", [1, 0]), kn_row(0, "cast+alps", [1, 1])]}))
    b.write_text(json.dumps({"merged_from": [], "runs": [{"rows": [kn_row(0, "cast+rec", [1, 0])]},
                                                         {"rows": [kn_row(1, "cast+rec", [0, 0])]}]}))  # fmt: skip
    rows = kn.load_rows([str(a), str(b)])
    assert sorted((r["seed"], r["cell"]) for r in rows) == [(0, "cast+alps"), (0, "cast+rec"), (1, "cast+rec")]
    c.write_text(json.dumps({"rows": [kn_row(0, "cast+rec", [0, 0])]}))
    with pytest.raises(ValueError, match="seed 0 2:4 cast\\+rec differs"):
        kn.load_rows([str(a), str(c)])
