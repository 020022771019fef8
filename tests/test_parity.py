"""Parity with maintained implementations: MAC counts vs torch's FlopCounterMode, 2:4 Wanda masks vs torchao's
WandaSparsifier, SparseGPT vs a compact reference of the paper's algorithm (Frantar & Alistarh 2023, Alg. 1).

The torchao test needs the [parity] extra (installed in CI); it is skipped with the reason when torchao is absent.
"""

import copy

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import BertConfig, BertModel, ViTConfig, ViTForImageClassification

from hf_mpprune import KeepPattern, MPPruner, PruningConfig, mac_report
from tests import tiny_models as tm


# ---- MACs == FlopCounterMode / 2 ---------------------------------------------------------------------------------
def _tiny(kind: str):
    torch.manual_seed(0)
    if kind == "vit":
        cfg = ViTConfig(image_size=8, patch_size=2, num_channels=1, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=10, attn_implementation="eager")  # fmt: skip
        return ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(3, 1, 8, 8)}
    cfg = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                     attn_implementation="eager")  # fmt: skip
    return BertModel(cfg).eval(), {"input_ids": torch.randint(0, 99, (3, 7))}


@pytest.mark.parametrize("kind", ["vit", "bert"])
def test_mac_counts_equal_flop_counter_mode_halved(kind):
    model, x = _tiny(kind)
    ours = mac_report(model, x).by_kind()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(**x)
    flops = {str(op): n for op, n in counter.get_flop_counts()["Global"].items()}
    linear = flops.pop("aten.addmm", 0) + flops.pop("aten.mm", 0)
    assert 2 * ours["linear"] == linear > 0
    assert 2 * ours.get("conv", 0) == flops.pop("aten.convolution", 0)
    assert (kind == "vit") == ("conv" in ours)  # the ViT patch embedding is the only convolution
    # eager attention runs QK^T and AV as batched matmuls: our 2*N^2*D per sequence matches them too
    assert 2 * ours["attn_matmul"] == flops.pop("aten.bmm") and not flops, flops


# ---- Wanda 2:4 == torchao WandaSparsifier (with its ||x||^2 observer square-rooted) -------------------------------
def _torchao_wanda_masks(model, calibration, names, sqrt: bool) -> dict[str, torch.Tensor]:
    sparsity = pytest.importorskip("torchao.sparsity", reason="torchao is not installed (pip install '.[parity]')")
    model = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="fixed to 50%"):
        sparsifier = sparsity.WandaSparsifier(semi_structured_block_size=4)
    sparsifier.prepare(model, config=[{"tensor_fqn": f"{n}.weight"} for n in names])
    with torch.no_grad():
        for batch in calibration:
            model(batch["x"])
    if sqrt:  # torchao accumulates sum_j x_j^2; Wanda's score is |W| * ||x||_2
        for n in names:
            model.get_submodule(n).activation_post_process.norm.sqrt_()
    sparsifier.step()
    return {n: model.get_submodule(n).parametrizations.weight[0].mask.bool().clone() for n in names}


@pytest.mark.filterwarnings("ignore:torch.ao.quantization is deprecated:DeprecationWarning")  # inside torchao
@pytest.mark.parametrize("method", ["wanda", "wanda-kn"])
def test_wanda_2_4_masks_equal_torchao(method):
    model = tm.MLP((32, 24, 16))
    torch.manual_seed(5)
    xs = torch.randn(40, 32) * torch.linspace(0.2, 3.0, 32)  # unequal input norms, so the sqrt matters
    calibration = [{"x": xs[:20]}, {"x": xs[20:]}]
    names = ["layers.0", "layers.1"]
    ours = MPPruner(copy.deepcopy(model), PruningConfig(method=method, sparsity=0.5, pattern=KeepPattern(2, 4)))
    masks = ours.prune(calibration=calibration)
    ref = _torchao_wanda_masks(model, calibration, names, sqrt=True)
    for n in names:
        assert torch.equal(masks[n], ref[n]), n
        assert int(masks[n].sum()) == masks[n].numel() // 2
    squared = _torchao_wanda_masks(model, calibration, names, sqrt=False)  # the documented difference is real
    assert any(not torch.equal(masks[n], squared[n]) for n in names)


# ---- SparseGPT == the paper's algorithm --------------------------------------------------------------------------
def _reference_sparsegpt(w, x, sparsity, blocksize, n_m=None, percdamp=0.01):
    """Algorithm 1 of the SparseGPT paper, in numpy float64, without lazy batching: after every column the error
    is propagated to ALL later columns at once (mathematically the same as the paper's lazy block updates).

    H = 2 X^T X / rows + lambda I (lambda = percdamp * mean diag), Hinv = upper Cholesky factor of H^-1. Mask
    selection: unstructured, at the start of each block of `blocksize` columns, prune the `sparsity` fraction of
    the block with the lowest w^2 / Hinv_cc^2; n:m, at every m-th column, prune the m - n lowest of each row's
    next m columns (a tail of cols mod m columns stays dense, this package's documented k:n rule)."""
    w = w.astype(np.float64).copy()
    x = x.astype(np.float64)
    h = 2.0 * x.T @ x / x.shape[0]
    h += percdamp * np.mean(np.diag(h)) * np.eye(h.shape[0])
    hinv = np.linalg.cholesky(np.linalg.inv(h)).T  # upper triangular, Hinv = U^T U
    rows, cols = w.shape
    keep = np.ones_like(w, dtype=bool)
    for b in range(0, cols, blocksize):
        blk = slice(b, min(b + blocksize, cols))
        if n_m is None:
            sal = (w[:, blk] ** 2 / np.diag(hinv)[blk] ** 2).ravel()
            k = int(sparsity * sal.size)
            pruned = np.zeros(sal.size, dtype=bool)
            pruned[np.argsort(sal, kind="stable")[:k]] = True
            keep[:, blk] = ~pruned.reshape(rows, -1)
        for j in range(blk.start, blk.stop):
            if n_m is not None and j % n_m[1] == 0 and j + n_m[1] <= cols:  # a tail of cols mod m stays dense
                g = slice(j, j + n_m[1])
                sal = w[:, g] ** 2 / np.diag(hinv)[g] ** 2
                keep[:, g] = True
                for r in range(rows):
                    keep[r, j + np.argsort(sal[r], kind="stable")[: n_m[1] - n_m[0]]] = False
            err = w[:, j] * (~keep[:, j]) / hinv[j, j]
            w[:, j:] -= np.outer(err, hinv[j, j:])
            w[:, j] *= keep[:, j]
    return w, keep


@pytest.mark.parametrize(("pattern", "method"), [(None, "sparsegpt"), ("2:4", "sparsegpt"), ("2:4", "sparsegpt-kn")])
@pytest.mark.parametrize(("cols", "blocksize"), [(32, 8), (90, 40)])  # (90, 40): 16-column micro-blocks, k:n tail
def test_sparsegpt_equals_the_paper_algorithm_on_random_layers(pattern, method, cols, blocksize):
    torch.manual_seed(11)
    model = tm.MLP((cols, 16))  # one random Linear layer
    xs = torch.randn(3 * cols, cols) @ torch.randn(cols, cols) * 0.5  # correlated inputs: the OBS updates matter
    if cols > 32:  # float64 end to end: the micro-blocked sweep must be the reference up to rounding, not float32
        model, xs = model.double(), xs.double()
    w0 = model.layers[0].weight.detach().numpy().copy()
    half = xs.shape[0] // 2
    cfg = {"method": method, "sparsity": 0.5, "blocksize": blocksize, "calibration_samples": 4 * cols}
    if pattern:
        cfg["pattern"] = pattern
    pruner = MPPruner(model, PruningConfig.from_dict(cfg))
    masks = pruner.prune(calibration=[{"x": xs[:half]}, {"x": xs[half:]}])
    n_m = (2, 4) if pattern else None
    w_ref, keep_ref = _reference_sparsegpt(w0, xs.numpy(), 0.5, blocksize, n_m=n_m)
    if method == "sparsegpt-kn":  # the k:n family leaves a tail of cols mod n exactly as it was
        w_ref[:, cols // 4 * 4 :] = w0[:, cols // 4 * 4 :]
    assert np.array_equal(masks["layers.0"].numpy(), keep_ref)
    got = model.layers[0].weight.detach().numpy()
    np.testing.assert_allclose(got, w_ref.astype(got.dtype), rtol=1e-4 if cols <= 32 else 1e-9, atol=1e-5)
    assert np.array_equal(got == 0, ~keep_ref)  # pruned entries are exactly zero, kept ones are not
    assert not np.allclose(got, w0 * keep_ref, atol=1e-3)  # the weight updates happened (not just masking)
