"""napari integration: readers, sample data and widgets (thin: they call the core).

Everything Qt lives here; the rest of the package never imports it. Entry points are declared
in the top-level ``napari.yaml`` (npe2 manifest).
"""

__all__ = ["launch_explorer"]


def launch_explorer(*args, **kwargs):
    """See :func:`napari_meddift._qt.app.launch_explorer` (imported lazily: it starts Qt)."""
    from .app import launch_explorer as _launch

    return _launch(*args, **kwargs)
