"""Training with frozen masks: the distillation Trainer, the cyclic prune → fine-tune driver, train steps, presets.

Owns `trainer` (`MPDistillationTrainer`, `MPDistillationArguments`), `masking` (which masks a run freezes,
`MaskFreezeCallback`), `checkpoints` (crash-safe checkpoint markers, resume through the model's own loader),
`record` (the training step of the ledger), `losses` (KD and feature losses, logits extraction), `peft` (LoRA /
DoRA masked merge, SHiRA on kept entries; optional extra), `steps` (`make_train_step`, the small loop used between
cycles), `cycles` (`run_cycles`) and `presets`. May import: `hf_mpprune.core`, `hf_mpprune.spectral`,
`hf_mpprune.methods`.
"""
