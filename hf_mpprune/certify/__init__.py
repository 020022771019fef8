"""Data-path certificates: budget audits of a pruned model against its dense parent on an audit set.

Owns `audit` (`budget_audit`), `bounds` (the certificate arithmetic and estimator notes), `inputs` (per-sample
inputs and Lipschitz estimators), `lipschitz` (ReLU-MLP tail and head constants) and `report`. May import:
`hf_mpprune.core`, `hf_mpprune.spectral`, `hf_mpprune.methods`.
"""
