"""The caption engine: one per loaded captioner; it batches requests from every session and decodes fast."""

from .attach import engine_for, retire_engine, shutdown_engines
from .device_pixels import DeviceImageStage
from .engine import CaptionEngine, EngineClosed
from .limits import EngineLimits
from .pixels import CpuImageStage, ImageStage, PreparedImage
from .result import CaptionResult

__all__ = [
    "CaptionEngine", "CaptionResult", "CpuImageStage", "DeviceImageStage", "EngineClosed", "EngineLimits", "ImageStage",
    "PreparedImage", "engine_for", "retire_engine", "shutdown_engines",
]  # fmt: skip
