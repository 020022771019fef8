"""Global selection of the lowest-scoring entries with a deterministic index tie-break (shared by all
unstructured methods), and the SEB layer weights (ALGORITHMS.md §3, §4.1)."""

import torch


def keep_top(scores: list[torch.Tensor], num_prune: int) -> list[torch.Tensor]:
    """Masks (True = kept) that prune exactly `num_prune` entries with the lowest scores, across all tensors.

    Ties are broken by position in the concatenation (earlier layers, then row-major index, go first), so the
    result is exact to the entry and deterministic. Memory: one float32 copy of all scores, no sort.
    """
    flat = torch.cat([s.detach().reshape(-1).float() for s in scores])  # (P,)
    total = flat.numel()
    if not 0 <= num_prune <= total:
        raise ValueError(f"cannot prune {num_prune} of {total} entries")
    if num_prune == 0:
        keep = torch.ones(total, dtype=torch.bool)
    else:
        thr = torch.kthvalue(flat, num_prune).values
        below = flat < thr
        tie = (flat == thr).nonzero().squeeze(1)
        need = num_prune - int(below.sum())
        keep = ~below
        keep[tie[:need]] = False
    out, start = [], 0
    for s in scores:
        out.append(keep[start : start + s.numel()].reshape(s.shape))
        start += s.numel()
    return out
