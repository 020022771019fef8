import logging

import pytest
import torch
from transformers import ViTConfig, ViTForImageClassification

from hf_mpprune import ConfigError, PatternError, UnsupportedHardwareError, legality_audit, to_semi_structured
from hf_mpprune.deploy.semi_structured import choose_backend, shape_reason
from tests.kn_helpers import block_linear_names, two_four_masks
from tests.tiny_models import vit_inputs


def _pruned(model, dtype=torch.bfloat16):
    masks = two_four_masks(model)
    masks.apply_(model)
    return model.to(dtype), masks


def test_refuses_fp32(tiny_vit):
    model, _ = _pruned(tiny_vit, torch.float32)
    with pytest.raises(ConfigError, match="float16 or bfloat16.*1:2"):
        to_semi_structured(model, dtype=torch.float32)
    with pytest.raises(ConfigError, match=r"not in torch.bfloat16.*cast=True"):
        to_semi_structured(model, dtype=torch.bfloat16)


def test_refuses_unaudited_dense_model(tiny_vit):
    with pytest.raises(PatternError, match="unaudited"):
        to_semi_structured(tiny_vit.to(torch.bfloat16))


def test_refuses_non_two_four_layer_by_name(tiny_vit):
    model, masks = _pruned(tiny_vit)
    bad = "vit.layers.1.mlp.fc1"
    model.get_submodule(bad).weight.data[3, :4] = 1.0  # one group with 4 nonzeros
    with pytest.raises(PatternError, match=r"vit\.layers\.1\.mlp\.fc1.*1/\d+ groups"):
        to_semi_structured(model)
    with pytest.raises(PatternError, match="vit.layers.1.mlp.fc1"):
        to_semi_structured(model, masks=masks)


def test_negative_zeros_are_counted_and_legal(tiny_vit):
    model, masks = _pruned(tiny_vit)
    name = block_linear_names(model)[0]
    w = model.get_submodule(name).weight.data
    w[~masks[name]] = -0.0
    row = legality_audit(model)[name]
    assert row.legal and row.negative_zeros == int((~masks[name]).sum())
    report = to_semi_structured(model, strict=False)  # CPU: audited, then a logged no-op
    assert report.negative_zeros == row.negative_zeros


def test_cpu_refusal_is_clear_and_logged(tiny_vit, caplog):
    model, _ = _pruned(tiny_vit)
    with caplog.at_level(logging.ERROR, logger="hf_mpprune.deploy.semi_structured"):
        with pytest.raises(UnsupportedHardwareError, match="CUDA GPU.*no speedup.*strict=False"):
            to_semi_structured(model)
    assert "no 2:4 kernel" in caplog.text


def test_cpu_non_strict_is_a_noop(tiny_vit, caplog):
    model, _ = _pruned(tiny_vit)
    x = vit_inputs(batch=2)
    with torch.no_grad():
        ref = model(pixel_values=x["pixel_values"].bfloat16()).logits
    with caplog.at_level(logging.WARNING, logger="hf_mpprune.deploy.semi_structured"):
        report = to_semi_structured(model, strict=False)
    assert "no-op" in caplog.text
    assert report.backend == "none" and report.converted == []
    assert "classifier" in report.skipped and report.skipped["classifier"].startswith("dense")
    assert all(type(p) is torch.nn.Parameter for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x["pixel_values"].bfloat16()).logits, ref)


def test_masks_must_be_applied(tiny_vit):
    masks = two_four_masks(tiny_vit)
    with pytest.raises(PatternError):
        to_semi_structured(tiny_vit.to(torch.bfloat16), masks=masks)


def test_backend_choice_and_shape_rules():
    assert choose_backend((9, 0)) == "cusparselt"
    assert choose_backend((8, 0)) == "benchmark"
    assert choose_backend((8, 6), cusparselt=False) == "cutlass"
    assert choose_backend((8, 0), "cutlass") == "cutlass"
    with pytest.raises(UnsupportedHardwareError, match="only on sm8x"):
        choose_backend((9, 0), "cutlass")
    with pytest.raises(UnsupportedHardwareError, match="sm80"):
        choose_backend((7, 5))
    with pytest.raises(UnsupportedHardwareError, match="cuSPARSELt"):
        choose_backend((9, 0), cusparselt=False)
    with pytest.raises(ConfigError):
        choose_backend((9, 0), "tensorrt")
    for backend in ("cutlass", "cusparselt"):
        assert shape_reason(768, 768, backend) is None and shape_reason(3072, 768, backend) is None
        assert "1000x768" in shape_reason(1000, 768, backend)  # the ImageNet head never fits
    assert shape_reason(64, 48, "cusparselt") is None and shape_reason(64, 48, "cutlass") is not None


def test_legality_audit_counts_tail_and_bad_groups():
    w = torch.zeros(2, 10)
    w[0, :4] = 1.0  # bad group
    w[1, 8:] = 1.0  # tail columns only
    audit = legality_audit({"w": w}, "2:4")
    row = audit["w"]
    assert (row.groups, row.bad_groups, row.tail_columns, row.zeros) == (4, 1, 2, 14)
    assert not row.legal and audit.illegal == ["w"]
    assert legality_audit({"ok": torch.zeros(2, 8)}).legal == ["ok"]


def _gpu_vit():
    torch.manual_seed(0)
    cfg = ViTConfig(
        image_size=32, patch_size=4, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, num_labels=10,
    )  # fmt: skip
    return ViTForImageClassification(cfg).eval()


@pytest.mark.gpu
@pytest.mark.parametrize("tome_r", [0, 4])
def test_gpu_converted_matches_dense_masked(tome_r):
    from hf_mpprune import apply_tome

    model, masks = _pruned(_gpu_vit())
    name = block_linear_names(model)[0]
    model.get_submodule(name).weight.data[~masks[name]] = -0.0
    model = model.cuda()
    if tome_r:
        apply_tome(model, r=tome_r)
    x = {"pixel_values": torch.randn(4, 3, 32, 32, device="cuda", dtype=torch.bfloat16)}
    report = to_semi_structured(model, example_inputs=x)
    assert report.backend in ("cusparselt", "cutlass") and len(report.converted) == 12
    assert report.negative_zeros > 0 and "classifier" in report.skipped
    assert not torch.signbit(model.get_submodule(name).weight.to_dense()[~masks[name].cuda()]).any()
    with torch.no_grad():
        ref_scale = model(**x).logits.float().abs().max().item()
    assert report.max_logit_diff <= 0.05 * max(1.0, ref_scale)
    with pytest.raises(ConfigError, match="must not be saved"):
        model.save_pretrained("/nonexistent")


def test_negative_zeros_are_written_as_positive_zeros(tiny_vit):
    """The conversion step canonicalises −0.0 (checked on CPU with an identity stand-in for the GPU kernel)."""
    from hf_mpprune.deploy.semi_structured import ConversionReport, _convert

    model, masks = _pruned(tiny_vit)
    name = block_linear_names(model)[0]
    lin = model.get_submodule(name)
    lin.weight.data[~masks[name]] = -0.0
    report = ConversionReport(backend="cusparselt", device="cpu", dtype="bf16")
    _convert({name: lin}, "cusparselt", report, torch.bfloat16, lambda w, backend: w)
    assert report.converted == [name]
    assert not torch.signbit(lin.weight[~masks[name]]).any() and bool((lin.weight[~masks[name]] == 0).all())


def test_kernel_search_runs_once_per_weight_shape(tiny_vit, monkeypatch):
    """cuSPARSELt's kernel search: one search per distinct weight shape, its id set on every weight of that shape
    and written into the report (identity stand-in for the packing, a counting stand-in for the search)."""
    from hf_mpprune.deploy import semi_structured as ss

    model, masks = _pruned(tiny_vit)
    targets = {n: model.get_submodule(n) for n in block_linear_names(model)}
    calls = []
    monkeypatch.setattr(ss, "search_alg", lambda packed, rows: calls.append((tuple(packed.shape), rows)) or len(calls))
    report = ss.ConversionReport(backend="cusparselt", device="cpu", dtype="bf16")
    packed = []  # what the packing returned (a real semi-structured weight keeps the id through nn.Parameter)
    ss._convert(targets, "cusparselt", report, torch.bfloat16, lambda w, b: packed.append(w) or w, rows=512)
    shapes = {tuple(m.weight.shape) for m in targets.values()}
    assert len(calls) == len(shapes) >= 2 and {r for _, r in calls} == {512} and len(packed) == len(targets)
    ids = {s: i + 1 for i, (s, _) in enumerate(calls)}
    assert all(p.alg_id_cusparselt == ids[tuple(p.shape)] for p in packed)
    assert "searched at 512 rows" in report.decisions["cusparselt_alg_id"]
    calls.clear()
    ss._convert(targets, "cutlass", ss.ConversionReport("cutlass", "cpu", "bf16"), torch.bfloat16, lambda w, b: w, 512)
    assert calls == []  # CUTLASS has no such search


def test_negative_search_rows_is_refused(tiny_vit):
    model, masks = _pruned(tiny_vit)
    with pytest.raises(ConfigError, match="search_rows"):
        to_semi_structured(model.to(torch.bfloat16), masks=masks, dry_run=True, search_rows=-1)


@pytest.mark.gpu
def test_gpu_cusparselt_linear_output_is_contiguous():
    """Unfused, cuSPARSELt's Linear output is a transposed view, which sent ViT attention to its slow math path on
    an H200 (benchmarks/RESULTS.md); the conversion fuses the transpose and sets the searched kernel."""
    model, masks = _pruned(_gpu_vit())
    model = model.cuda().to(torch.bfloat16)
    report = to_semi_structured(model, masks=masks, backend="cusparselt", search_rows=1024)
    name = block_linear_names(model)[0]
    lin = model.get_submodule(name)
    x = torch.randn(3, 17, lin.in_features, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        y = lin(x)
        ref = torch.nn.functional.linear(x, lin.weight.to_dense(), lin.bias)
    assert y.is_contiguous() and y.shape == (3, 17, lin.out_features)
    assert (y.float() - ref.float()).abs().max() <= 0.05 * max(1.0, ref.float().abs().max().item())
    assert "cusparselt_alg_id" in report.decisions and isinstance(lin.weight.alg_id_cusparselt, int)


@pytest.mark.gpu
def test_gpu_graph_replay_matches_eager_and_follows_new_inputs():
    """`GraphReplay` of a converted model: one capture per input shape, each replay on the batch just given."""
    from hf_mpprune import GraphReplay

    model, masks = _pruned(_gpu_vit())
    model = model.cuda().to(torch.bfloat16)
    to_semi_structured(model, masks=masks)
    fast = GraphReplay(model)
    with torch.inference_mode():
        for seed in (0, 1, 2):
            g = torch.Generator().manual_seed(seed)
            x = torch.randn(4, 3, 32, 32, generator=g).to("cuda", torch.bfloat16)
            ref = model(pixel_values=x).logits.float()
            got = fast(pixel_values=x).logits.float()
            assert (got - ref).abs().max() <= 1e-2 * max(1.0, ref.abs().max().item())
    assert len(fast.graphs) == 1


def test_graph_replay_refuses_a_model_off_the_gpu(tiny_vit):
    from hf_mpprune import GraphReplay

    with pytest.raises(ConfigError, match="CUDA"):
        GraphReplay(tiny_vit)
