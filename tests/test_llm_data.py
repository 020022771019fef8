"""Issue 23: data and evaluation the LLM way: perplexity with stride windows (checked against transformers' own
loss on the guide's loop), fixed-length calibration windows from a text dataset, perplexity in recipes, the model
card's model-index and `hf-mpprune eval --metric perplexity`."""

import json

import numpy as np
import pytest
import torch

from hf_mpprune import ConfigError
from hf_mpprune.builtins.minilm import minilm_text
from hf_mpprune.cli.main import main
from hf_mpprune.core.ledger import Ledger
from hf_mpprune.data.columns import Columns
from hf_mpprune.data.lm import calibration_windows, prepare_lm, token_stream
from hf_mpprune.metrics.perplexity import perplexity, stride_windows, window_nll
from tests import tiny_models as tm


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("n", "length", "stride"), [(37, 8, 8), (37, 8, 3), (5, 8, 4), (64, 16, 16)])
def test_stride_windows_score_each_token_once_with_context(n, length, stride):
    """Windows of one length; no token scored twice; with stride < length every token after the first is scored
    (with context); with stride == length (non-overlapping, the papers' convention) only a window's first token
    goes unscored."""
    rows = stride_windows(list(range(100, 100 + n)), length, stride)
    scored, starts = [], []
    for r in rows:
        assert len(r["input_ids"]) == min(n, length)
        starts.append(r["input_ids"][0] - 100)
        scored += [starts[-1] + j for j, t in enumerate(r["labels"]) if t != -100 and j > 0]  # j = 0: no context
    assert len(scored) == len(set(scored)) and max(scored) == n - 1
    missed = set(range(n)) - set(scored)
    assert missed == {0} if stride < length else missed <= set(starts)
    with pytest.raises(ConfigError, match="stride"):
        stride_windows(list(range(10)), 8, 9)


def test_perplexity_equals_the_transformers_guide_loop():
    """Stream of N = L + k·S tokens (the guide's last window is then ours): the same perplexity as the guide's loop
    with the model's own loss, every window's NLL weighted by its number of shifted targets."""
    model = tm.tiny_llama()
    torch.manual_seed(3)
    ids = torch.randint(3, 99, (16 + 5 * 6,)).tolist()
    length, stride = 16, 6
    nll, count = window_nll(model, stride_windows(ids, length, stride), batch_size=3)
    total, tokens, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + length, len(ids))
        x = torch.tensor([ids[begin:end]])
        target = x.clone()
        target[:, : -(end - prev_end)] = -100
        with torch.no_grad():
            loss = model(input_ids=x, labels=target).loss
        k = int((target[:, 1:] != -100).sum())
        total, tokens, prev_end = total + float(loss) * k, tokens + k, end
        if end == len(ids):
            break
    assert int(count.sum()) == tokens == len(ids) - 1
    assert perplexity(nll, count) == pytest.approx(float(np.exp(total / tokens)), rel=1e-5)


def test_calibration_windows_are_fixed_length_from_seeded_documents():
    tok = tm.tiny_lm_tokenizer()
    ds = minilm_text()["train"]
    order = np.random.default_rng(0).permutation(len(ds))
    rows, used = calibration_windows(ds, order, tok, "text", length=32, count=10)
    assert len(rows) == 10 and all(len(r["input_ids"]) == 32 and sum(r["attention_mask"]) == 32 for r in rows)
    stream = token_stream(ds.select(used.tolist())["text"], tok)
    assert [t for r in rows for t in r["input_ids"]] == stream[:320]  # consecutive windows of the seeded stream
    assert np.array_equal(used, order[: used.size]) and used.size < len(ds)
    assert stream == tok("\n\n".join(ds.select(used.tolist())["text"]))["input_ids"]  # the guide's join
    prepared, _ = prepare_lm(ds, order, tok, Columns(text="text"), "evaluation", max_length=32, stride=16)
    assert prepared.has_labels and len({len(r) for r in prepared.dataset["input_ids"]}) == 1
    with pytest.raises(ConfigError, match="not one window"):
        calibration_windows(ds, order[:1], tok, "text", length=64, count=4)


@pytest.fixture
def lm_dir(tmp_path):
    tok = tm.tiny_lm_tokenizer()
    model = tm.tiny_llama(vocab_size=len(tok))
    path = tmp_path / "lm"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_recipe_prunes_a_causal_lm_on_windows_and_reports_perplexity(lm_dir, tmp_path, capsys):
    """A recipe on a text dataset: calibration = 16 windows of 32 tokens, perplexity (stride 16) before and
    after pruning and after KD, recorded with its windowing in the ledger and the model card's model-index; the
    recorded calibration rows are the documents the windows came from; `hf-mpprune eval --metric perplexity`
    reproduces the recorded number."""
    from huggingface_hub import ModelCard

    from hf_mpprune.recipes.runner import execute
    from hf_mpprune.recipes.schema import recipe_from_dict

    recipe = recipe_from_dict({
        "model": {"id": lm_dir}, "pruning": {"method": "sparsegpt", "sparsity": 0.5},
        "calibration": {"dataset": "builtin:minilm-text", "split": "train", "size": 16, "max_length": 32},
        "evaluation": {"dataset": "builtin:minilm-text", "split": "validation", "max_length": 32, "stride": 16},
        "distill": {"max_steps": 2, "per_device_train_batch_size": 4, "label_smoothing": 0.0},
    })  # fmt: skip
    out = str(tmp_path / "out")
    pruner, result = execute(recipe, output_dir=out)
    step = pruner.ledger.steps[0]
    assert step["calibration"]["num_samples"] == 16 and step["time_split"]["path"] == "blocks"
    ppl = {m["stage"]: m for m in pruner.ledger.metrics if m["name"] == "perplexity"}
    assert set(ppl) == {"base", "pruned", "distilled"} and result["metrics"]["perplexity"] == ppl["distilled"]["value"]
    assert ppl["pruned"]["task"] == "text-generation"
    assert ppl["pruned"]["dataset_args"] == {"max_length": 32, "stride": 16}
    cal = Ledger.from_json(f"{out}/mpprune_ledger.json").data["splits"]["calibration"]
    assert 0 < cal["count"] < 512  # the documents the 16 windows came from, not the whole split
    card = ModelCard.load(f"{out}/README.md")
    assert card.data.pipeline_tag == "text-generation"
    results = {r.metric_name: r for r in card.data.eval_results}
    assert results["perplexity (distilled)"].metric_value == ppl["distilled"]["value"]
    assert results["perplexity (pruned)"].dataset_args == {"max_length": 32, "stride": 16}
    argv = ["eval", out, "--dataset", "builtin:minilm-text", "--metric", "perplexity", "--max-length", "32",
            "--stride", "16"]  # fmt: skip
    capsys.readouterr()
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["perplexity"] == ppl["distilled"]["value"]


def test_eval_cli_perplexity_and_refusals(lm_dir, tmp_path, capsys, tiny_bert):
    argv = ["eval", lm_dir, "--dataset", "builtin:minilm-text", "--max-length", "32"]
    assert main([*argv, "--metric", "perplexity", "--samples", "64"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["task"] == "text-generation" and record["count"] == 64
    # the same number straight from the metric on the same rows
    from hf_mpprune.data.spec import DatasetSpec
    from hf_mpprune.data.splits import DataPlan

    plan = DataPlan()
    plan.add_evaluation(DatasetSpec("builtin:minilm-text", split="validation", size=64))
    texts = plan["evaluation"].rows()["text"]
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok = AutoModelForCausalLM.from_pretrained(lm_dir), AutoTokenizer.from_pretrained(lm_dir)
    direct = perplexity(*window_nll(model, stride_windows(token_stream(texts, tok), 32)))
    assert record["metrics"]["perplexity"] == pytest.approx(direct, rel=1e-9)
    assert main([*argv, "--metric", "accuracy"]) == 2
    assert "evaluated as text-generation" in capsys.readouterr().err
    assert main([*argv, "--max-length", "4096"]) == 2
    assert "at most the model's context (64)" in capsys.readouterr().err
    tiny_bert.save_pretrained(tmp_path / "bert")
    assert main(["eval", str(tmp_path / "bert"), "--dataset", "builtin:minilm-text", "--metric", "perplexity"]) == 2
    assert "needs a decoder language model" in capsys.readouterr().err


def test_stride_outside_lm_evaluation_is_refused(lm_dir, tmp_path):
    from hf_mpprune.recipes.runner import execute
    from hf_mpprune.recipes.schema import recipe_from_dict

    recipe = recipe_from_dict({
        "model": {"id": lm_dir}, "pruning": {"method": "wanda", "sparsity": 0.5},
        "calibration": {"dataset": "builtin:minilm-text", "size": 4, "max_length": 16, "stride": 8},
    })  # fmt: skip
    with pytest.raises(ConfigError, match="stride applies to the perplexity"):
        execute(recipe, output_dir=str(tmp_path / "never"))
    assert not (tmp_path / "never").exists()


def test_recipe_and_eval_cli_on_a_users_own_text_files(lm_dir, tmp_path, capsys):
    """The same path on the user's data: jsonl files of real prose (the shipped docstring corpus) with a
    non-default text column, calibration from one file and perplexity on another; the eval CLI reproduces it."""
    import gzip

    from hf_mpprune.recipes.runner import execute
    from hf_mpprune.recipes.schema import recipe_from_dict

    with gzip.open("benchmarks/corpus/docstrings.jsonl.gz", "rt", encoding="utf-8") as f:
        docs = [json.loads(next(f)) for _ in range(40)]
    files = {}
    for split, part in (("calib", docs[:30]), ("heldout", docs[30:])):  # held out by document
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps({"body": " ".join(r), "n": i}) + "\n" for i, d in
                                        enumerate(part) for r in d["runs"]))  # fmt: skip
    recipe = recipe_from_dict({
        "model": {"id": lm_dir}, "pruning": {"method": "wanda", "sparsity": 0.5},
        "calibration": {"dataset": str(files["calib"]), "text_column": "body", "size": 8, "max_length": 32},
        "evaluation": {"dataset": str(files["heldout"]), "split": "train", "text_column": "body", "max_length": 32},
    })  # fmt: skip
    out = str(tmp_path / "out")
    pruner, result = execute(recipe, output_dir=out)
    assert pruner.ledger.steps[0]["calibration"]["num_samples"] == 8
    assert abs(pruner.masks.sparsity() - 0.5) < 1e-9
    capsys.readouterr()
    argv = ["eval", out, "--dataset", str(files["heldout"]), "--split", "train", "--text-column", "body",
            "--metric", "perplexity",
            "--max-length", "32"]  # fmt: skip
    assert main(argv) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["perplexity"] == result["metrics"]["perplexity"]
