"""The two kernel-level steps of the 2:4 conversion: packing a weight into a backend's semi-structured tensor, and
(cuSPARSELt) choosing its matmul kernel. Both run on CUDA only; `semi_structured.to_semi_structured` calls them."""

import logging
import warnings

import torch
from torch.sparse import SparseSemiStructuredTensorCUSPARSELT, SparseSemiStructuredTensorCUTLASS


logger = logging.getLogger(__name__)

# The backends' tensor subclasses; their `_DTYPE_SHAPE_CONSTRAINTS` are the shape table (docs/deploy.md)
SUBCLASSES = {"cutlass": SparseSemiStructuredTensorCUTLASS, "cusparselt": SparseSemiStructuredTensorCUSPARSELT}


def compress(weight: torch.Tensor, backend: str) -> torch.Tensor:
    """`weight` as the backend's semi-structured tensor (CUDA). cuSPARSELt writes the product transposed: a contiguous
    Linear output (a transposed view sends attention to its slow math path; RESULTS, H200)."""
    packed = SUBCLASSES[backend].from_dense(weight)
    packed.fuse_transpose_cusparselt = backend == "cusparselt"
    return packed


def search_alg(packed: torch.Tensor, rows: int) -> int:
    """cuSPARSELt's own search for the fastest kernel of this packed weight at `rows` input rows (output transposed,
    as `compress` sets); the default kernel 0 where this torch has no search."""
    x = torch.randn(rows, packed.shape[1], dtype=packed.dtype, device=packed.device)
    try:
        with warnings.catch_warnings(record=True) as said:  # torch's own notes on the search: logged, not raised
            warnings.simplefilter("always")
            alg = int(torch._cslt_sparse_mm_search(packed.packed, x.t(), transpose_result=True))
    except (AttributeError, RuntimeError, TypeError) as e:
        logger.warning("cuSPARSELt kernel search unavailable (%s): default kernel", e)
        return 0
    for w in said:
        logger.info("cuSPARSELt kernel search: %s", w.message)
    return alg
