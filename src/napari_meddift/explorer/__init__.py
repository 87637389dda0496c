"""The correspondence explorer's model, free of Qt and napari (the widgets live in ``_qt``).

``ExplorerSession`` holds one pair (a matcher per cached timestep), the evented
``ExplorerState`` the controls bind to, the pair's truth and landmarks, and the compute step
that turns a source voxel into everything the views show (maps in three display modes, best
voxel, rivalry, true point and error in mm, the compare strip across timesteps).
"""

from .engine import ExplorerEngine, QueryRequest, QueryResult, pick_along_ray
from .landmarks import LandmarkSet
from .maps import PeakStats, display_limits, display_map, peak_stats, suggest_map_range
from .session import ExplorerSession, SessionEvents, format_status
from .state import DISPLAY_MODES, MAP_RANGES, ExplorerState
from .timesteps import extract_timesteps, parse_timesteps, store_recipe
from .truth import FieldTruth, LandmarkTruth, TruthAnswer

__all__ = [
    "DISPLAY_MODES", "MAP_RANGES", "ExplorerEngine", "ExplorerSession", "ExplorerState", "FieldTruth",
    "LandmarkSet", "LandmarkTruth", "PeakStats", "QueryRequest", "QueryResult", "SessionEvents", "TruthAnswer",
    "display_limits", "display_map", "extract_timesteps", "format_status", "parse_timesteps", "peak_stats",
    "pick_along_ray", "store_recipe", "suggest_map_range",
]
