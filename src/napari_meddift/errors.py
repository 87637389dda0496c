"""One exception type for every problem a user can fix.

The CLI prints these as a single line and exits non-zero; the widgets show them in place.
Anything else escaping is a bug.
"""


class MedDiftError(Exception):
    """A problem with the user's input, files or settings; the message says what and how to fix it."""


class CancelledError(MedDiftError):
    """The user cancelled a long run; nothing half-done was kept."""


#: phrases of out-of-memory errors: PyTorch CPU/CUDA/MPS allocators, CUDA/cuDNN/cuBLAS, numpy
_OOM_PHRASES = (
    "out of memory",
    "can't allocate memory",
    "cannot allocate memory",
    "defaultcpuallocator",
    "not enough memory",
    "failed to allocate",
    "unable to allocate",
    "cudnn_status_alloc_failed",
    "cublas_status_alloc_failed",
    "mps backend out of memory",
)


def is_out_of_memory(exc: BaseException | None) -> bool:
    """True if ``exc`` (or an exception it was raised from) says memory ran out.

    Recognises MemoryError, ``torch.OutOfMemoryError`` (CUDA), numpy's ``_ArrayMemoryError``
    and the RuntimeError texts of PyTorch's CPU, CUDA and MPS allocators, without importing torch.
    """
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, MemoryError):
            return True
        if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
            return True
        text = str(exc).lower()
        if isinstance(exc, (RuntimeError, OSError, ValueError)) and any(p in text for p in _OOM_PHRASES):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def out_of_memory_message(exc: BaseException | None = None, where: str = "") -> str:
    """One line for an out-of-memory failure, with the ways out."""
    text = str(exc).lower() if exc is not None else ""
    gpu = "cuda" in text or "gpu" in text or any(c.__name__ == "OutOfMemoryError" for c in type(exc).__mro__)
    device = "GPU" if gpu else "CPU"
    head = f"out of {device} memory" + (f" while {where}" if where else "")
    ways = ("crop the scan to the region of interest, resample it to coarser voxels, "
            "use a smaller backbone (mini), or close other programs")
    if not gpu:
        ways += ", or run on a GPU with --device cuda"
    return f"{head}; {ways}"
