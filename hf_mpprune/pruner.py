"""`MPPruner`: the orchestrator. It mutates the model in place and never wraps it, so the model stays an ordinary
`PreTrainedModel` (Trainer, save_pretrained and generate work unchanged).

Lifecycle: `__init__` validates and discovers layers (errors before any SVD) -> `analyze()` MP-fits every layer ->
`prune(calibration=...)` runs the registered method and applies the masks with exact +0.0 zeros.
"""

import logging
import os
import time
from typing import Any

from torch import nn

from .core.attached import attach
from .core.config import PruningConfig, SpectralConfig
from .core.constants import EVERY_ROLE
from .core.errors import ConfigError, PatternError, warn_experimental
from .core.layers import LayerSet, discover_layers
from .core.ledger import Ledger, environment
from .core.masks import Masks
from .core.registry import PruneContext, get_method
from .core.snapshot import Snapshot
from .core.validate import check_finite, check_weights_finite
from .data.preprocess import is_raw, prepare_raw
from .hub.checkpoint import load_pretrained, push_to_hub, save_pretrained
from .hub.companions import saved_processor, source_dir
from .spectral.fit import SpectralReport, analyze


logger = logging.getLogger(__name__)


class MPPruner:
    """Prune a model with an MP-guided method.

    Args:
        model ([`~transformers.PreTrainedModel`] or `torch.nn.Module`): the model; modified in place by `prune()`.
        config ([`PruningConfig`], *optional*): method, sparsity, targets, ... With no config, `analyze()` covers
            every prunable layer and `prune()` is unavailable until a config is given.
        processor (*optional*): the model's tokenizer / image processor. It prepares raw `datasets` rows given to
            `prune(calibration=...)` and is saved with the checkpoint. Default: the one saved in the folder the model
            was loaded from (`config._name_or_path`), if any.
    """

    def __init__(self, model: nn.Module, config: PruningConfig | None = None, processor: Any = None):
        if not isinstance(model, nn.Module):
            raise ConfigError(f"MPPruner needs a torch.nn.Module, got {type(model).__name__}")
        if config is not None and not isinstance(config, PruningConfig):
            raise ConfigError(f"config must be a PruningConfig, got {type(config).__name__}")
        self.model = model
        self.config = config.resolve() if config is not None else None
        cfg = self.config or PruningConfig(targets=list(EVERY_ROLE))  # no config: analyse every prunable layer
        self.layers: LayerSet = discover_layers(model, cfg.targets, cfg.ignore)
        self.spectra: SpectralReport | None = None
        self.masks: Masks | None = None
        self.recipe: dict[str, Any] | None = None  # the recipe that produced this run (written as recipe.yaml)
        self.source = source_dir(model)  # its processor and sentence-transformers modules travel with the checkpoint
        self._processor = processor
        self.ledger = Ledger(identity=environment(), registry=self._registry_record())
        name = getattr(getattr(model, "config", None), "_name_or_path", "")
        if name:
            self.ledger.identity["base_model"] = name

    @property
    def processor(self) -> Any:
        """The model's processor: the one given, else the one saved in `self.source` (loaded at first use), or None."""
        if self._processor is None:
            self._processor = saved_processor(self.source)
        return self._processor

    @processor.setter
    def processor(self, value: Any) -> None:
        self._processor = value

    def _registry_record(self) -> list[dict[str, Any]]:
        return [{"name": la.name, "kind": la.kind, "role": la.role, "shape": list(la.shape)} for la in self.layers]

    # ---- loading ------------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, config: PruningConfig | None = None, **kwargs: Any
    ) -> "MPPruner":
        """Load a transformers checkpoint (local dir or Hub id) with the class named in its config.

        If the directory holds our sidecars (`mpprune_ledger.json`, ...; a pruned checkpoint or a
        `MPDistillationTrainer` checkpoint), the pruning config, masks, ledger and spectra are restored, attached
        to the model (so a Trainer without `masks=` freezes them) and the masks verified: their SHA-256 against the ledger and the zero pattern of the
        weights (`LedgerMismatchError` when a pruned-by-mask weight is nonzero). Hub arguments (`revision`, `token`,
        `cache_dir`, `local_files_only`, `subfolder`, `force_download`) are passed through; other keyword arguments
        (e.g. `dtype=`) go to the model's `from_pretrained`. An explicit `config` overrides the saved one.
        """

        pruner = load_pretrained(cls, name_or_path, config, **kwargs)
        if pruner.masks is not None:  # the model carries its masks and ledger (the Trainer freezes those)
            attach(pruner.model, masks=pruner.masks, ledger=pruner.ledger)
        return pruner

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> str:
        """Write a transformers directory plus sidecars and a model card, atomically (see `hf_mpprune.hub.checkpoint`).

        Keyword arguments: `processor` (saved alongside; default `self.processor`, the one the model came with;
        False: none), `card` (default True), `model_name`, `max_shard_size`. A sentence-transformers folder keeps its
        module stack (`modules.json`, pooling, normalisation), so `SentenceTransformer(out)` loads the pruned model.
        """

        return save_pretrained(self, save_directory, **kwargs)

    def push_to_hub(
        self,
        repo_id: str | None = None,
        *,
        private: bool | None = None,
        revision: str | None = None,
        create_pr: bool = False,
        token: str | bool | None = None,
        commit_message: str | None = None,
        processor: Any = None,
    ):
        """Upload weights, sidecars and card to `repo_id` in one commit (see `hf_mpprune.hub.checkpoint.push_to_hub`)."""

        return push_to_hub(
            self, repo_id, private=private, revision=revision, create_pr=create_pr, token=token,
            commit_message=commit_message, processor=processor,
        )  # fmt: skip

    # ---- the work -----------------------------------------------------------------------------------------
    def analyze(self, config: SpectralConfig | None = None, *, progress: bool = True) -> SpectralReport:
        """MP-fit every registered layer (float64, CPU unless `config.device` says otherwise)."""
        cfg = config or (self.config.spectral if self.config else SpectralConfig())
        t0 = time.perf_counter()
        self.spectra = analyze(self.layers, cfg, progress=progress)
        self.ledger.spectral = {
            "config": self.spectra.to_dict()["spectral_config"],
            "seconds": round(time.perf_counter() - t0, 3),
            "layers": {r.name: {"sigma_plus": r.fit.sigma_plus, "n_spikes": r.fit.n_spikes} for r in self.spectra},
        }
        return self.spectra

    def prune(self, calibration: Any = None, *, train_step=None, sparsity: float | None = None) -> Masks:
        """Compute masks with the configured method and apply them (exact +0.0 zeros).

        Args:
            calibration: model inputs for calibration-based methods (a `datasets.Dataset`, a DataLoader or an
                iterable of input dicts). A raw `datasets.Dataset` (an image or text column, e.g. from
                `load_dataset("imagefolder", ...)`) is prepared with `self.processor`, as the CLI and `oneshot` do.
            train_step: callable used by methods that train between steps (SER, Hybrid).
            sparsity (`float`, *optional*): override the target for this call (cyclic schedules).
        """
        if self.config is None:
            raise ConfigError("no PruningConfig given: use MPPruner(model, PruningConfig(method=..., sparsity=...))")
        cfg = self.config
        if sparsity is not None:
            cfg = type(cfg).from_dict({**cfg.to_dict(), "sparsity": sparsity})
        spec = get_method(cfg.method)
        check_weights_finite(self.layers, self.model)  # NaN/Inf parameters: one check for every method, named
        if spec.needs_calibration and calibration is None:
            raise ConfigError(f"method {cfg.method!r} needs calibration data: prune(calibration=dataset)")
        if spec.needs_calibration and is_raw(calibration, self.model):
            calibration = prepare_raw(calibration, self.model, self.processor)
        if spec.needs_training and train_step is None:
            raise ConfigError(f"method {cfg.method!r} trains between steps: prune(train_step=...) is required")
        if self.masks is not None and cfg.pattern is None and cfg.sparsity < self.masks.sparsity() - 1e-12:
            raise ConfigError(
                f"target sparsity {cfg.sparsity} is below the current {self.masks.sparsity():.4f}: "
                "pruning is cumulative; pick a target >= the current sparsity"
            )
        if spec.experimental:
            warn_experimental(spec.name)
        if spec.uses_spectra(cfg) and self.spectra is None:
            self.analyze(progress=False)
        ctx = PruneContext(self.layers, cfg, self.model, self.spectra, calibration, self.masks, train_step)
        t0 = time.perf_counter()
        masks = self._run(spec, ctx)
        self.masks = masks
        attach(self.model, masks=masks, ledger=self.ledger)  # masks travel with the model (the Trainer reads them)
        self.ledger.add_step(
            method=cfg.method,
            config=_config_record(cfg, ctx.record.get("calibration")),
            target_sparsity=cfg.sparsity,
            achieved_sparsity=masks.sparsity(),
            layer_sparsity=masks.layer_sparsity(),
            mask_sha256=masks.sha256(),
            seconds=round(time.perf_counter() - t0, 3),
            excluded_layers=dict(self.layers.excluded),  # what was left dense by the registry, and why
            **ctx.record,
        )
        logger.info("%s: sparsity %.4f over %d layers", cfg.method, masks.sparsity(), len(masks))
        return masks

    def _run(self, spec, ctx: PruneContext) -> Masks:
        """Run the method and apply its masks, all or nothing: what the method may write (`spec.writes`) is copied
        first and put back on any exception, so a failed `prune()` leaves the model as it was."""
        snapshot = Snapshot.take(self.model, self.layers, spec.writes)
        try:
            masks = spec.fn(ctx)
            for layer in self.layers:  # what the method wrote must be finite (a failed solve, an overflow)
                check_finite(layer.weight.detach(), f"weight written by method {spec.name!r} into {layer.name!r}")
            # k:n kept slots may revive weights (free restoration); so may SER with reservoir="all_zero" (it says so)
            self._validate(masks, allow_revive=spec.structured or bool(ctx.record.get("revives_allowed")))
            masks.pattern = masks.pattern or ctx.config.pattern
            masks.apply_(self.model)
        except BaseException:
            snapshot.restore()
            raise
        finally:
            snapshot.discard()
        return masks

    def _validate(self, masks: Masks, allow_revive: bool = False) -> None:
        if set(masks.names) != set(self.layers.names):
            missing = sorted(set(self.layers.names) - set(masks.names))[:10]
            extra = sorted(set(masks.names) - set(self.layers.names))[:10]
            raise PatternError(
                f"method returned masks that do not match the registry (missing {missing}, extra {extra})"
            )
        masks.check_model(self.model)
        if self.masks is not None and not allow_revive and not masks.is_subset_of(self.masks):
            raise PatternError("new masks revive weights pruned in an earlier cycle (pruning must be cumulative)")

    def report(self) -> dict[str, Any]:
        """Short summary: layers, sparsity (global and per layer), spectra summary."""
        out: dict[str, Any] = {"layers": len(self.layers), "weights": self.layers.total_params}
        if self.masks is not None:
            out["sparsity"] = self.masks.sparsity()
            out["layer_sparsity"] = self.masks.layer_sparsity()
        if self.spectra is not None:
            out["spectra"] = {r.name: (r.fit.sigma_plus, r.fit.bulk_fraction, r.fit.n_spikes) for r in self.spectra}
        return out


def _config_record(cfg: PruningConfig, calibration: dict | None) -> dict[str, Any]:
    """The config as the ledger records it: what ran. Batches given as a `CalibrationBatches` are used as they are,
    so their sample count and batch size replace the config's (the config's values are kept under
    `calibration_config_not_applied`)."""
    out = cfg.to_dict()
    if calibration and calibration.get("prebuilt"):
        given = {
            "calibration_samples": calibration["num_samples"],
            "calibration_batch_size": calibration["batch_size"],
        }
        out["calibration_config_not_applied"] = {k: out[k] for k in given if k in out} | {"seed": cfg.seed}
        out.update((k, v) for k, v in given.items() if k in out)
    return out
