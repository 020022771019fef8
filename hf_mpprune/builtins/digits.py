"""The small-scale testbed of docs/algorithms.md §16: scikit-learn's 8×8 digits and a tiny ViT trained from scratch.

Shared by tests, benchmarks and the demo: `load_digits_splits(seed)` (stratified 60/20/20 train/val/test; the
test split is never used for choices), `build_digits_vit(seed)` (patch 2, width 96, 4 blocks, 4 heads, MLP 384:
every k:n pattern is legal) and `train_digits_vit(model, splits, epochs, seed)`. The same splits as an ordinary
image `datasets.DatasetDict` (`digits_dataset`: 8×8 grey PNG-able images, `ClassLabel` labels, splits train /
validation / test) with the `ViTImageProcessor` that maps them exactly onto the training pixels
(`digits_processor`), and the trained model saved with that processor (`digits_vit_dir`): the recipe runner sees
them like any user model and dataset.
"""

import logging
import os
import tempfile

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessor,
)


logger = logging.getLogger(__name__)


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


class _EpochLog(TrainerCallback):
    """Logs every epoch of the dense training with its validation accuracy (the demo's first seconds)."""

    def __init__(self, val: DigitsDataset, epochs: int):
        self.val, self.epochs = val, epochs

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        acc = accuracy(model, self.val)
        model.train()
        logger.info("digits ViT: epoch %d/%d, val accuracy %.4f", round(state.epoch or 0), self.epochs, acc)


def train_digits_vit(
    model, splits: dict[str, DigitsDataset], epochs: int = 30, seed: int = 0, lr: float = 1e-3, progress: bool = False
):
    """Train from scratch with a plain `transformers.Trainer` (AdamW, cosine, warmup 10%); returns val accuracy.

    Nothing is written outside a temporary directory; the test split is not touched.
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(
            output_dir=tmp, num_train_epochs=epochs, learning_rate=lr, weight_decay=0.05, warmup_steps=0.1,
            lr_scheduler_type="cosine", per_device_train_batch_size=32, save_strategy="no", report_to="none",
            use_cpu=True, seed=seed, logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        )  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=splits["train"])
        trainer.remove_callback(PrinterCallback)  # quiet: no metrics dict on stdout
        if progress:
            trainer.add_callback(_EpochLog(splits["val"], epochs))
        trainer.train()
    return accuracy(model, splits["val"])


def trained_digits_vit(seed: int, splits: dict[str, DigitsDataset], epochs: int = 20, cache_dir: str | None = None):
    """The dense digits ViT of `seed` trained for `epochs` (`train_digits_vit`), loaded from
    `cache_dir/digits_vit_seed{seed}_ep{epochs}` when present and saved there after training otherwise."""
    path = os.path.join(cache_dir, f"digits_vit_seed{seed}_ep{epochs}") if cache_dir else None
    if path and os.path.isfile(os.path.join(path, "config.json")):
        return ViTForImageClassification.from_pretrained(path).eval()
    model = build_digits_vit(seed)
    logger.info("training the builtin digits ViT (seed %d, %d epochs; cached in %s)", seed, epochs, path)
    train_digits_vit(model, splits, epochs=epochs, seed=seed, progress=True)
    if path:
        model.save_pretrained(path)
    return model.eval()


def train_digits_mlp(seed: int = 0, steps: int = 400, n_train: int = 1080, n_audit: int = 360):
    """The certificates testbed: a ReLU MLP 64-256-256-10 trained `steps` Adam steps (lr 2e-3, batch 64) on a
    random `n_train` digits (flattened pixels / 16). Returns `(net, X_audit, y_audit, audit accuracy)` for the
    next `n_audit` images of the same permutation (held out)."""
    from sklearn.datasets import load_digits

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


# ---- the same task as an ordinary dataset + processor + model folder ---------------------------------------------
DATASET_SPLITS = {"train": "train", "validation": "val", "test": "test"}


def digits_processor() -> ViTImageProcessor:
    """Grey 8×8 images with pixels 15·v (v = 0…16) → exactly the training pixels v/8 − 1 (no resize)."""
    return ViTImageProcessor(
        do_resize=False, size={"height": 8, "width": 8}, rescale_factor=1 / 240, image_mean=[0.5], image_std=[0.5]
    )


def digits_dataset(seed: int = 0) -> datasets.DatasetDict:
    """`load_digits_splits(seed)` as an image `DatasetDict` (train / validation / test) with an `idx` column (the
    row of `sklearn.datasets.load_digits()`)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images.astype(np.uint8) * 15  # (1797, 8, 8), values 0…240
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)]),
         "idx": datasets.Value("int64")}
    )  # fmt: skip
    out = {}
    for name, key in DATASET_SPLITS.items():
        split = load_digits_splits(seed)[key]
        rows = split.index.tolist()
        out[name] = datasets.Dataset.from_dict(
            {"image": [Image.fromarray(images[i], mode="L") for i in rows], "label": split.y.tolist(), "idx": rows},
            features=features,
        )
    return datasets.DatasetDict(out)


def digits_vit_dir(cache_dir: str | None = None, seed: int = 0, epochs: int | None = None, **_) -> str:
    """A folder with the dense digits ViT (initialised with `seed`, trained on the train split of
    `digits_dataset(0)`) and its `digits_processor`; built once and cached under `cache_dir`."""
    epochs = epochs or 20
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".cache", "hf_mpprune")
    path = os.path.join(cache_dir, f"digits_vit_seed{seed}_ep{epochs}")
    model = trained_digits_vit(seed, load_digits_splits(0), epochs=epochs, cache_dir=cache_dir)
    if not os.path.isfile(os.path.join(path, "preprocessor_config.json")):
        model.save_pretrained(path)
        digits_processor().save_pretrained(path)
    return path
