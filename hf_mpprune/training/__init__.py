"""Training with frozen masks: the distillation Trainer, the cyclic prune → fine-tune driver, train steps, presets.

Owns `trainer` (`MPDistillationTrainer`, `MPDistillationArguments`), `masking` (`MaskFreezeCallback`, how the
trainer finds the masks a model carries), `checkpoints` (crash-safe Trainer checkpoints and resume through the
model's own key conversion), `record` (the fine-tune / distill step in the ledger), `losses` (KD and feature
losses), `peft` (masked LoRA/DoRA merge, sparsity-preserving adapters), `steps` (`make_train_step`, the small
loop used between cycles), `cycles` (`run_cycles`) and `presets`. May import: `hf_mpprune.core`,
`hf_mpprune.spectral`, `hf_mpprune.methods`.
"""
