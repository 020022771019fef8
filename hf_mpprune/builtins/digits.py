"""The small-scale testbed of ALGORITHMS.md §16: scikit-learn's 8×8 digits and a tiny ViT trained from scratch.

Shared by tests, benchmarks and the demo: `load_digits_splits(seed)` (stratified 60/20/20 train/val/test; the
test split is never used for choices), `build_digits_vit(seed)` (patch 2, width 96, 4 blocks, 4 heads, MLP 384:
every k:n pattern is legal) and `train_digits_vit(model, splits, epochs, seed)`.
"""

import tempfile

import numpy as np
import torch
from torch.utils.data import Dataset


SPLITS = ("train", "val", "test")


class DigitsDataset(Dataset):
    """`{"pixel_values": (1, 8, 8) float, "labels": long}` items, the format `ViTForImageClassification` takes.
    `index` holds each item's row in `sklearn.datasets.load_digits()` (for ledgers), when known."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, index: torch.Tensor | None = None):
        self.x, self.y, self.index = x, y, index

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def load_digits_splits(seed: int = 0) -> dict[str, DigitsDataset]:
    """Stratified 60/20/20 split of the 1,797 digits; pixels 0…16 scaled to [-1, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # (1797, 1, 8, 8)
    y = data.target.astype(np.int64)
    idx = np.arange(len(y))
    train, rest = train_test_split(idx, test_size=0.4, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=y[rest], random_state=seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return {name: DigitsDataset(xt[ix], yt[ix], torch.from_numpy(ix)) for name, ix in zip(SPLITS, (train, val, test))}


def build_digits_vit(seed: int = 0, hidden: int = 96, layers: int = 4, heads: int = 4, mlp: int = 384):
    """A freshly initialised `ViTForImageClassification` for 8×8 one-channel digits (16 patches + [CLS])."""
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, intermediate_size=mlp, num_labels=10,
    )  # fmt: skip
    return ViTForImageClassification(cfg)


@torch.no_grad()
def accuracy(model, dataset: DigitsDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on a digits split (eval mode, no grad)."""
    model.eval()
    correct = 0
    for i in range(0, len(dataset), batch_size):
        logits = model(pixel_values=dataset.x[i : i + batch_size]).logits
        correct += int((logits.argmax(-1) == dataset.y[i : i + batch_size]).sum())
    return correct / len(dataset)


def train_digits_vit(model, splits: dict[str, DigitsDataset], epochs: int = 30, seed: int = 0, lr: float = 1e-3):
    """Train from scratch with a plain `transformers.Trainer` (AdamW, cosine, warmup 10%); returns val accuracy.

    Nothing is written outside a temporary directory; the test split is not touched.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, learning_rate=lr, weight_decay=0.05, warmup_steps=0.1,
            lr_scheduler_type="cosine", per_device_train_batch_size=32, save_strategy="no", report_to="none",
            use_cpu=True, seed=seed, logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=splits["train"])
        trainer.remove_callback(PrinterCallback)  # quiet: no metrics dict on stdout
        trainer.train()
    return accuracy(model, splits["val"])


def trained_digits_vit(seed: int, splits: dict[str, DigitsDataset], epochs: int = 20, cache_dir: str | None = None):
    """The dense digits ViT of `seed` trained for `epochs` (`train_digits_vit`), loaded from
    `cache_dir/digits_vit_seed{seed}_ep{epochs}` when present and saved there after training otherwise."""
    import os

    from transformers import ViTForImageClassification

    path = os.path.join(cache_dir, f"digits_vit_seed{seed}_ep{epochs}") if cache_dir else None
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return ViTForImageClassification.from_pretrained(path).eval()
    model = build_digits_vit(seed)
    train_digits_vit(model, splits, epochs=epochs, seed=seed)
    if path:
        model.save_pretrained(path)
    return model.eval()


def train_digits_mlp(seed: int = 0, steps: int = 400, n_train: int = 1080, n_audit: int = 360):
    """The certificates testbed: a ReLU MLP 64-256-256-10 trained `steps` Adam steps (lr 2e-3, batch 64) on a
    random `n_train` digits (flattened pixels / 16). Returns `(net, X_audit, y_audit, audit accuracy)` for the
    next `n_audit` images of the same permutation (held out)."""
    import torch.nn.functional as F
    from sklearn.datasets import load_digits
    from torch import nn

    torch.manual_seed(seed)
    X, y = load_digits(return_X_y=True)
    X, y = torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    perm = torch.randperm(len(X))
    tr, te = perm[:n_train], perm[n_train : n_train + n_audit]
    net = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for _ in range(steps):
        idx = tr[torch.randint(0, len(tr), (64,))]
        loss = F.cross_entropy(net(X[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        acc = (net(X[te]).argmax(1) == y[te]).float().mean().item()
    return net, X[te], y[te], acc
