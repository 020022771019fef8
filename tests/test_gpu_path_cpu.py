"""The 2:4 GPU path, right by construction and checked on CPU: the shape table is torch's own (checked against
torch's validator), a real CUTLASS 2:4 layout round trip (PyTorch's pure-Python pack / unpack runs on CPU), a
converted model (CUTLASS tensors built on CPU) read through dense views and refusing casts before anything changes,
no process-wide flag touched, every skipped layer listed, the dtype of every parameter checked, the benchmark only
on shapes both backends accept, and `speed_audit`'s GPU path on a headless text model in a dry run."""

import copy
import itertools
import json
import types

import pytest
import torch
from torch import nn
from torch.sparse import SparseSemiStructuredTensor, SparseSemiStructuredTensorCUTLASS
from torch.sparse._semi_structured_conversions import sparse_semi_structured_from_dense_cutlass

from hf_mpprune import ConfigError, legality_audit, to_semi_structured
from hf_mpprune.cli.main import main
from hf_mpprune.deploy import semi_structured as ss
from hf_mpprune.deploy.semi_structured import ConversionReport, shape_reason
from hf_mpprune.deploy.speed import SpeedReport, Timing, speed_audit
from tests.kn_helpers import block_linear_names, two_four_masks


def _pruned(model, dtype=torch.bfloat16):
    blocks = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and (".layer." in n or ".layers." in n)]
    masks = two_four_masks(model, blocks)  # the 12 block Linears of the tiny ViT / BERT
    masks.apply_(model)
    return model.to(dtype), masks


def cpu_cutlass(weight: torch.Tensor, backend: str) -> torch.Tensor:
    """A real `SparseSemiStructuredTensorCUTLASS` on CPU, packed by PyTorch's own pure-Python helper."""
    packed, meta = sparse_semi_structured_from_dense_cutlass(weight)
    return SparseSemiStructuredTensorCUTLASS(
        weight.shape, packed=packed, meta=meta, packed_t=None, meta_t=None, compressed_swizzled_bitmask=None
    )


def _converted(tiny_vit):
    """The tiny ViT with its 12 block Linears converted to CUTLASS 2:4 tensors on CPU, guarded as on a GPU."""
    model, masks = _pruned(tiny_vit)
    dense = {n: model.get_submodule(n).weight.detach().clone() for n in masks.names}
    report = ConversionReport(backend="cutlass", device="cpu", dtype="bf16")
    ss._convert({n: model.get_submodule(n) for n in masks.names}, "cutlass", report, torch.bfloat16, cpu_cutlass)
    ss._guard(model, torch.bfloat16, torch.device("cpu"))
    return model, masks, dense, report


@pytest.mark.parametrize("backend", sorted(ss.SUBCLASSES))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_shape_table_agrees_with_torchs_own_validator(backend, dtype):
    cls = ss.SUBCLASSES[backend]
    for rows, cols in itertools.product([8, 16, 24, 32, 48, 64, 96, 128, 1000], [8, 16, 32, 48, 64, 96, 128, 768]):
        fake = types.SimpleNamespace(is_cuda=True, dim=lambda: 2, is_contiguous=lambda: True, dtype=dtype,
                                     shape=(rows, cols))  # fmt: skip
        try:
            cls._validate_device_dim_dtype_shape(fake)
            torch_ok = True
        except RuntimeError:
            torch_ok = False
        assert (shape_reason(rows, cols, backend, dtype) is None) == torch_ok, (backend, dtype, rows, cols)


def test_cutlass_layout_round_trip_on_cpu(tiny_vit):
    """Every 2:4 block Linear packs into CUTLASS values + metadata and unpacks bit-identically (torch's own
    `to_dense` of the subclass); `to_semi_structured(dry_run=True)` runs the same round trip on every target."""
    model, masks = _pruned(tiny_vit)
    for name in masks.names:
        w = model.get_submodule(name).weight.detach()
        t = cpu_cutlass(w, "cutlass")
        assert isinstance(t, SparseSemiStructuredTensor) and t.packed.numel() == w.numel() // 2
        assert torch.equal(t.to_dense(), w)
    report = to_semi_structured(model, masks=masks, backend="cutlass", dry_run=True)
    assert report.backend == "dry-run:cutlass" and sorted(report.converted) == sorted(masks.names)
    assert not any(isinstance(p, SparseSemiStructuredTensor) for p in model.parameters())  # weights stay dense


def test_converted_weights_are_read_through_dense_views(tiny_vit):
    model, masks, dense, report = _converted(tiny_vit)
    assert len(report.converted) == 12
    assert all(isinstance(model.get_submodule(n).weight, SparseSemiStructuredTensor) for n in masks.names)
    audit = legality_audit(model, "2:4", layers=masks.names)
    assert audit.ok and len(audit.legal) == 12
    name = masks.names[0]
    eligible, reason = ss_mac_legality(model, name)
    assert eligible and reason == ""


def ss_mac_legality(model, name):
    from hf_mpprune.deploy import macs

    return macs._legality(name, model.get_submodule(name), None, ss.TWO_FOUR)


@pytest.mark.parametrize(
    "call", ["float()", "half()", "to(torch.float32)", "to(dtype=torch.float16)", "double()", "type(torch.float32)"]
)
def test_casting_a_converted_model_is_refused_before_anything_changes(tiny_vit, call):
    model, masks, dense, _ = _converted(tiny_vit)
    before = {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="2:4 semi-structured weights"):
        eval(f"model.{call}", {"model": model, "torch": torch})
    assert {n: (p.dtype, p.data_ptr()) for n, p in model.named_parameters()} == before
    assert model.to(torch.bfloat16) is model and model.to("cpu") is model and model.bfloat16() is model  # no-ops pass
    twin = copy.deepcopy(model)  # the guard travels with a copy and acts on the copy
    assert twin.to(torch.bfloat16) is twin
    with pytest.raises(ConfigError, match="2:4 semi-structured weights"):
        twin.float()
    with pytest.raises(ConfigError, match="must not be saved"):
        model.save_pretrained("/nonexistent")


def test_no_process_wide_flag_is_touched(tiny_vit, monkeypatch):
    monkeypatch.setattr(SparseSemiStructuredTensor, "_FORCE_CUTLASS", "sentinel")
    model, masks = _pruned(tiny_vit)
    seen = []
    ss._convert({masks.names[0]: model.get_submodule(masks.names[0])}, "cusparselt", ConversionReport("", "", ""),
                torch.bfloat16, lambda w, b: seen.append(SparseSemiStructuredTensor._FORCE_CUTLASS) or w)  # fmt: skip
    to_semi_structured(model, masks=masks, dry_run=True)
    assert seen == ["sentinel"] and SparseSemiStructuredTensor._FORCE_CUTLASS == "sentinel"


def test_every_skipped_layer_is_listed_with_its_reason(tiny_vit):
    class LoggedLinear(nn.Linear):
        pass

    model, masks = _pruned(tiny_vit)
    name = masks.names[0]
    parent, child = name.rsplit(".", 1)
    old = model.get_submodule(name)
    sub = LoggedLinear(old.in_features, old.out_features, dtype=old.weight.dtype)
    sub.load_state_dict(old.state_dict())
    setattr(model.get_submodule(parent), child, sub)
    report = to_semi_structured(model, masks=masks, dry_run=True)
    assert "LoggedLinear" in report.skipped[name] and "plain nn.Linear" in report.skipped[name]
    conv = "vit.embeddings.patch_embeddings.projection"
    assert "no mask" in report.skipped[conv] and "no mask" in report.skipped["classifier"]
    unmasked = to_semi_structured(model, dry_run=True)  # targets found from the zeros: the conv is still listed
    assert "Conv2d" in unmasked.skipped[conv] and "dense" in unmasked.skipped["classifier"]
    assert set(report.converted) | set(report.skipped) >= set(block_linear_names(model)) | {conv, "classifier"}


def test_every_parameter_must_be_in_the_2_4_dtype(tiny_vit):
    model, masks = _pruned(tiny_vit)
    model.vit.layernorm.float()  # the first parameter is bf16, a later one is not
    with pytest.raises(ConfigError, match=r"vit\.layernorm\.weight \(torch\.float32\)"):
        to_semi_structured(model, masks=masks, dry_run=True)
    assert to_semi_structured(model, masks=masks, dry_run=True, cast=True).converted
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())


def test_backend_benchmark_only_on_a_shape_both_backends_accept(monkeypatch):
    big = nn.Linear(64, 48, dtype=torch.bfloat16)  # 48 rows: cuSPARSELt (16) yes, CUTLASS (32) no
    small = nn.Linear(64, 32, dtype=torch.bfloat16)  # both
    timed = []
    monkeypatch.setattr(ss, "_bench", lambda b, w: timed.append((b, tuple(w.shape))) or {"cutlass": 2.0}.get(b, 1.0))
    report = ConversionReport("", "", "")
    assert ss._pick_by_benchmark({"big": big, "small": small}, torch.bfloat16, report) == "cusparselt"
    assert timed == [("cutlass", (32, 64)), ("cusparselt", (32, 64))]
    assert ss._pick_by_benchmark({"big": big}, torch.bfloat16, report) == "cusparselt"  # nothing fits both
    assert "not benchmarked" in report.decisions["backend"]


def test_compile_failures_show_in_the_ratio_table():
    rep = SpeedReport(
        timings=[Timing("dense_bf16", 8, 2.0, 1.9, 2.1, 5), Timing("sparse_bf16", 8, 1.0, 0.9, 1.1, 5),
                 Timing("dense_bf16_compiled", 8, 1.5, 1.4, 1.6, 5)],
        errors={"sparse_bf16_compiled@8": "RuntimeError: torch.compile failed: BackendCompilerFailed"},
    )  # fmt: skip
    rows = {(r["sparse"], r["dense"]): r for r in rep.ratios()}
    assert rows[("sparse_bf16", "dense_bf16")]["speedup"] == 2.0
    failed = rows[("sparse_bf16_compiled", "dense_bf16_compiled")]
    assert failed["speedup"] is None and "BackendCompilerFailed" in failed["error"]
    assert "failed: RuntimeError: torch.compile failed" in rep.to_markdown()


def test_speed_audit_gpu_path_on_a_headless_text_model(tiny_bert):
    """BertModel has no `.logits` and takes integer input_ids: the GPU path (bf16, autocast, 2:4 checks) runs."""
    model, masks = _pruned(tiny_bert, torch.float32)
    seen = []
    emb = model.embeddings.word_embeddings
    emb.register_forward_pre_hook(lambda mod, args: seen.append(args[0].dtype))
    rep = speed_audit(model, masks, batches=(1, 2), warmup=0, reps=1, device="cpu", dry_run=True)
    assert rep.errors == {} and rep.conversion["backend"] == "dry-run:cusparselt"
    assert len(rep.conversion["converted"]) == 12 and set(seen) == {torch.long}
    assert {t.variant for t in rep.timings} == {"dense_bf16", "dense_fp32_autocast", "sparse_bf16"}
    assert rep.equivalence["max_abs_diff_sparse_vs_dense_bf16"] == 0.0  # dry run: identical dense weights
    assert rep.ratios() and all(r["speedup"] is None and "dry run" in r["note"] for r in rep.ratios())


def test_cli_bench_dry_run_on_a_text_checkpoint(tiny_bert, tmp_path, capsys):
    model, masks = _pruned(tiny_bert, torch.float32)
    model.save_pretrained(tmp_path)
    argv = ["bench", str(tmp_path), "--device", "cpu", "--dry-run", "--batches", "1", "--reps", "1", "--warmup", "0"]
    assert main([*argv, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["errors"] == {} and out["conversion"]["converted"] and out["stamps"]["dry_run"]
