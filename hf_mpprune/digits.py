"""scikit-learn 8×8 digits testbed (ALGORITHMS.md §16): stratified 60/20/20 train/selection/test splits, a
small transformers ViT (patch 2 → 16 patches + cls, width 96, 4 blocks, 4 heads, MLP 384) and a seeded trainer.
Offline, CPU, about a minute to ~96% test accuracy.
"""

import logging

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset


logger = logging.getLogger(__name__)


def load_digits_splits(seed: int = 0) -> dict[str, TensorDataset]:
    """Stratified 60/20/20 `train` / `selection` / `test` splits of `load_digits`, pixels scaled to [0, 1] and
    standardised with the training split's mean/std. Items are `(pixel_values (1, 8, 8), label)`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    idx = np.arange(len(y))
    tr, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    sel, te = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    x = x.astype(np.float32) / 16.0
    mu, sd = x[tr].mean(), x[tr].std()
    out = {}
    for name, ids in (("train", tr), ("selection", sel), ("test", te)):
        px = torch.from_numpy((x[ids] - mu) / sd).reshape(-1, 1, 8, 8)
        out[name] = TensorDataset(px, torch.from_numpy(y[ids]).long())
    return out


def build_digits_vit(seed: int = 0):
    """ViTForImageClassification for 8×8 single-channel digits, seeded initialisation."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=384, num_labels=10, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )  # fmt: skip
    return ViTForImageClassification(cfg)


def train_digits_vit(model, train: TensorDataset, *, epochs: int = 12, lr: float = 3e-3, batch_size: int = 64,
                     weight_decay: float = 0.05, seed: int = 0):  # fmt: skip
    """AdamW with linear warmup (1 epoch) and cosine decay; returns the model (trained in place)."""
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    total = epochs * len(loader)
    warm = len(loader)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / warm if k < warm else 0.5 * (1 + np.cos(np.pi * (k - warm) / (total - warm)))
    )
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(pixel_values=x).logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    return model


@torch.no_grad()
def evaluate_accuracy(model, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy as a fraction in [0, 1] (eval mode, restored afterwards)."""
    was = model.training
    model.eval()
    correct = 0
    for x, y in DataLoader(dataset, batch_size=batch_size):
        correct += int((model(pixel_values=x).logits.argmax(-1) == y).sum())
    model.train(was)
    return correct / len(dataset)
