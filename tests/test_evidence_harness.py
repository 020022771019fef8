"""The natural-text evidence harness (benchmarks/evidence.py, benchmarks/stats.py, benchmarks/build_corpus.py): the
shipped corpus is split by document with no sentence in two splits, the prose rules, the retrieval metric on a case
with known ranks, the paired bootstrap, and one cell end to end on a handful of corpus sentences (real MiniLM)."""

import json

import numpy as np
import pytest

from benchmarks import build_corpus as bc
from benchmarks import evidence as ev
from benchmarks import stats


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def docs():
    return ev.load_corpus()


def test_corpus_splits_by_document_and_no_sentence_in_two_splits(docs):
    names = [(d["package"], d["module"]) for d in docs]
    assert len(names) == len(set(names))  # one record per source document
    assert all(d["split"] == bc.split_of(d["package"], d["module"]) for d in docs)  # the fixed hash decides
    by_split = {s: {x for d in docs if d["split"] == s for r in d["runs"] for x in r} for s in bc.SPLITS}
    keys = {s: {bc.dedup_key(x) for x in by_split[s]} for s in bc.SPLITS}
    for a, b in (("evaluation", "calibration"), ("selection", "calibration"), ("evaluation", "selection")):
        assert not by_split[a] & by_split[b] and not keys[a] & keys[b]
    assert all(bc.usable(x) for s in by_split.values() for x in s)
    assert bc.counts(docs) == json.loads((bc.OUT_DIR / "splits.json").read_text())  # exported sizes are these
    assert len(ev.retrieval_pairs(docs, "evaluation")) >= 1500
    assert len(ev.calibration_samples(docs)) >= 3 * 128
    assert {d["license"] for d in docs} <= {"BSD-3-Clause", "Apache-2.0"}


def test_prose_rules_and_sentence_split():
    doc = bc.inspect.cleandoc("""Compute the thing, e.g. the mean of the array. It is fast for most inputs.

        Parameters
        ----------
        x : array
            The input array, which is long enough to be a sentence.

        Notes
        -----
        The result is cached by default. Call `clear` with ``force`` when the inputs changed.

        >>> thing(x)
        1.0

        ```python
        This line is inside a fence and is code.
        ```

        Args:
            y (int): Another parameter that is described in a sentence.
        """)
    paras = [bc.clean_markup(p) for p in bc.prose_paragraphs(doc)]
    assert paras == [
        "Compute the thing, e.g. the mean of the array. It is fast for most inputs.",
        "The result is cached by default. Call clear with force when the inputs changed.",
    ]
    assert bc.split_sentences(paras[0]) == [
        "Compute the thing, e.g. the mean of the array.",
        "It is fast for most inputs.",
    ]
    assert bc.usable("It is fast for most inputs of the array.") and not bc.usable("Too short to use.")
    assert not bc.usable("Set the value with x = 3 in the call to the function.")  # code characters
    assert bc.dedup_key("The bare Bert Model outputs the states.") == bc.dedup_key(
        "The bare RoBERTa Model outputs the states."
    )


def test_retrieval_ranks_on_known_case():
    q = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = np.array([[1.0, 0.1], [1.0, 0.0], [1.0, 1.0]])
    # query 0: candidate 0 (cos .995) below candidate 1 (cos 1) -> rank 2; query 1: own candidate cos 0, the best of
    # the others .707 and .0995 -> rank 3; query 2: own candidate cos 1 -> rank 1
    ranks = stats.retrieval_ranks(q, c)
    assert ranks.tolist() == [2, 3, 1]
    assert stats.recall_at_1(ranks).tolist() == [0.0, 0.0, 1.0]
    np.testing.assert_allclose(stats.mean_reciprocal_rank(ranks), [1 / 2, 1 / 3, 1.0])
    assert stats.retrieval_ranks(np.eye(2), np.ones((2, 2))).tolist() == [2, 2]  # ties count against the truth


def test_paired_bootstrap():
    rng = np.random.default_rng(0)
    x = rng.normal(0.8, 0.1, 2000)
    self_ci = stats.bootstrap_diff(x, x)
    assert (self_ci["diff"], self_ci["lo"], self_ci["hi"]) == (0.0, 0.0, 0.0)
    planted = stats.bootstrap_diff(x + 0.01 + rng.normal(0, 0.02, 2000), x)
    assert 0 < planted["lo"] < 0.01 < planted["hi"] < 0.02
    null = stats.bootstrap_diff(rng.normal(0.8, 0.1, 2000), x)
    assert null["lo"] < 0 < null["hi"]
    dense = np.full(2000, 0.5)
    assert stats.bootstrap_diff(x, x - 0.05, denom=dense)["diff"] == pytest.approx(0.1)  # retention points
    assert stats.fmt_ci(self_ci) == "+0.000 [+0.000, +0.000]"
    with pytest.raises(ValueError, match="paired"):
        stats.bootstrap_diff(x, x[:-1])


def test_one_cell_end_to_end_on_a_handful_of_sentences(docs, tmp_path, minilm_path):
    """Two draws of 8 padded calibration samples, wanda and wanda + re-fit at 50 %, scored on 8 pairs."""
    small = [d for d in docs if d["split"] == "calibration"][:12] + [d for d in docs if d["split"] == "evaluation"][:8]
    tok, _ = ev.load_minilm()
    batches = ev.tokenized(tok, ev.calibration_draw(ev.calibration_samples(small), 1, 8), 4, 128)
    assert all(not bool(b["attention_mask"].all()) for b in batches)  # really padded, variable length
    assert batches[0]["input_ids"].shape[1] != batches[1]["input_ids"].shape[1]
    cells = [ev.find_cell("wanda"), ev.find_cell("wanda+rec")]
    result = ev.run(cells, [0.5], [0, 1], docs=small, samples=8, batch_size=4, max_pairs=8, log=lambda *_: None)
    rows = result["rows"]
    assert [(r["cell"], r["draw"]) for r in rows] == [("wanda", 0), ("wanda+rec", 0), ("wanda", 1), ("wanda+rec", 1)]
    for r in rows:
        assert abs(r["achieved_sparsity"] - 0.5) < 1e-3 and 0.3 < r["cosine"] <= 1.0
        assert len(r["items"]["cosine"]) == len(r["items"]["ranks"]) == result["meta"]["pairs"] == 8
        assert all(1 <= k <= 8 for k in r["items"]["ranks"])
        assert r["retention_recall1"] == pytest.approx(r["recall1"] / result["dense"]["recall1"])
    rec = rows[1]["time_split"]
    assert rec["reconstruction_s"] >= 0 and rows[1]["cosine"] > rows[0]["cosine"]  # the re-fit helps
    ev.save(result, tmp_path / "out" / "rows.json.gz")  # the folder does not exist yet (a fresh checkout)
    again = ev.load(tmp_path / "out" / "rows.json.gz")
    text = ev.tables(again, [("wanda+rec", "wanda"), ("wanda", "wanda")], resamples=200)
    assert "| wanda − wanda | +0.000 [+0.000, +0.000] |" in text and "| wanda+rec − wanda | +0." in text
    assert "Recall@1 retention" in text and "| wanda+rec | no | yes | yes |" in text
    halves = [{**again, "rows": [r for r in again["rows"] if r["draw"] == d]} for d in (1, 0)]  # one run per draw
    assert ev.tables(ev.combine(halves), [("wanda+rec", "wanda")], resamples=200) == ev.tables(
        again, [("wanda+rec", "wanda")], resamples=200
    )
    lost = [{**h, "cells": {}} for h in halves]  # files whose cell records were lost still merge (labels suffice)
    assert ev.tables(ev.combine(lost), [("wanda+rec", "wanda")], resamples=200) == ev.tables(
        again, [("wanda+rec", "wanda")], resamples=200
    )
    assert ev.find_cell("mp-wanda[beta=-0.5]").options == {"beta": -0.5}
