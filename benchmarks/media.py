"""TV-like test clips for the benchmarks, generated at run time (no media is committed).

ECF utterances are cut from TV episodes: 640x360-ish H.264 (High profile, CABAC, B-frames, one key frame every
~10 s) with 48 kHz stereo AAC. The clips written here use the same kind of encoding (`libx264`, preset `veryfast`,
CRF 23, x264's default GOP), a moving textured picture with film grain (0.8-1.1 Mbit/s, the bit rate of
such episodes) and a speech-like harmonic sound, so that decoding costs what it costs on the real data.
"""

import os
from fractions import Fraction

import av
import numpy as np

WIDTH, HEIGHT, FPS = 640, 360, 25
SAMPLE_RATE = 48000
# AAC encodes 1024 samples per channel per frame.
AAC_FRAME_SIZE = 1024
# Pixels the picture pans per frame.
PAN_SPEED = 3


def _picture(height: int, width: int) -> np.ndarray:
    """A smooth, colourful float32 (height, width, 3) picture (cheap to make, costly enough to encode)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    red = 128 + 100 * np.sin(x / 37.0) * np.cos(y / 23.0)
    green = 128 + 90 * np.sin((0.7 * x - 0.5 * y) / 19.0)
    blue = 128 + 80 * np.cos(np.hypot(x - width / 3, y - height / 2) / 11.0)
    return np.stack([red, green, blue], axis=-1)


def tv_frames(num_frames: int, height: int = HEIGHT, width: int = WIDTH, seed: int = 0):
    """
    Yields `num_frames` uint8 (height, width, 3) frames: a picture panning one way while its blue channel drifts the
    other way (motion the encoder cannot fully predict, as people moving on screen), with film grain.
    """
    rng = np.random.default_rng(seed)
    travel = 2 * PAN_SPEED * num_frames
    picture = _picture(height, width + travel)
    for index in range(num_frames):
        pan, drift = PAN_SPEED * index, travel - 2 * PAN_SPEED * index
        frame = picture[:, pan : pan + width].copy()
        frame[..., 2] = picture[:, drift : drift + width, 2]
        grain = 3 * rng.standard_normal((height, width, 1), dtype=np.float32)
        yield np.clip(frame + grain, 0, 255).astype(np.uint8)


def speech_like(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """A float32 mono waveform: a 140 Hz voice with harmonics, syllable-rate (4 Hz) loudness and a little noise."""
    time = np.arange(round(seconds * sample_rate)) / sample_rate
    voice = sum(np.sin(2 * np.pi * 140 * harmonic * time) / harmonic for harmonic in range(1, 6))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * time)
    noise = np.random.default_rng(seed).normal(0, 0.01, size=time.shape)
    return (0.2 * voice * envelope + noise).astype(np.float32)


def write_tv_clip(
    path: str | os.PathLike, seconds: float, fps: int = FPS, height: int = HEIGHT, width: int = WIDTH
) -> str:
    """
    Writes a TV-like mp4 clip: H.264 video of `seconds` at `fps` and 48 kHz stereo AAC of the same length.

    Returns:
        `str`: the path written.
    """
    path = os.fspath(path)
    with av.open(path, mode="w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps))
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "veryfast", "crf": "23"}
        audio = container.add_stream("aac", rate=SAMPLE_RATE, layout="stereo")
        for frame in tv_frames(round(seconds * fps), height, width):
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())

        stereo = np.repeat(speech_like(seconds)[None], 2, axis=0)
        for start in range(0, stereo.shape[1], AAC_FRAME_SIZE):
            samples = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(stereo[:, start : start + AAC_FRAME_SIZE]), format="fltp", layout="stereo"
            )
            samples.sample_rate, samples.pts = SAMPLE_RATE, start
            container.mux(audio.encode(samples))
        container.mux(audio.encode())
    return path


def bitrate_mbps(path: str, seconds: float) -> float:
    """Average bit rate of a file of `seconds`, in Mbit/s."""
    return os.path.getsize(path) * 8 / seconds / 1e6
