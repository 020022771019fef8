"""Training with frozen masks: the distillation Trainer, the cyclic prune → fine-tune driver, train steps, presets.

Owns `trainer` (`MPDistillationTrainer`, `MPDistillationArguments`, `MaskFreezeCallback`), `losses` (KD and
feature losses, logits extraction), `steps` (`make_train_step`, the small loop used between cycles), `cycles`
(`run_cycles`) and `presets`. May import: `hf_mpprune.core`, `hf_mpprune.spectral`, `hf_mpprune.methods`.
"""
