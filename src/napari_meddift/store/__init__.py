"""User-facing alias of :mod:`napari_meddift.io.store`: ``from napari_meddift.store import open_store``.

The descriptor store lives in :mod:`napari_meddift.io.store`; this module only re-exports its
public names so that scripts written against the flat layout keep working.
"""

from ..io.store import DescriptorStore, cache_key, level_chunks, open_store, verify_store, write_store

__all__ = ["DescriptorStore", "cache_key", "level_chunks", "open_store", "verify_store", "write_store"]
