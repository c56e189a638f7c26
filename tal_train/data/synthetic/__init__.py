"""Procedural person re-id data: a multi-domain camera network (Market-1501 folders) and
multi-camera MOTChallenge video, drawn with OpenCV/numpy only."""
from .network import SyntheticConfig, domain_names, synthesize
from .video import VideoConfig, synthesize_video

__all__ = ["SyntheticConfig", "VideoConfig", "domain_names", "synthesize", "synthesize_video"]
