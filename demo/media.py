"""Small synthetic media for the tests and the demo: an mp4 writer (H.264 + AAC via PyAV) and clip generators.

Everything here is generated at run time, so no media file needs to be committed.
"""

import os
from fractions import Fraction

import av
import numpy as np


# AAC frames always hold 1024 samples per channel.
AAC_FRAME_SIZE = 1024


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = 8,
    audio: np.ndarray | None = None,
    sample_rate: int = 16000,
    gop_size: int | None = None,
) -> str:
    """
    Writes an mp4 file with one H.264 (yuv420p) video stream and, optionally, one mono AAC audio stream.

    Args:
        path (`str` or `os.PathLike`):
            Where to write the file.
        frames (`np.ndarray`):
            uint8 array of shape (T, H, W, 3), RGB. H and W must be even (yuv420p).
        fps (`float`, *optional*, defaults to 8):
            Frame rate of the video stream.
        audio (`np.ndarray`, *optional*):
            Mono float waveform in [-1, 1]. No audio stream is written when `None`.
        sample_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of `audio`.
        gop_size (`int`, *optional*):
            Frames from one keyframe to the next (libx264's default when `None`).

    Returns:
        `str`: the path written.
    """
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"`frames` must have shape (T, H, W, 3), got {frames.shape}")
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        video_stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video_stream.height, video_stream.width = frames.shape[1:3]
        video_stream.pix_fmt = "yuv420p"
        # Near-lossless so that the colour-coded test clips decode back to their codes.
        video_stream.options = {"crf": "10", "preset": "ultrafast"}
        if gop_size is not None:
            video_stream.codec_context.gop_size = gop_size
        audio_stream = None
        if audio is not None:
            audio_stream = container.add_stream("aac", rate=sample_rate, layout="mono")

        for frame in frames:
            container.mux(video_stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video_stream.encode())

        if audio_stream is not None:
            waveform = np.asarray(audio, dtype=np.float32).reshape(-1)
            for start in range(0, len(waveform), AAC_FRAME_SIZE):
                chunk = waveform[start : start + AAC_FRAME_SIZE]
                audio_frame = av.AudioFrame.from_ndarray(chunk[None, :], format="fltp", layout="mono")
                audio_frame.sample_rate = sample_rate
                audio_frame.pts = start
                container.mux(audio_stream.encode(audio_frame))
            container.mux(audio_stream.encode())
    return path


def solid_color_clip(
    color: tuple[int, int, int], num_frames: int = 8, height: int = 32, width: int = 32
) -> np.ndarray:
    """Returns `num_frames` frames of one RGB colour, uint8 (T, H, W, 3)."""
    return np.broadcast_to(np.asarray(color, dtype=np.uint8), (num_frames, height, width, 3)).copy()


def index_coded_clip(num_frames: int, height: int = 32, width: int = 32) -> np.ndarray:
    """
    Returns grey frames whose brightness encodes the frame index, uint8 (T, H, W, 3).

    The levels are spread over [16, 240] so that codec rounding (a level or two) cannot move a frame onto its
    neighbour's level; [`index_from_level`] reads an index back.
    """
    levels = np.round(index_levels(num_frames)).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (num_frames, height, width, 3)).copy()


def index_levels(num_frames: int) -> np.ndarray:
    """The grey level of every frame of an [`index_coded_clip`] of `num_frames` frames."""
    return np.linspace(16, 240, num_frames) if num_frames > 1 else np.array([128.0])


def index_from_level(level: float, num_frames: int) -> int:
    """The frame index whose grey level in an [`index_coded_clip`] of `num_frames` frames is closest to `level`."""
    return int(np.argmin(np.abs(index_levels(num_frames) - level)))


def tone(frequency: float, seconds: float, sample_rate: int = 16000, amplitude: float = 0.5) -> np.ndarray:
    """Returns a sine wave of `frequency` Hz, float32 of shape (round(seconds * sample_rate),)."""
    time = np.arange(int(round(seconds * sample_rate))) / sample_rate
    return (amplitude * np.sin(2 * np.pi * frequency * time)).astype(np.float32)
