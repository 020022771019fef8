"""The core: what every stage shares and nothing method-specific.

Owns layer discovery (`layers`), masks (`masks`), the masks/ledger side table that travels with a model
(`attached`), the ledger (`ledger`), configs and the method registry (`config`, `registry`: one dict, no method
known by name), model loading (`loading`: one local-path rule, one list of Hub arguments), reading a model's
output (`outputs`), calibration capture (`calibration`), sequential layer-by-layer calibration (`sequential`, on
cached transformer-block inputs: `blockwise`, with joined batches: `joined`; small LAPACK calls spread over the
cores: `threads`), OBS / least-squares math (`obs`; the re-fit options and its CG solver: `refit`), mask
refinement (`refine`: options and the per-layer driver; joint mask / weight ADMM: `admm`; prune-and-grow swaps:
`swap`), safe file readers (`files`: JSON sidecars, safetensors headers, model folders), input validation
(`validate`: config field types, finiteness, batch keys), errors and file-name constants.
May import: nothing else from `hf_mpprune` (only torch, numpy, transformers and the standard library).
"""
