"""Checkpoints and the Hub: atomic directory writes, save/load of a model with its sidecars, model cards, push.

Owns `atomic` (write to a temporary directory, then replace), `checkpoint` (`save_checkpoint`,
`load_checkpoint`, `push_to_hub`, mask verification), `config_block` (the `mpprune` block in config.json that
survives a plain transformers load/save), `card` (the model card and its metadata), `network` (Hub failures as
one `HubError`) and the card template under `templates/`. It never imports the pruner: it reads and writes plain
parts (model, masks, ledger, spectra, config). May import: `hf_mpprune.core`, `hf_mpprune.spectral`, `hf_mpprune.methods`,
`hf_mpprune.training`, `hf_mpprune.deploy`, `hf_mpprune.certify`.
"""
