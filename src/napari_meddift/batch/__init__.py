"""Batch work on a Dask cluster: many scans extracted in parallel, locally or on any scheduler."""

from .cluster import connect, local_cluster
from .extract_many import BatchReport, extract_many, scan_name
from .tasks import BackboneSpec, ScanJob, ScanResult

__all__ = ["BackboneSpec", "BatchReport", "ScanJob", "ScanResult", "connect", "extract_many", "local_cluster",
           "scan_name"]
