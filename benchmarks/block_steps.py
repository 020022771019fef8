"""The block-step settings chosen on MiniLM's selection split (benchmarks/RESULTS.md, issue 22), shared by the
benches so that a cell named after a step runs exactly that step. Standard library only: timing.py imports it."""

# "(c)": 15 corrupted copies per calibration batch, 5 epochs, cosine-decayed rate ("the step's schedule under 7 copies")
STEP_C = {"refine": "alps", "block_epochs": 5, "block_augment": 15, "block_schedule": "cosine"}
# "(e)": 31 copies, 3 epochs, cosine-decayed rate ("more copies, fewer passes again")
STEP_E = {"refine": "alps", "block_epochs": 3, "block_augment": 31, "block_schedule": "cosine"}


def with_method(method: str, step: dict) -> dict:
    """A full option set of `method` running `step` (a fresh dict: the shared settings are never mutated)."""
    return {"method": method, **step}
