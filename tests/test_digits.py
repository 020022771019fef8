"""The digits testbed: stratified 60/20/20 splits and the ViT shape (no training here)."""

import torch

from hf_mpprune.digits import build_digits_vit, evaluate_accuracy, load_digits_splits


def test_splits_sizes_stratified_and_disjoint():
    splits = load_digits_splits(0)
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 1078, "selection": 359, "test": 360}
    for part in ("selection", "test"):
        counts = torch.bincount(splits[part].tensors[1], minlength=10)
        assert int(counts.max() - counts.min()) <= 3  # ~36 images per class
    rows = {k: {tuple(x.reshape(-1).tolist()) for x in v.tensors[0]} for k, v in splits.items()}
    # digits has a few duplicate images; overlap between splits can only come from those
    assert len(rows["test"] & rows["train"]) < 5 and len(rows["selection"] & rows["test"]) < 5
    assert load_digits_splits(1)["test"].tensors[1].tolist() != splits["test"].tensors[1].tolist()


def test_vit_shape_and_evaluate():
    model = build_digits_vit(0)
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(names) == 4 * 6 + 1 and model.config.intermediate_size == 384
    acc = evaluate_accuracy(model, load_digits_splits(0)["test"])
    assert 0.0 <= acc <= 0.3  # untrained: near chance
