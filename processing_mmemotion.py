# Copyright 2025 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
Processor class for MMEmotion: a tokenizer plus VideoLLaMA (v1) video and ImageBind audio preprocessing.

`MMEmotionProcessor(text=..., videos=..., audio=...)` returns a `BatchFeature` with `input_ids`, `attention_mask`,
`text_mask`, `pixel_values_videos`, `video_frame_mask`, `video_mask`, `audio_values`, `audio_clip_mask`, `audio_mask`
(only those of the modalities passed).

Bad input never ends in a decoder traceback: it raises one of the errors below, or masks the item's modality and
logs a warning:

| input | result |
|---|---|
| video or audio path that does not exist | `FileNotFoundError` naming the path |
| corrupt file, no video stream, zero frames | item's video masked (`video_mask` 0), warning naming the file |
| audio taken from such a file that cannot be decoded | item's audio masked (`audio_mask` 0), warning naming the file |
| file without an audio stream | audio masked, warning naming the file |
| audio shorter than one 25 ms analysis window | audio masked, warning naming the file or the array |
| clip shorter than `num_frames` frames | its real frames only, `video_frame_mask` marks them |
| clip longer than 30 s | still `num_frames` frames and `num_clips` audio clips |
| empty or whitespace-only transcript, or `None` | `text_mask` 0, warning naming the item index |
| `None` as a video / audio item | that modality masked for the item, no warning |
| no `videos` / `audio` at all (text only) | no keys for them; the model treats the branch as absent, one warning |
| `text` / `videos` / `audio` lists of different lengths | `ValueError` |
| `conversations=`: not a list of non-empty lists of utterance dicts with a `"text"`, unknown keys, a speaker on some utterances only | `ValueError` naming the conversation and utterance |
| frames not shaped (T, H, W, 3), waveform not 1-D | `ValueError` |
| `decoder="decord"` / `"pyav"` not installed | `ImportError` |
"""

import math
import os
import warnings
from fractions import Fraction

import numpy as np
import torch

from transformers.audio_utils import mel_filter_bank, window_function
from transformers.feature_extraction_utils import BatchFeature, FeatureExtractionMixin
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.processing_utils import ProcessorMixin
from transformers.utils import TensorType, logging

try:  # loaded as remote code (a package made by transformers) or as part of the `mmemotion` package
    from .configuration_mmemotion import MMEmotionConfig
except ImportError:  # imported as a top-level module from the repository root (train.py, tests)
    from configuration_mmemotion import MMEmotionConfig
from transformers.utils.import_utils import (
    is_av_available,
    is_decord_available,
    is_scipy_available,
    is_vision_available,
)


if is_decord_available():
    import decord

if is_av_available():
    import av

if is_scipy_available():
    from scipy.signal import resample_poly

if is_vision_available():
    import PIL.Image


logger = logging.get_logger(__name__)

# Kaldi filterbank framing used by ImageBind (torchaudio.compliance.kaldi.fbank defaults).
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
PREEMPHASIS = 0.97
# Kaldi floors the mel energies at float32 epsilon before the log.
KALDI_MEL_FLOOR = float(np.finfo(np.float32).eps)

DECODERS = ("auto", "decord", "pyav")
# The swscale filter decord resizes with (its FFmpeg's `scale` filter default), asked of PyAV so both decoders agree.
DECODER_INTERPOLATION = "BILINEAR"


class MissingStreamError(Exception):
    """A file was read but has no stream of the wanted kind (e.g. a clip without sound)."""


def _check_decoder(decoder: str) -> None:
    if decoder not in DECODERS:
        raise ValueError(f"`decoder` must be one of {DECODERS}, got {decoder!r}")


def _decoders_to_try(decoder: str) -> list[str]:
    """The decoders to try in order: decord first (it seeks to the sampled frames), PyAV as the fallback."""
    available = {"decord": is_decord_available(), "pyav": is_av_available()}
    if decoder != "auto":
        if not available[decoder]:
            raise ImportError(f"decoder={decoder!r} was requested but {decoder} is not installed.")
        return [decoder]
    decoders = [name for name in ("decord", "pyav") if available[name]]
    if not decoders:
        raise ImportError("Decoding media files needs `decord` or `av` (PyAV): `pip install av`.")
    return decoders


def _is_path(item) -> bool:
    return isinstance(item, (str, os.PathLike))


def _pad_items(items: list, default_length: int, item_shape: tuple) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Stacks per-item arrays of shape (N_i, *item_shape) (or `None` for an absent item) into one zero-padded batch.

    Returns:
        `(values, length_mask, item_mask)`: float32 (B, N, *item_shape) with N the longest item (`default_length`
        when every item is absent, so that shapes never collapse to zero), int64 (B, N) marking the real entries,
        int64 (B,) marking the present items.
    """
    lengths = [0 if item is None else len(item) for item in items]
    max_length = max(lengths, default=0) or default_length
    values = np.zeros((len(items), max_length, *item_shape), dtype=np.float32)
    length_mask = np.zeros((len(items), max_length), dtype=np.int64)
    for index, (item, length) in enumerate(zip(items, lengths)):
        values[index, :length] = item
        length_mask[index, :length] = 1
    item_mask = np.array([item is not None for item in items], dtype=np.int64)
    return values, length_mask, item_mask


class _MediaFeatureExtractor(FeatureExtractionMixin):
    """
    What the video and audio feature extractors share: reading one stream of a media file with decord, PyAV as the
    fallback. Not transformers' `load_video` / `load_audio`: their readers cannot have the decoder scale the frames,
    fail on a file without the stream or on a header without a frame count, and read mp4 audio only with torchcodec.
    """

    # The stream read ("video" or "audio"), as the warnings name it; subclasses read it in `_read_with_decord(path)`
    # and `_read_with_pyav(path)`, raising `MissingStreamError` when the file has none.
    modality: str

    def _read_file(self, path: str | os.PathLike) -> np.ndarray | None:
        """
        Reads the `modality` stream of the file `path`, trying each decoder in turn until one succeeds.

        Returns:
            The decoded array, or `None` after a warning naming the file when it has no such stream or no decoder can
            read it.

        Raises:
            `FileNotFoundError`: when `path` does not exist.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No such media file: {path!r}")
        readers = {"decord": self._read_with_decord, "pyav": self._read_with_pyav}
        errors = []
        for name in _decoders_to_try(self.decoder):
            try:
                return readers[name](path)
            except MissingStreamError:
                # A fact about the file: no other decoder will find the stream either.
                logger.warning(f"{path!r} has no {self.modality} stream; its {self.modality} is masked.")
                return None
            except Exception as error:  # decoders raise many library-specific types; report them all the same way
                message = str(error).strip().splitlines()
                errors.append(f"{name}: {message[0] if message else type(error).__name__}")
                logger.info(f"{name} could not read {path!r}: {error}")
        logger.warning(
            f"Could not decode the {self.modality} of {path!r} ({'; '.join(errors)}); its {self.modality} is masked."
        )
        return None


class MMEmotionVideoFeatureExtractor(_MediaFeatureExtractor):
    r"""
    Constructs a VideoLLaMA (v1) video feature extractor.

    Samples `num_frames` frames uniformly (`np.arange(0, vlen, vlen / n).astype(int)` with `n = min(num_frames,
    vlen)`, as VideoLLaMA does), resizes them straight to `size` (no crop, aspect ratio not kept), rescales to [0, 1]
    and normalises with OpenAI CLIP's mean and standard deviation (those of BLIP-2's EVA ViT).

    By default the decoder's own scaler resizes, as the VideoLLaMA loader does (`decord.VideoReader(path, width=224,
    height=224)`, then normalisation only): FFmpeg's swscale with bilinear filtering (the `scale` filter's default in
    the FFmpeg decord bundles; PyAV is asked for the same). It is also the fast path: only small RGB frames are made.
    Frames given as arrays are resized by torch (bicubic).

    Args:
        num_frames (`int`, *optional*, defaults to 8):
            Number of frames sampled per clip. Clips with fewer frames give all their frames.
        size (`dict[str, int]`, *optional*, defaults to `{"height": 224, "width": 224}`):
            Output frame size.
        rescale_factor (`float`, *optional*, defaults to `1 / 255`):
            Factor applied to the pixel values before normalisation.
        image_mean (`list[float]`, *optional*, defaults to `OPENAI_CLIP_MEAN`):
            Per-channel mean subtracted after rescaling.
        image_std (`list[float]`, *optional*, defaults to `OPENAI_CLIP_STD`):
            Per-channel standard deviation divided by after rescaling.
        decoder (`str`, *optional*, defaults to `"auto"`):
            `"decord"`, `"pyav"`, or `"auto"` (decord when installed, PyAV when decord is missing or fails on a file).
        resize_in_decoder (`bool`, *optional*, defaults to `True`):
            Let the decoder's scaler produce `size` frames (bilinear swscale). `False` decodes frames at their stored
            size and resizes them with torch's bicubic interpolation (pytorchvideo's `ResizeVideo`) instead.
    """

    model_input_names = ["pixel_values_videos", "video_frame_mask", "video_mask"]
    modality = "video"

    def __init__(
        self,
        num_frames: int = 8,
        size: dict[str, int] | None = None,
        rescale_factor: float = 1 / 255,
        image_mean: list[float] | None = None,
        image_std: list[float] | None = None,
        decoder: str = "auto",
        resize_in_decoder: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_decoder(decoder)
        self.num_frames = num_frames
        self.size = dict(size) if size is not None else {"height": 224, "width": 224}
        self.rescale_factor = rescale_factor
        self.image_mean = list(image_mean) if image_mean is not None else list(OPENAI_CLIP_MEAN)
        self.image_std = list(image_std) if image_std is not None else list(OPENAI_CLIP_STD)
        self.decoder = decoder
        self.resize_in_decoder = resize_in_decoder

    def sample_frame_indices(self, num_total_frames: int) -> np.ndarray:
        """
        The indices of the frames kept out of `num_total_frames`, spread uniformly as VideoLLaMA does. Not transformers'
        `default_sample_indices_fn`: its integer steps pick other frames than VideoLLaMA's float ones for some counts
        (frame 61 instead of 60 when sampling 14 of 122).
        """
        num_sampled = min(self.num_frames, num_total_frames)
        if num_sampled == 0:
            return np.zeros(0, dtype=np.int64)
        # Float steps can give one index too many for some lengths; keep the first `num_sampled`.
        return np.arange(0, num_total_frames, num_total_frames / num_sampled).astype(int)[:num_sampled]

    def _decoder_size(self) -> tuple[int, int] | tuple[None, None]:
        """(width, height) the decoder should scale to, or (None, None) to keep the stored size."""
        if self.resize_in_decoder:
            return self.size["width"], self.size["height"]
        return None, None

    def _read_with_decord(self, path: str) -> np.ndarray:
        width, height = self._decoder_size()
        reader = decord.VideoReader(path, ctx=decord.cpu(0), width=width or -1, height=height or -1)
        indices = self.sample_frame_indices(len(reader))
        if len(indices) == 0:
            return np.zeros((0, 1, 1, 3), dtype=np.uint8)
        # Only the sampled frames are decoded (decord seeks to key frames).
        return reader.get_batch(indices.tolist()).asnumpy()

    def _read_with_pyav(self, path: str, num_total_frames: int | None = None) -> np.ndarray:
        width, height = self._decoder_size()
        with av.open(path) as container:
            if not container.streams.video:
                raise MissingStreamError("no video stream")
            stream = container.streams.video[0]
            if num_total_frames is None:
                # The header count is 0 for some containers: count the packets then.
                num_total_frames = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
                container.seek(0)
            wanted = set(self.sample_frame_indices(num_total_frames).tolist())
            stream.thread_type = "AUTO"
            frames = []
            num_decoded = 0
            for num_decoded, frame in enumerate(container.decode(stream), start=1):
                if num_decoded - 1 in wanted:
                    frames.append(
                        frame.to_ndarray(format="rgb24", width=width, height=height, interpolation=DECODER_INTERPOLATION)
                    )
                if len(frames) == len(wanted):
                    break
        if len(frames) < len(wanted):
            # The header over-counted the frames: sample again over the frames that exist.
            return self._read_with_pyav(path, num_total_frames=num_decoded)
        return np.stack(frames) if frames else np.zeros((0, 1, 1, 3), dtype=np.uint8)

    def fetch_frames(self, video) -> np.ndarray | None:
        """
        Returns the sampled frames of one video as uint8 (T, H, W, 3), or `None` when the video is absent or unusable.

        Args:
            video (`str`, `os.PathLike`, `np.ndarray`, `list[PIL.Image.Image]`, `list[np.ndarray]` or `None`):
                A video file, or already decoded frames of shape (T, H, W, 3) (all frames: they are sampled here).

        Raises:
            `FileNotFoundError`: when `video` is a path that does not exist.
        """
        if video is None:
            return None
        if _is_path(video):
            frames = self._read_file(video)
            if frames is not None and len(frames) == 0:
                logger.warning(f"The video of {os.fspath(video)!r} has no frames; its video is masked.")
                return None
            return frames
        frames = self._frames_from_array(video)
        if len(frames) == 0:
            logger.warning("A video given as an array has no frames; its video is masked.")
            return None
        return frames[self.sample_frame_indices(len(frames))]

    @staticmethod
    def _frames_from_array(video) -> np.ndarray:
        if isinstance(video, (list, tuple)):
            if is_vision_available():
                video = [
                    np.asarray(frame.convert("RGB")) if isinstance(frame, PIL.Image.Image) else frame
                    for frame in video
                ]
            video = np.stack(video) if video else np.zeros((0, 1, 1, 3), dtype=np.uint8)
        frames = np.asarray(video)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"Decoded videos must be RGB frames of shape (T, H, W, 3), got shape {frames.shape}.")
        return frames

    def preprocess_frames(self, frames: np.ndarray) -> np.ndarray:
        """Resizes, rescales and normalises uint8 (T, H, W, 3) frames into float32 (T, 3, height, width)."""
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
        target = (self.size["height"], self.size["width"])
        if tuple(pixels.shape[-2:]) != target:
            pixels = torch.nn.functional.interpolate(pixels, size=target, mode="bicubic", align_corners=False)
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1)
        std = torch.tensor(self.image_std).view(1, 3, 1, 1)
        return ((pixels * self.rescale_factor - mean) / std).numpy()

    def extract(self, video) -> np.ndarray | None:
        """Float32 (T, 3, height, width) model frames of one video, or `None` when it is absent or unusable."""
        frames = self.fetch_frames(video)
        return None if frames is None else self.preprocess_frames(frames)

    def pad(self, items: list[np.ndarray | None]) -> dict[str, np.ndarray]:
        """
        Batches outputs of [`~MMEmotionVideoFeatureExtractor.extract`]: zero-pads to the longest clip.

        Returns:
            `dict` with `pixel_values_videos` (B, T, 3, H, W), `video_frame_mask` (B, T) and `video_mask` (B,).
        """
        item_shape = (3, self.size["height"], self.size["width"])
        values, frame_mask, video_mask = _pad_items(items, self.num_frames, item_shape)
        return {"pixel_values_videos": values, "video_frame_mask": frame_mask, "video_mask": video_mask}

    def __call__(self, videos, return_tensors: str | TensorType | None = None) -> BatchFeature:
        """
        Prepares one video or a batch of videos for the model.

        Args:
            videos (`str`, `os.PathLike`, `np.ndarray`, `list` of those, or `None` items):
                Video files or decoded frames; see [`~MMEmotionVideoFeatureExtractor.fetch_frames`].
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `None` or `"np"` for numpy arrays.

        Returns:
            [`BatchFeature`] with `pixel_values_videos`, `video_frame_mask` and `video_mask`.
        """
        videos = make_video_batch(videos)
        return BatchFeature(self.pad([self.extract(video) for video in videos]), tensor_type=return_tensors)


class MMEmotionAudioFeatureExtractor(_MediaFeatureExtractor):
    r"""
    Constructs an ImageBind (VideoLLaMA audio branch) feature extractor.

    The mono 16 kHz waveform is cut into `num_clips` clips of `clip_duration` seconds, placed like pytorchvideo's
    `ConstantClipsPerVideoSampler` (spread evenly over the audio; audio shorter than a clip gives the whole audio in
    every clip). Each clip minus its mean gives a Kaldi filterbank (Hanning window of 25 ms, 10 ms shift,
    `num_mel_bins` bins, no dither, no energy), right-padded with zeros or cut to `target_length` frames, then
    normalised with `mean` and `std`: one (1, num_mel_bins, target_length) image per clip. Each clip's image is the
    transposed output of transformers' `ASTFeatureExtractor(num_mel_bins=num_mel_bins, max_length=target_length,
    mean=mean, std=std / 2)` (AST divides by twice its `std`), computed faster (see `log_mel_filterbank`).

    Args:
        sampling_rate (`int`, *optional*, defaults to 16000):
            Sampling rate of the model; other waveforms are resampled to it.
        num_clips (`int`, *optional*, defaults to 3):
            Number of clips per item.
        clip_duration (`float`, *optional*, defaults to 2.0):
            Clip length in seconds.
        num_mel_bins (`int`, *optional*, defaults to 128):
            Number of mel filters.
        target_length (`int`, *optional*, defaults to 204):
            Number of filterbank frames per clip after padding / cutting.
        mean (`float`, *optional*, defaults to -4.268):
            Mean subtracted from the log-mel values (ImageBind's AudioSet statistics).
        std (`float`, *optional*, defaults to 9.138):
            Standard deviation the log-mel values are divided by.
        decoder (`str`, *optional*, defaults to `"auto"`):
            `"decord"`, `"pyav"`, or `"auto"` (decord when installed, PyAV when decord is missing or fails on a file).
    """

    model_input_names = ["audio_values", "audio_clip_mask", "audio_mask"]
    modality = "audio"

    def __init__(
        self,
        sampling_rate: int = 16000,
        num_clips: int = 3,
        clip_duration: float = 2.0,
        num_mel_bins: int = 128,
        target_length: int = 204,
        mean: float = -4.268,
        std: float = 9.138,
        decoder: str = "auto",
        **kwargs,
    ):
        super().__init__(**kwargs)
        _check_decoder(decoder)
        self.sampling_rate = sampling_rate
        self.num_clips = num_clips
        self.clip_duration = clip_duration
        self.num_mel_bins = num_mel_bins
        self.target_length = target_length
        self.mean = mean
        self.std = std
        self.decoder = decoder
        # Kaldi frames: 25 ms Hanning window (symmetric), FFT size rounded up to a power of two.
        frame_length = int(sampling_rate * FRAME_LENGTH_MS / 1000)
        self.window = window_function(frame_length, "hann", periodic=False)
        with warnings.catch_warnings():
            # 128 Kaldi filters over 257 FFT bins leave the lowest filters empty, in torchaudio too: expected.
            warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
            self.mel_filters = mel_filter_bank(
                num_frequency_bins=2 ** math.ceil(math.log2(frame_length)) // 2 + 1,
                num_mel_filters=num_mel_bins,
                min_frequency=20,
                max_frequency=sampling_rate // 2,
                sampling_rate=sampling_rate,
                norm=None,
                mel_scale="kaldi",
                triangularize_in_mel_space=True,
            )

    def _read_with_decord(self, path: str) -> np.ndarray:
        reader = decord.AudioReader(path, ctx=decord.cpu(0), sample_rate=self.sampling_rate, mono=True)
        return reader[:].asnumpy().reshape(-1)

    def _read_with_pyav(self, path: str) -> np.ndarray:
        with av.open(path) as container:
            if not container.streams.audio:
                raise MissingStreamError("no audio stream")
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sampling_rate)
            chunks = []
            # `None` flushes the resampler after the last decoded frame.
            for frame in [*container.decode(container.streams.audio[0]), None]:
                chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in resampler.resample(frame))
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.float32)

    def load_waveform(self, audio, sampling_rate: int | None = None) -> np.ndarray | None:
        """
        Returns one item's mono waveform at `self.sampling_rate` as float32, or `None` when the audio is absent or
        unusable.

        Args:
            audio (`str`, `os.PathLike`, `np.ndarray`, `torch.Tensor` or `None`):
                An audio or video file (its first audio stream, mixed down to mono), or a 1-D float waveform.
            sampling_rate (`int`, *optional*):
                Sampling rate of a waveform array; it is resampled when it differs from `self.sampling_rate`.

        Raises:
            `FileNotFoundError`: when `audio` is a path that does not exist.
        """
        if audio is None:
            return None
        if _is_path(audio):
            waveform, name = self._read_file(audio), repr(os.fspath(audio))
            if waveform is None:
                return None
        else:
            waveform = self._resample(self._waveform_from_array(audio), sampling_rate)
            name = "a waveform array"
        if len(waveform) < len(self.window):
            logger.warning(
                f"The audio of {name} is shorter than one {FRAME_LENGTH_MS:g} ms analysis window; its audio is masked."
            )
            return None
        return waveform.astype(np.float32, copy=False)

    @staticmethod
    def _waveform_from_array(audio) -> np.ndarray:
        waveform = np.asarray(audio, dtype=np.float32)
        if waveform.ndim != 1:
            raise ValueError(f"Waveforms must be mono 1-D arrays, got shape {waveform.shape}.")
        return waveform

    def _resample(self, waveform: np.ndarray, sampling_rate: int | None) -> np.ndarray:
        if sampling_rate is None:
            logger.warning_once(
                f"No `sampling_rate` given with waveform arrays: assuming {self.sampling_rate} Hz. Pass "
                "`sampling_rate` to avoid silent errors."
            )
            return waveform
        if sampling_rate == self.sampling_rate:
            return waveform
        if not is_scipy_available():
            raise ImportError("Resampling a waveform needs scipy: `pip install scipy`.")
        divisor = math.gcd(int(sampling_rate), self.sampling_rate)
        return resample_poly(waveform, self.sampling_rate // divisor, int(sampling_rate) // divisor).astype(np.float32)

    def clip_boundaries(self, num_samples: int) -> list[tuple[int, int]]:
        """
        Sample ranges of the clips of a waveform of `num_samples` samples, computed exactly like ImageBind's
        `get_clip_timepoints` with pytorchvideo's `ConstantClipsPerVideoSampler` (fractions, truncated to samples).
        """
        clip_duration = Fraction(self.clip_duration)
        duration = num_samples / self.sampling_rate
        max_start = Fraction(max(duration - clip_duration, 0))
        step = Fraction(max_start, max(self.num_clips - 1, 1))
        boundaries = []
        for index in range(self.num_clips):
            start = step * index
            boundaries.append((int(start * self.sampling_rate), int((start + clip_duration) * self.sampling_rate)))
        return boundaries

    def log_mel_filterbank(self, clip: np.ndarray) -> np.ndarray:
        """
        Kaldi log-mel filterbank of one clip (as `torchaudio.compliance.kaldi.fbank` with ImageBind's settings),
        float32 (num_mel_bins, num_frames). The clip must hold at least one 25 ms window.

        Hand-written because `ASTFeatureExtractor` computes it with `spectrogram`, which loops over the frames in
        Python: this is the same arithmetic (float64 frames, complex64 spectrum) on all the frames at once.
        """
        frame_length = len(self.window)
        hop_length = int(self.sampling_rate * FRAME_SHIFT_MS / 1000)
        clip = clip.astype(np.float64, copy=False)
        frames = np.lib.stride_tricks.sliding_window_view(clip - clip.mean(), frame_length)[::hop_length]
        frames = frames - frames.mean(axis=1, keepdims=True)
        # Kaldi's pre-emphasis: x[i] - 0.97 x[i - 1], the first sample taken against itself.
        frames = np.concatenate(
            [frames[:, :1] * (1 - PREEMPHASIS), frames[:, 1:] - PREEMPHASIS * frames[:, :-1]], axis=1
        )
        spectrum = np.fft.rfft(frames * self.window, n=2 ** math.ceil(math.log2(frame_length))).astype(np.complex64)
        power = np.abs(spectrum, dtype=np.float64) ** 2
        return np.log(np.maximum(KALDI_MEL_FLOOR, self._mel_energies(power))).astype(np.float32)

    def _mel_energies(self, power: np.ndarray) -> np.ndarray:
        """
        `mel_filters.T @ power.T` for power spectra of shape (num_frames, num_frequency_bins), summed over the non-zero
        weights of each filter (two per frequency bin) rather than by a BLAS product: a BLAS thread pool stalls for
        milliseconds whenever the other cores are busy, as they are with DataLoader workers.
        """
        filters = self.mel_filters.T
        mel_bins, frequency_bins = np.nonzero(filters)
        filled, starts = np.unique(mel_bins, return_index=True)
        weighted = power[:, frequency_bins] * filters[mel_bins, frequency_bins]
        energies = np.zeros((filters.shape[0], len(power)))
        energies[filled] = np.add.reduceat(weighted, starts, axis=1).T
        return energies

    def extract_clips(self, waveform: np.ndarray) -> np.ndarray:
        """Normalised filterbank clips of a mono waveform, float32 (num_clips, 1, num_mel_bins, target_length)."""
        clips = np.zeros((self.num_clips, 1, self.num_mel_bins, self.target_length), dtype=np.float32)
        for index, (start, end) in enumerate(self.clip_boundaries(len(waveform))):
            fbank = self.log_mel_filterbank(waveform[start:end].astype(np.float64))[:, : self.target_length]
            # Right-padding with zeros happens before the normalisation, as in ImageBind.
            clips[index, 0, :, : fbank.shape[1]] = fbank
        return (clips - self.mean) / self.std

    def extract(self, audio, sampling_rate: int | None = None) -> np.ndarray | None:
        """Float32 (num_clips, 1, num_mel_bins, target_length) clips of one item, or `None` when absent or unusable."""
        waveform = self.load_waveform(audio, sampling_rate=sampling_rate)
        return None if waveform is None else self.extract_clips(waveform)

    def pad(self, items: list[np.ndarray | None]) -> dict[str, np.ndarray]:
        """
        Batches outputs of [`~MMEmotionAudioFeatureExtractor.extract`]: zero-pads to the largest clip count.

        Returns:
            `dict` with `audio_values` (B, S, 1, num_mel_bins, target_length), `audio_clip_mask` (B, S) and
            `audio_mask` (B,).
        """
        item_shape = (1, self.num_mel_bins, self.target_length)
        values, clip_mask, audio_mask = _pad_items(items, self.num_clips, item_shape)
        return {"audio_values": values, "audio_clip_mask": clip_mask, "audio_mask": audio_mask}

    def __call__(
        self,
        audio,
        sampling_rate: int | None = None,
        return_tensors: str | TensorType | None = None,
    ) -> BatchFeature:
        """
        Prepares one audio item or a batch of them for the model.

        Args:
            audio (`str`, `os.PathLike`, `np.ndarray`, `list` of those, or `None` items):
                Audio / video files or 1-D waveforms; see [`~MMEmotionAudioFeatureExtractor.load_waveform`].
            sampling_rate (`int`, *optional*):
                Sampling rate of the waveform arrays.
            return_tensors (`str` or [`~utils.TensorType`], *optional*):
                `"pt"` for torch tensors, `None` or `"np"` for numpy arrays.

        Returns:
            [`BatchFeature`] with `audio_values`, `audio_clip_mask` and `audio_mask`.
        """
        audio = make_audio_batch(audio)
        items = [self.extract(item, sampling_rate=sampling_rate) for item in audio]
        return BatchFeature(self.pad(items), tensor_type=return_tensors)


def make_video_batch(videos) -> list:
    """
    Wraps a single video (a path, a (T, H, W, 3) array or a list of frames) into a batch of one. Not transformers'
    `make_batched_videos`, which drops `None` items (a masked video) and `os.PathLike` paths.
    """
    if _is_path(videos) or (hasattr(videos, "ndim") and videos.ndim == 4):
        return [videos]
    videos = list(videos)
    first = next((video for video in videos if video is not None), None)
    # A list of frames (3-D arrays or images) is one video, not a batch.
    if first is not None and not _is_path(first) and not isinstance(first, (list, tuple)) and np.ndim(first) == 3:
        return [videos]
    return videos


def make_audio_batch(audio) -> list:
    """
    Wraps a single audio item (a path or a 1-D waveform) into a batch of one. Not transformers' `make_list_of_audio`,
    which rejects paths and `None` items (a masked audio).
    """
    if _is_path(audio) or (hasattr(audio, "ndim") and audio.ndim == 1):
        return [audio]
    return list(audio)


def pad_conversations(conversations, num_utterances: int | None = None, pad_value: float = 0) -> torch.Tensor:
    """Per-utterance values of each conversation -> one (num_conversations, num_utterances, *largest shape) tensor.

    Each conversation is a list of per-utterance items (arrays, tensors, lists or numbers, possibly of different
    shapes) or an array with a leading utterance dimension. Every dimension is padded with `pad_value`: missing
    utterances (up to `num_utterances`, by default the longest conversation) and the inner ones (tokens, frames, clips)
    up to the largest in the batch.
    """
    conversations = [
        [torch.as_tensor(item) for item in conversation]
        if isinstance(conversation, (list, tuple))
        else list(torch.as_tensor(conversation).unbind(0))
        for conversation in conversations
    ]
    num_utterances = max(len(conversation) for conversation in conversations) if num_utterances is None else num_utterances
    items = [item for conversation in conversations for item in conversation]
    shape = [max(item.shape[dim] for item in items) for dim in range(items[0].ndim)]
    padded = items[0].new_full((len(conversations), num_utterances, *shape), pad_value)
    for conversation_index, conversation in enumerate(conversations):
        for utterance_index, item in enumerate(conversation):
            padded[(conversation_index, utterance_index, *(slice(0, size) for size in item.shape))] = item
    return padded


def speaker_ids(speakers: list[str]) -> list[int]:
    """Per-conversation speaker numbers (the model's `speaker_ids`), in order of first appearance."""
    index: dict[str, int] = {}
    return [index.setdefault(speaker, len(index)) for speaker in speakers]


def _load_mmemotion_config(pretrained_model_name_or_path, **kwargs):
    """The folder's `MMEmotionConfig`, or `None` for a processor-only folder (no `config.json`)."""
    hub_kwargs = {key: kwargs[key] for key in ("cache_dir", "revision", "token", "local_files_only", "subfolder") if key in kwargs}
    try:
        return MMEmotionConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
    except (OSError, ValueError):  # no config.json, or one of another model type
        return None


class MMEmotionProcessor(ProcessorMixin):
    r"""
    Constructs an MMEmotion processor: a tokenizer for the transcripts, [`MMEmotionVideoFeatureExtractor`] for the
    clips and [`MMEmotionAudioFeatureExtractor`] for their sound.

    Args:
        tokenizer ([`PreTrainedTokenizerBase`]):
            Tokenizer of the text encoder.
        video_feature_extractor ([`MMEmotionVideoFeatureExtractor`], *optional*):
            Video preprocessing; the default one when not given.
        audio_feature_extractor ([`MMEmotionAudioFeatureExtractor`], *optional*):
            Audio preprocessing; the default one when not given.
        use_audio_from_video (`bool`, *optional*, defaults to `True`):
            When `audio` is not passed, take each video file's audio track.
        context_past (`int`, *optional*, defaults to 0):
            Utterances before each target that [`~MMEmotionProcessor.encode_conversation`] puts in its text input
            (the model's `config.text_context_past`).
        context_future (`int`, *optional*, defaults to 0):
            Utterances after each target put in its text input (`config.text_context_future`).
        context_speakers (`bool`, *optional*, defaults to `True`):
            Prefix every utterance of a context window with its speaker (`Ross: ...`).
    """

    def __init__(
        self,
        tokenizer=None,
        video_feature_extractor=None,
        audio_feature_extractor=None,
        use_audio_from_video: bool = True,
        context_past: int = 0,
        context_future: int = 0,
        context_speakers: bool = True,
        **kwargs,
    ):
        if context_past < 0 or context_future < 0:
            raise ValueError(f"`context_past` and `context_future` must be >= 0, got {context_past} and {context_future}.")
        self.use_audio_from_video = use_audio_from_video
        self.context_past = context_past
        self.context_future = context_future
        self.context_speakers = context_speakers
        super().__init__(
            tokenizer=tokenizer,
            video_feature_extractor=(
                MMEmotionVideoFeatureExtractor() if video_feature_extractor is None else video_feature_extractor
            ),
            audio_feature_extractor=(
                MMEmotionAudioFeatureExtractor() if audio_feature_extractor is None else audio_feature_extractor
            ),
            **kwargs,
        )

    @classmethod
    def _load_sub_processors(cls, pretrained_model_name_or_path, processor_dict, **kwargs) -> dict:
        """The tokenizer and the two extractors of a saved processor, by attribute name. The extractors are not
        registered in transformers' auto mappings: they are built from their nested `processor_config.json` entries
        with this module's classes."""
        if "config" not in kwargs:
            # AutoTokenizer reads the model config first; the folder's `auto_map` would make it ask whether to trust
            # remote code even though the tokenizer is a stock one. Hand it the config through this module's class.
            kwargs["config"] = _load_mmemotion_config(pretrained_model_name_or_path, **kwargs)
        sub_processors = {"tokenizer": cls._load_tokenizer_from_pretrained("tokenizer", pretrained_model_name_or_path, **kwargs)}
        for name, extractor_class in (
            ("video_feature_extractor", MMEmotionVideoFeatureExtractor),
            ("audio_feature_extractor", MMEmotionAudioFeatureExtractor),
        ):
            config = dict(processor_dict.get(name) or {})
            # Bookkeeping entries written by `to_dict` / `save_pretrained`, not constructor arguments.
            for key in ("feature_extractor_type", "auto_map"):
                config.pop(key, None)
            sub_processors[name] = extractor_class(**config)
        return sub_processors

    # `ProcessorMixin.from_pretrained` asks for the sub-processors through one of two hooks, depending on the
    # transformers release: `_get_arguments_from_pretrained` (positional arguments; 5.21, the floor) or
    # `_resolve_subprocessors` (instances in the processor dict; 5.25). Both serve `_load_sub_processors`.
    @classmethod
    def _get_arguments_from_pretrained(cls, pretrained_model_name_or_path, processor_dict=None, **kwargs):
        return list(cls._load_sub_processors(pretrained_model_name_or_path, processor_dict or {}, **kwargs).values())

    @classmethod
    def _resolve_subprocessors(cls, pretrained_model_name_or_path, processor_dict, **kwargs):
        processor_dict = {**processor_dict, **cls._load_sub_processors(pretrained_model_name_or_path, processor_dict, **kwargs)}
        # The Hub arguments were for loading; what is left goes to `from_dict` (which ignores unknown keys).
        kwargs.pop("return_unused_kwargs", None)
        return processor_dict, kwargs

    @property
    def model_input_names(self) -> list[str]:
        return (
            ["input_ids", "attention_mask", "text_mask"]
            + self.video_feature_extractor.model_input_names
            + self.audio_feature_extractor.model_input_names
        )

    def __call__(
        self,
        text: str | list[str | None] | None = None,
        videos=None,
        audio=None,
        conversations: list[list[dict]] | None = None,
        sampling_rate: int | None = None,
        use_audio_from_video: bool | None = None,
        return_tensors: str | TensorType | None = TensorType.PYTORCH,
        **kwargs,
    ) -> BatchFeature:
        """
        Prepares a batch of utterances (transcript, clip, sound) for the model.

        Args:
            text (`str` or `list[str]`, *optional*):
                Transcripts. Empty or whitespace-only ones (or `None`) get `text_mask` 0.
            videos (`str`, `os.PathLike`, `np.ndarray`, or a list of those / `None`, *optional*):
                mp4 paths or decoded uint8 (T, H, W, 3) frames, one per item.
            audio (`str`, `os.PathLike`, `np.ndarray`, or a list of those / `None`, *optional*):
                Audio / video files or 1-D float waveforms, one per item.
            conversations (`list[list[dict]]`, *optional*):
                In place of `text` / `videos` / `audio`: conversations for `MMEmotionForEmotionCauseExtraction`, each a
                list of utterance dicts `{"text", "speaker", "video"?, "audio"?}` (`video` and `audio` as above, `None`
                or left out when the utterance has none). See `conversations_to_inputs`.
            sampling_rate (`int`, *optional*):
                Sampling rate of waveform arrays in `audio`.
            use_audio_from_video (`bool`, *optional*):
                Overrides `self.use_audio_from_video` for this call: when `audio` is `None`, read the audio of the
                video files (items given as arrays get no audio).
            return_tensors (`str` or [`~utils.TensorType`], *optional*, defaults to `"pt"`):
                `"pt"` for torch tensors, `"np"` for numpy arrays.
            **kwargs:
                Passed to the tokenizer (`padding` defaults to `True`, `truncation` to `True`; `max_length`, ...).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `text_mask` (text); `pixel_values_videos`,
            `video_frame_mask`, `video_mask` (videos); `audio_values`, `audio_clip_mask`, `audio_mask` (audio). Masks
            are int64.
        """
        if conversations is not None:
            if text is not None or videos is not None or audio is not None:
                raise ValueError("Pass either `conversations` or `text` / `videos` / `audio`, not both.")
            return self.conversations_to_inputs(
                conversations, sampling_rate=sampling_rate, use_audio_from_video=use_audio_from_video,
                return_tensors=return_tensors, **kwargs,
            )
        if text is None and videos is None and audio is None:
            raise ValueError("Pass at least one of `text`, `videos`, `audio` or `conversations`.")
        text = [text] if isinstance(text, str) else text
        videos = make_video_batch(videos) if videos is not None else None
        audio = make_audio_batch(audio) if audio is not None else None
        lengths = {
            name: len(items)
            for name, items in (("text", text), ("videos", videos), ("audio", audio))
            if items is not None
        }
        if len(set(lengths.values())) > 1:
            raise ValueError(f"`text`, `videos` and `audio` must have one entry per item, got lengths {lengths}.")

        data = {}
        if text is not None:
            data.update(self._tokenize(text, return_tensors=return_tensors, **kwargs))
        data.update(self._media(videos, audio, sampling_rate, use_audio_from_video))
        return BatchFeature(data, tensor_type=return_tensors)

    def _media(self, videos: list | None, audio: list | None, sampling_rate: int | None, use_audio_from_video: bool | None) -> dict:
        """The video and audio inputs of a flat batch of items (numpy)."""
        if use_audio_from_video is None:
            use_audio_from_video = self.use_audio_from_video
        if audio is None and videos is not None and use_audio_from_video and any(_is_path(video) for video in videos):
            audio = [video if _is_path(video) else None for video in videos]
        data = {}
        if videos is not None:
            data.update(self.video_feature_extractor(videos))
        if audio is not None:
            data.update(self.audio_feature_extractor(audio, sampling_rate=sampling_rate))
        return data

    def conversations_to_inputs(
        self,
        conversations: list[list[dict]],
        sampling_rate: int | None = None,
        use_audio_from_video: bool | None = None,
        return_tensors: str | TensorType | None = TensorType.PYTORCH,
        **kwargs,
    ) -> BatchFeature:
        """
        Prepares conversations for `MMEmotionForEmotionCauseExtraction`.

        Args:
            conversations (`list[list[dict]]`):
                Each a list of utterances `{"text": str, "speaker": str, "video": path or frames, "audio": path or
                waveform}`; `video` and `audio` are optional (`None` or left out: that utterance has none; without
                any `audio`, the audio of the video files is read as in `__call__`). `speaker` may be left out of every
                utterance of a conversation (one speaker), not of some.
            sampling_rate, use_audio_from_video, return_tensors, **kwargs:
                As in `__call__`.

        Returns:
            [`BatchFeature`] with `utterance_mask` and `speaker_ids` (num_conversations, max_utterances) and the
            utterance-level keys of `__call__`, each with a leading (num_conversations, max_utterances) shape (padding
            utterances are zeros and `input_ids` padding is the tokenizer's pad id).
        """
        if isinstance(conversations, (list, tuple)) and conversations and isinstance(conversations[0], dict):
            raise ValueError("`conversations` must be a list of conversations (lists of utterance dicts); got one conversation.")
        for conversation_index, conversation in enumerate(conversations):
            if not isinstance(conversation, (list, tuple)) or not conversation:
                raise ValueError(f"Conversation {conversation_index} must be a non-empty list of utterance dicts.")
            for utterance_index, utterance in enumerate(conversation):
                if not isinstance(utterance, dict) or "text" not in utterance:
                    raise ValueError(
                        f"Utterance {utterance_index} of conversation {conversation_index} must be a dict with a "
                        f'"text" (and "speaker", "video", "audio"), got {utterance!r}.'
                    )
                unknown = set(utterance) - {"text", "speaker", "video", "audio"}
                if unknown:
                    raise ValueError(
                        f"Utterance {utterance_index} of conversation {conversation_index} has unknown keys "
                        f'{sorted(unknown)}; an utterance has "text", "speaker", "video" and "audio".'
                    )
        lengths = [len(conversation) for conversation in conversations]
        conversation_speakers = self._speakers(conversations)
        data = {
            "utterance_mask": pad_conversations([[1] * length for length in lengths]),
            "speaker_ids": pad_conversations(
                [speaker_ids(speakers) if speakers is not None else [0] * len(conversation)
                 for conversation, speakers in zip(conversations, conversation_speakers)]
            ),
        }
        encodings = [
            self._tokenize_conversation([utterance["text"] for utterance in conversation], speakers, return_tensors="pt", **kwargs)
            for conversation, speakers in zip(conversations, conversation_speakers)
        ]
        for key in encodings[0]:
            pad_value = self.tokenizer.pad_token_id if key == "input_ids" else 0
            data[key] = pad_conversations([encoding[key] for encoding in encodings], pad_value=pad_value)

        utterances = [utterance for conversation in conversations for utterance in conversation]
        videos, audio = ([utterance.get(key) for utterance in utterances] for key in ("video", "audio"))
        media = self._media(
            videos if any(video is not None for video in videos) else None,
            audio if any(item is not None for item in audio) else None,
            sampling_rate,
            use_audio_from_video,
        )
        offsets = np.cumsum([0, *lengths])
        for key, values in media.items():
            data[key] = pad_conversations([values[start:end] for start, end in zip(offsets[:-1], offsets[1:])])
        return BatchFeature({key: value.numpy() for key, value in data.items()}, tensor_type=return_tensors)

    @staticmethod
    def _speakers(conversations: list[list[dict]]) -> list[list[str] | None]:
        """Each conversation's speakers, `None` when no utterance names one."""
        result = []
        for conversation_index, conversation in enumerate(conversations):
            speakers = [utterance.get("speaker") for utterance in conversation]
            if all(speaker is None for speaker in speakers):
                result.append(None)
                continue
            missing = [index for index, speaker in enumerate(speakers) if speaker is None]
            if missing:
                raise ValueError(
                    f"Utterances {missing} of conversation {conversation_index} have no speaker while others do: give "
                    "every utterance a speaker, or none (one speaker)."
                )
            result.append(speakers)
        return result

    def encode_conversation(
        self,
        text: list[str | None],
        speakers: list[str | None] | None = None,
        return_tensors: str | TensorType | None = TensorType.PYTORCH,
        **kwargs,
    ) -> BatchFeature:
        """
        Tokenizes the utterances of one conversation, in order, each read with its context window: the
        `context_past` utterances before it and the `context_future` after it (prefixed by their speakers when
        `context_speakers`), the target between separator tokens. What training with `config.text_context_past` /
        `text_context_future` did, so a checkpoint reads utterances at inference as it was trained.

        Args:
            text (`list[str]`):
                The transcripts of one conversation in order; empty ones (or `None`) get `text_mask` 0 and are left out
                of their neighbours' windows.
            speakers (`list[str]`, *optional*):
                The speaker of each utterance.
            return_tensors (`str` or [`~utils.TensorType`], *optional*, defaults to `"pt"`):
                `"pt"` for torch tensors, `"np"` for numpy arrays, `None` for lists.
            **kwargs:
                Passed to the tokenizer (`padding` defaults to `True`, `truncation` to `True`; `max_length`, ...).

        Returns:
            [`BatchFeature`] with `input_ids`, `attention_mask`, `text_mask`, and with a window `text_target_mask`
            (1 on the tokens of the target utterance, which the model pools). With both sizes 0, exactly the output
            of `processor(text=...)`.
        """
        return BatchFeature(self._tokenize_conversation(text, speakers, return_tensors=return_tensors, **kwargs), tensor_type=return_tensors)

    def _tokenize_conversation(self, texts: list[str | None], speakers: list[str | None] | None, **kwargs) -> dict:
        """
        `_tokenize` for the utterances of one conversation in order, each with its context window (see
        [`~MMEmotionProcessor.encode_conversation`]). The pieces are tokenized separately and assembled as ids, so a
        window longer than `max_length` loses its farthest context first (and the far end of the utterance cut
        there), never the target; a target longer than `max_length` alone keeps its beginning, as `_tokenize` does.
        """
        if speakers is not None and len(speakers) != len(texts):
            raise ValueError(f"`speakers` must have one entry per utterance, got {len(speakers)} for {len(texts)}.")
        if self.context_past == 0 and self.context_future == 0:
            return self._tokenize(texts, **kwargs)
        return_tensors = kwargs.pop("return_tensors", None)
        padding = kwargs.pop("padding", True)
        truncation = kwargs.pop("truncation", True)
        max_length = kwargs.pop("max_length", None)
        pad_to_multiple_of = kwargs.pop("pad_to_multiple_of", None)
        kwargs.pop("return_token_type_ids", None)
        if truncation and max_length is None:
            max_length = self.tokenizer.model_max_length
        text_mask = self._text_mask(texts)
        prefix, suffix = self._special_tokens_around_text()
        separator = [] if self.tokenizer.sep_token_id is None else [self.tokenizer.sep_token_id]
        pieces = [
            self._utterance_ids(text, None if speakers is None else speakers[index], **kwargs)
            for index, text in enumerate(texts)
        ]
        rows = []
        for index, (speaker_ids, text_ids) in enumerate(pieces):
            budget = max_length - len(prefix) - len(suffix) - 2 * len(separator) if truncation else None
            if budget is not None and len(speaker_ids) + len(text_ids) > budget:
                # The target alone is too long: it keeps its beginning, and its speaker only if some text fits too.
                speaker_ids = speaker_ids if len(speaker_ids) < budget else []
                text_ids = text_ids[: budget - len(speaker_ids)]
            target = speaker_ids + text_ids
            past, future = [], []
            budget = None if budget is None else budget - len(target)
            for distance in range(1, max(self.context_past, self.context_future) + 1):
                for side, neighbour, limit in ((past, index - distance, self.context_past), (future, index + distance, self.context_future)):
                    if distance > limit or not 0 <= neighbour < len(texts) or not text_mask[neighbour]:
                        continue
                    ids = pieces[neighbour][0] + pieces[neighbour][1]
                    if budget is not None:
                        # The end of the neighbour farthest from the target goes first.
                        ids = ids[max(len(ids) - budget, 0) :] if side is past else ids[:budget]
                        budget -= len(ids)
                    side.insert(0 if side is past else len(side), ids)
            past_ids = [token for ids in past for token in ids]
            future_ids = [token for ids in future for token in ids]
            input_ids = prefix + past_ids + separator + target + separator + future_ids + suffix
            target_mask = (
                [0] * (len(prefix) + len(past_ids) + len(separator) + len(speaker_ids))
                + [1] * len(text_ids)
                + [0] * (len(separator) + len(future_ids) + len(suffix))
            )
            rows.append((input_ids, target_mask))
        encoding = self.tokenizer.pad(
            {"input_ids": [ids for ids, _ in rows]},
            padding=padding,
            max_length=max_length if padding == "max_length" else None,
            pad_to_multiple_of=pad_to_multiple_of,
            return_attention_mask=True,
        )
        padding_ids = [[0] * (len(padded) - len(mask)) for padded, (_, mask) in zip(encoding["input_ids"], rows)]
        padded_target = [
            mask + pad if self.tokenizer.padding_side == "right" else pad + mask for pad, (_, mask) in zip(padding_ids, rows)
        ]
        data = {**encoding, "text_mask": text_mask, "text_target_mask": padded_target}
        return dict(BatchFeature(data, tensor_type=return_tensors))

    def _utterance_ids(self, text: str | None, speaker: str | None, **kwargs) -> tuple[list[int], list[int]]:
        """(speaker prefix ids, transcript ids) of one utterance, without special tokens."""
        speaker_ids = []
        if self.context_speakers and speaker:
            speaker_ids = self.tokenizer(f"{speaker}:", add_special_tokens=False, **kwargs)["input_ids"]
        text_ids = self.tokenizer(text.strip(), add_special_tokens=False, **kwargs)["input_ids"] if text and text.strip() else []
        return speaker_ids, text_ids

    def _special_tokens_around_text(self) -> tuple[list[int], list[int]]:
        """The special ids the tokenizer puts before and after a text (BERT: [CLS] / [SEP]; LLaMA: <s> / none)."""
        plain = self.tokenizer("a", add_special_tokens=False)["input_ids"]
        wrapped = self.tokenizer("a", add_special_tokens=True)["input_ids"]
        for start in range(len(wrapped) - len(plain) + 1):
            if wrapped[start : start + len(plain)] == plain:
                return wrapped[:start], wrapped[start + len(plain) :]
        raise ValueError(f"Cannot locate the text among the special tokens of {type(self.tokenizer).__name__}.")

    @staticmethod
    def _text_mask(text: list[str | None]) -> np.ndarray:
        """1 per transcript with text, 0 (and a warning naming the item) per empty one."""
        text_mask = np.ones(len(text), dtype=np.int64)
        for index, transcript in enumerate(text):
            if transcript is None or not transcript.strip():
                logger.warning(f"The transcript of item {index} is empty; its text is masked.")
                text_mask[index] = 0
        return text_mask

    def _tokenize(self, text: list[str | None], **kwargs) -> dict:
        """Tokenizes the transcripts and adds `text_mask`, warning about the empty ones."""
        text_mask = self._text_mask(text)
        kwargs.setdefault("padding", True)
        kwargs.setdefault("truncation", True)
        # The model takes input_ids and attention_mask only.
        kwargs.setdefault("return_token_type_ids", False)
        encoding = self.tokenizer([transcript or "" for transcript in text], **kwargs)
        return {**encoding, "text_mask": text_mask}


MMEmotionProcessor.register_for_auto_class()

__all__ = [
    "MMEmotionAudioFeatureExtractor",
    "MMEmotionProcessor",
    "MMEmotionVideoFeatureExtractor",
    "pad_conversations",
    "speaker_ids",
]
