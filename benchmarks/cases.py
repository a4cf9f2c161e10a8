"""
The benchmark cases. Each case is a function of plain (JSON) settings that returns a list of result rows (dicts);
`run.py` runs every case in its own process so that the peak memory measured is the case's own.

Encoder and training inputs are synthetic tensors of the processor's shapes (8 frames of 224x224, 3 audio clips of
128x204, 32 tokens per transcript): the compute does not depend on the pixel values, and decoding is measured on
its own by the video / audio / pipeline cases.
"""

import json
import os
import statistics
import tempfile
import time
from functools import partial

import av
import decord
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode
from transformers import PreTrainedModel
from transformers.audio_utils import spectrogram
from transformers.image_utils import OPENAI_CLIP_STD

from benchmarks.measure import (
    cuda_peak_mb,
    median_seconds,
    reset_cuda_peak,
    synchronize,
)
from configuration_mmemotion import MMEmotionConfig, MMEmotionVideoConfig
from modeling_mmemotion import MMEmotionForEmotionClassification, VideoLlamaVideoEncoder
from processing_mmemotion import (
    FRAME_SHIFT_MS,
    KALDI_MEL_FLOOR,
    MMEmotionAudioFeatureExtractor,
    MMEmotionProcessor,
    MMEmotionVideoFeatureExtractor,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "presets", "tiny")
MID = os.path.join(ROOT, "benchmarks", "mid_preset.json")
TEXT_LENGTH = 32
# An ECF-like transcript (the tokenizer pads / truncates the batch to its longest one).
TRANSCRIPT = "Oh my God, I cannot believe you did that. You know what, that is just great, really great."
# How the frames are obtained: decode every frame then sample (what a naive loader does), or decode only the
# sampled ones with the processor, resized by torch (bicubic) or by the decoder's own scaler.
VIDEO_MODES = {
    "all frames": {"decode_everything": True, "resize_in_decoder": False},
    "sampled, torch resize": {"decode_everything": False, "resize_in_decoder": False},
    "sampled, decoder resize": {"decode_everything": False, "resize_in_decoder": True},
}
# Every frame decoded and nothing else (`DecodedFrameCounts`).
FLOOR_MODE = "decode only, every frame"
# Dense bf16 tensor-core peaks (TFLOP/s) of the GPUs these benchmarks are likely to meet, by name fragment.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0}


def load_config(preset: str) -> MMEmotionConfig:
    """`"tiny"` (presets/tiny), `"mid"` (the benchmarks' mid-size preset) or a seed preset (`"exp0"`: real sizes)."""
    if preset == "tiny":
        return MMEmotionConfig.from_pretrained(TINY)
    with open(MID if preset == "mid" else os.path.join(ROOT, "presets", f"{preset}.json")) as file:
        return MMEmotionConfig.from_dict(json.load(file))


def _tiny_processor_collator():
    """A collator that runs the tiny preset's processor on a batch of clip paths (transcript, video, its audio)."""
    processor = MMEmotionProcessor.from_pretrained(TINY)

    def collate(paths: list[str]):
        return processor(text=[TRANSCRIPT] * len(paths), videos=paths)

    return processor, collate


# The processor outputs each branch's `MMEmotionModel.get_{modality}_features` reads, in its argument order.
BRANCH_INPUTS = {
    "text": ("input_ids", "attention_mask"),
    "video": ("pixel_values_videos", "video_frame_mask", "video_mask"),
    "audio": ("audio_values", "audio_clip_mask", "audio_mask"),
}


def synthetic_batch(
    config: MMEmotionConfig, batch_size: int, num_frames: int = 8, num_clips: int = 3, seed: int = 0
) -> dict[str, torch.Tensor]:
    """Random processor outputs of `batch_size` utterances for the modalities of `config` (every item present)."""
    generator = torch.Generator().manual_seed(seed)

    def ones(*shape):
        return torch.ones(*shape, dtype=torch.long)

    batch = {}
    if "text" in config.modalities:
        input_ids = torch.randint(1, config.text_config.vocab_size, (batch_size, TEXT_LENGTH), generator=generator)
        batch.update(input_ids=input_ids, attention_mask=ones(batch_size, TEXT_LENGTH), text_mask=ones(batch_size))
    if "video" in config.modalities:
        size = config.video_config.vision_config.image_size
        pixels = torch.randn(batch_size, num_frames, 3, size, size, generator=generator)
        batch.update(pixel_values_videos=pixels, video_frame_mask=ones(batch_size, num_frames), video_mask=ones(batch_size))
    if "audio" in config.modalities:
        audio_config = config.audio_config
        shape = (batch_size, num_clips, 1, audio_config.num_mel_bins, audio_config.target_length)
        batch.update(
            audio_values=torch.randn(*shape, generator=generator),
            audio_clip_mask=ones(batch_size, num_clips),
            audio_mask=ones(batch_size),
        )
    return batch


def _to(batch: dict[str, torch.Tensor], device: str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Moves a batch to `device`, floating tensors cast to `dtype`."""
    return {
        key: value.to(device, dtype) if value.is_floating_point() else value.to(device) for key, value in batch.items()
    }


def _items_per_second(dataset: Dataset, workers: int, repeats: int, collate_fn=None, batch_size: int = 1) -> float:
    """Items per second of full passes over `dataset` by a DataLoader with `workers` worker processes."""
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_fn, persistent_workers=workers > 0
    )
    seconds = median_seconds(lambda: sum(1 for _ in loader), repeats)
    return len(dataset) / seconds


# --- video -------------------------------------------------------------------------------------------------------


def decode_all_frames(path: str, decoder: str) -> np.ndarray:
    """Every frame of a clip as uint8 (T, H, W, 3) RGB at its stored size."""
    if decoder == "decord":
        reader = decord.VideoReader(path, ctx=decord.cpu(0))
        return reader.get_batch(list(range(len(reader)))).asnumpy()
    with av.open(path) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


class VideoClips(Dataset):
    """The model frames (T, 3, 224, 224) of each clip, decoded as `VIDEO_MODES` says."""

    def __init__(self, paths: list[str], extractor: MMEmotionVideoFeatureExtractor, decode_everything: bool):
        self.paths = paths
        self.extractor = extractor
        self.decode_everything = decode_everything

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        path = self.paths[index]
        if self.decode_everything:
            # An array of all the frames is sampled, resized and normalised by the extractor.
            return self.extractor.extract(decode_all_frames(path, self.extractor.decoder))
        return self.extractor.extract(path)


class DecodedFrameCounts(Dataset):
    """
    The H.264 floor: PyAV decodes every frame of each clip, with no colour conversion, resize or sampling (an item is
    the number of frames). A decoder cannot do less for the last sampled frame: inter-coded frames need the
    reference frames before them, and a 3 s utterance lies inside one GOP.
    """

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> int:
        with av.open(self.paths[index]) as container:
            return sum(1 for _ in container.decode(video=0))


def video_decoding(
    clip: str, seconds: float, num_clips: int, repeats: int, workers: list[int], decoders: list[str]
) -> list[dict]:
    """
    Decode + preprocess throughput (clips/s) of one clip length, for every decoder, `VIDEO_MODES` and worker count;
    and the decoding floor (`DecodedFrameCounts`, as the PyAV row).
    """
    rows = []
    for decoder in decoders:
        for mode, options in VIDEO_MODES.items():
            extractor = MMEmotionVideoFeatureExtractor(decoder=decoder, resize_in_decoder=options["resize_in_decoder"])
            dataset = VideoClips([clip] * num_clips, extractor, options["decode_everything"])
            for num_workers in workers:
                rate = _items_per_second(dataset, num_workers, repeats)
                rows.append(
                    {"seconds": seconds, "decoder": decoder, "mode": mode, "workers": num_workers, "clips_per_s": rate}
                )
    for num_workers in workers:
        rate = _items_per_second(DecodedFrameCounts([clip] * num_clips), num_workers, repeats)
        rows.append({"seconds": seconds, "decoder": "pyav", "mode": FLOOR_MODE, "workers": num_workers, "clips_per_s": rate})
    return rows


def frame_difference(clip: str) -> list[dict]:
    """How far decoder-side resizing is from torch-bicubic resizing, in 0-255 levels, per decoder."""
    rows = []
    for decoder in ("decord", "pyav"):
        frames = {
            resize: MMEmotionVideoFeatureExtractor(decoder=decoder, resize_in_decoder=resize).extract(clip)
            for resize in (False, True)
        }
        difference = np.abs(frames[True] - frames[False]) * 255 * np.array(OPENAI_CLIP_STD).reshape(1, 3, 1, 1)
        rows.append({"decoder": decoder, "mean_abs_levels": float(difference.mean()), "max_abs_levels": float(difference.max())})
    return rows


# --- audio -------------------------------------------------------------------------------------------------------


def loop_log_mel_filterbank(extractor: MMEmotionAudioFeatureExtractor, clip: np.ndarray) -> np.ndarray:
    """The same Kaldi filterbank computed by transformers' frame-by-frame `spectrogram` (the reference)."""
    frame_length = len(extractor.window)
    return spectrogram(
        clip - clip.mean(),
        extractor.window,
        frame_length=frame_length,
        hop_length=int(extractor.sampling_rate * FRAME_SHIFT_MS / 1000),
        fft_length=2 ** int(np.ceil(np.log2(frame_length))),
        power=2.0,
        center=False,
        preemphasis=0.97,
        mel_filters=extractor.mel_filters,
        log_mel="log",
        mel_floor=KALDI_MEL_FLOOR,
        remove_dc_offset=True,
        dtype=np.float32,
    )


def audio_extraction(clip: str, seconds: float, num_items: int, repeats: int, workers: list[int]) -> list[dict]:
    """Waveform extraction and filterbank throughput (items/s) of one clip length, per decoder."""
    rows = []
    for decoder in ("decord", "pyav"):
        extractor = MMEmotionAudioFeatureExtractor(decoder=decoder)
        waveform = extractor.load_waveform(clip)
        row = {
            "seconds": seconds,
            "decoder": decoder,
            "waveform_per_s": 1 / median_seconds(partial(extractor.load_waveform, clip), repeats),
            "fbank_per_s": 1 / median_seconds(partial(extractor.extract_clips, waveform), repeats),
        }
        for num_workers in workers:
            dataset = AudioItems([clip] * num_items, extractor)
            row[f"items_per_s_{num_workers}_workers"] = _items_per_second(dataset, num_workers, repeats)
        rows.append(row)
    return rows


class AudioItems(Dataset):
    """The filterbank clips of each file's audio."""

    def __init__(self, paths: list[str], extractor: MMEmotionAudioFeatureExtractor):
        self.paths = paths
        self.extractor = extractor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return self.extractor.extract(self.paths[index])


def fbank_implementations(seconds: float, repeats: int) -> list[dict]:
    """The extractor's filterbank against transformers' frame-by-frame `spectrogram`: speed ratio and largest difference."""
    extractor = MMEmotionAudioFeatureExtractor()
    clip = np.random.default_rng(0).normal(0, 0.1, int(seconds * extractor.sampling_rate))
    ours, reference = extractor.log_mel_filterbank(clip), loop_log_mel_filterbank(extractor, clip)
    ours_seconds = median_seconds(lambda: extractor.log_mel_filterbank(clip), repeats)
    loop_seconds = median_seconds(lambda: loop_log_mel_filterbank(extractor, clip), repeats)
    return [
        {
            "clip_seconds": seconds,
            "extractor_ms": ours_seconds * 1000,
            "frame_loop_ms": loop_seconds * 1000,
            "speedup": loop_seconds / ours_seconds,
            "max_abs_difference": float(np.abs(ours - reference).max()),
        }
    ]


# --- whole utterances --------------------------------------------------------------------------------------------


def utterance_pipeline(clip: str, seconds: float, num_utterances: int, repeats: int, workers: list[int], batch_size: int) -> list[dict]:
    """
    Utterances/s of the tiny preset's processor (transcript, video, audio from the video) run by DataLoader workers
    (as a collator), with the frames resized by the decoder or by torch.
    """
    processor, collate = _tiny_processor_collator()
    rows = []
    for resize_in_decoder in (False, True):
        processor.video_feature_extractor.resize_in_decoder = resize_in_decoder
        for num_workers in workers:
            rate = _items_per_second([clip] * num_utterances, num_workers, repeats, collate, batch_size)
            row = {"seconds": seconds, "resize_in_decoder": resize_in_decoder, "workers": num_workers}
            rows.append({**row, "utterances_per_s": rate})
    return rows


# --- encoders ----------------------------------------------------------------------------------------------------


def encoder_forward(
    preset: str, batch_sizes: list[int], repeats: int, breakdown: bool, device: str = "cpu", dtype: str = "float32"
) -> list[dict]:
    """
    Utterances/s of the model's forward pass (all encoders, pooling, head) per batch size, under
    `torch.inference_mode`; with `breakdown`, at the largest batch also under `torch.no_grad` instead, and each branch
    on its own.
    """
    torch_dtype = getattr(torch, dtype)
    config = load_config(preset)
    with torch.device(device):
        model = MMEmotionForEmotionClassification(config).eval().to(torch_dtype)
    rows = []

    def forward_rate(batch: dict, batch_size: int, grad_mode=torch.inference_mode, function=model) -> float:
        with grad_mode():
            return batch_size / median_seconds(lambda: function(**batch), repeats, device)

    for batch_size in batch_sizes:
        batch = _to(synthetic_batch(config, batch_size), device, torch_dtype)
        row = {"preset": preset, "device": device, "dtype": dtype, "batch_size": batch_size}
        rows.append({**row, "part": "forward", "utterances_per_s": forward_rate(batch, batch_size)})
    if not breakdown:
        return rows
    rows.append({**row, "part": "forward, no_grad", "utterances_per_s": forward_rate(batch, batch_size, torch.no_grad)})
    for modality in config.modalities:
        branch = {key: batch[key] for key in BRANCH_INPUTS[modality]}
        rate = forward_rate(branch, batch_size, function=getattr(model.mmemotion, f"get_{modality}_features"))
        rows.append({**row, "part": f"{modality} branch", "utterances_per_s": rate})
    return rows


def encoder_flops(presets: list[str]) -> list[dict]:
    """
    FLOPs per utterance of the two big encoders, counted by `torch.utils.flop_counter` on the meta device (no
    compute, so even the real size is free to count): the frame encoder (ViT + BLIP-2 Q-Former) on 8 frames and the
    ImageBind audio trunk on 3 clips. `presets` are names for `load_config`.
    """
    rows = []
    for preset in presets:
        config = load_config(preset)
        with torch.device("meta"):
            model = MMEmotionForEmotionClassification(config)
            size = config.video_config.vision_config.image_size
            frames = torch.empty(8, 3, size, size)
            clips = torch.empty(3, 1, config.audio_config.num_mel_bins, config.audio_config.target_length)
            counts = {}
            for name, function, inputs in (
                ("frame_encoder", model.mmemotion.video_encoder.encode_frames, frames),
                ("audio_trunk", model.mmemotion.audio_encoder.audio_model, clips),
            ):
                with torch.inference_mode(), FlopCounterMode(display=False) as counter:
                    function(inputs)
                counts[f"{name}_gflops"] = counter.get_total_flops() / 1e9
        parameters = sum(parameter.numel() for parameter in model.parameters())
        rows.append({"preset": preset, "parameters": parameters, **counts})
    return rows


def set_attention(module: torch.nn.Module, implementation: str) -> None:
    """Switches every transformers model inside `module` to `implementation` ("sdpa" or "eager") attention."""
    for submodule in module.modules():
        if isinstance(submodule, PreTrainedModel):
            submodule.set_attn_implementation(implementation)


def video_branch_flops(batch_size: int, repeats: int, device: str, dtype: str, attention: list[str], config: dict | None = None) -> list[dict]:
    """
    The video branch alone (frames -> ViT -> Q-Former -> video Q-Former -> projection) at VideoLLaMA's sizes (those of
    the exp presets) unless `config` is given: utterances/s (8 frames each), FLOPs counted by
    `torch.utils.flop_counter` and the share of the GPU's dense bf16 peak they reach.
    """
    torch_dtype = getattr(torch, dtype)
    video_config = MMEmotionVideoConfig(**(config or {}))
    with torch.device(device):
        encoder = VideoLlamaVideoEncoder(video_config).eval().requires_grad_(False).to(torch_dtype)
    size = video_config.vision_config.image_size
    pixels = torch.randn(batch_size, 8, 3, size, size, device=device, dtype=torch_dtype)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        encoder(pixels)
    flops = counter.get_total_flops()
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else None
    peak = next((value for key, value in PEAK_BF16_TFLOPS.items() if name and key in name), None)
    rows = []
    for implementation in attention:
        set_attention(encoder, implementation)
        reset_cuda_peak(device)
        with torch.inference_mode():
            seconds = median_seconds(lambda: encoder(pixels), repeats, device)
        tflops = flops / seconds / 1e12
        rows.append(
            {
                "device": name or device,
                "dtype": dtype,
                "attention": implementation,
                "batch_size": batch_size,
                "utterances_per_s": batch_size / seconds,
                "gflops_per_utterance": flops / batch_size / 1e9,
                "achieved_tflops": tflops,
                "share_of_peak": tflops / peak if peak and dtype == "bfloat16" else None,
                "cuda_peak_mb": cuda_peak_mb(device),
            }
        )
    return rows


# --- training ----------------------------------------------------------------------------------------------------


def _head_parameters_trainable(model: MMEmotionForEmotionClassification) -> None:
    """After peft froze everything but its adapters: the pooling, missing-modality vectors and head train again."""
    encoders = tuple(f"mmemotion.{modality}_encoder." for modality in model.config.modalities)
    for name, parameter in model.named_parameters():
        if not name.startswith(encoders):
            parameter.requires_grad_(True)


def _feature_cache(model, raw_batches, device: str, text_live: bool) -> tuple[list[dict], float]:
    """
    Encodes every batch once under `torch.inference_mode` (`get_{modality}_features`), keeping the features and masks the
    head needs (the token ids instead of the text features when `text_live`). Returns the cache and the seconds the
    encoders took.
    """
    cache, seconds = [], 0.0
    model.eval()
    for batch in raw_batches:
        start = time.perf_counter()
        with torch.inference_mode():
            features = {
                f"{modality}_features": getattr(model.mmemotion, f"get_{modality}_features")(
                    *(batch[key] for key in BRANCH_INPUTS[modality])
                )
                for modality in model.config.modalities
            }
        synchronize(device)
        seconds += time.perf_counter() - start
        kept = {key: batch[key] for key in ("attention_mask", "text_mask", "video_mask", "audio_mask") if key in batch}
        if text_live:
            kept["input_ids"] = batch["input_ids"]
            features.pop("text_features")
        # Inference tensors cannot be saved for backward: a real cache is read back from disk as plain tensors.
        cache.append({**kept, **{key: value.clone() for key, value in features.items()}})
    return cache, seconds


def training_epoch(
    preset: str, mode: str, num_utterances: int, batch_size: int, repeats: int, device: str = "cpu"
) -> list[dict]:
    """
    One epoch of emotion-classification training with frozen encoders, timed step by step (the synthetic batches are
    made outside the timer, as a DataLoader would prefetch them):

    - `"live"`: every step runs the frozen encoders on the processor outputs, then trains pooling + head;
    - `"cached"`: the encoders run once (the feature cache, its build time reported apart) and the epoch trains on
      the cached features;
    - `"lora"`: as `"cached"` for video and audio, with a LoRA adapter (peft) on the text embeddings trained too.
    """
    config = load_config(preset)
    with torch.device(device):
        model = MMEmotionForEmotionClassification(config)
    generator = torch.Generator().manual_seed(0)
    num_steps = -(-num_utterances // batch_size)
    labels = [torch.randint(0, config.num_labels, (batch_size,), generator=generator).to(device) for _ in range(num_steps)]

    def raw_batch(step: int) -> dict[str, torch.Tensor]:
        return _to(synthetic_batch(config, batch_size, seed=step), device, torch.float32)

    batches, cache_seconds = raw_batch, None
    if mode != "live":
        raw_batches = (raw_batch(step) for step in range(num_steps))
        cache, cache_seconds = _feature_cache(model, raw_batches, device, text_live=mode == "lora")
        batches = cache.__getitem__
    if mode == "lora":
        from peft import (  # only this case needs peft (slow to import)
            LoraConfig,
            inject_adapter_in_model,
        )

        inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=["embed_tokens"]), model)
        _head_parameters_trainable(model)

    model.train()
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-4, fused=True)  # Trainer's default optimizer

    def step_seconds(step: int) -> float:
        batch = batches(step)
        synchronize(device)
        start = time.perf_counter()
        model(**batch, labels=labels[step]).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        return time.perf_counter() - start

    reset_cuda_peak(device)
    step_seconds(0)  # warm-up
    epoch_seconds = statistics.median(sum(step_seconds(step) for step in range(num_steps)) for _ in range(repeats))
    return [
        {
            "preset": preset,
            "mode": mode,
            "device": device,
            "utterances": num_steps * batch_size,
            "batch_size": batch_size,
            "epoch_s": epoch_seconds,
            "utterances_per_s": num_steps * batch_size / epoch_seconds,
            "cache_build_s": cache_seconds,
            "trainable_parameters": sum(parameter.numel() for parameter in parameters),
            "cuda_peak_mb": cuda_peak_mb(device),
        }
    ]


# --- scaling -----------------------------------------------------------------------------------------------------


def scaling_utterances(clip: str, counts: list[int], repeats: int, workers: int, batch_size: int) -> list[dict]:
    """
    Time to build the tiny preset's video and audio feature cache with `training.features.FeatureCache` (the processor in 0 or
    `workers` DataLoader workers, the encoders in this process) vs the number of utterances; at the largest number also
    with one torch thread in this process (the workers keep the cores busy, which can stall torch's OpenMP threads).
    """
    import datasets

    from training.features import FeatureCache

    model = MMEmotionForEmotionClassification(load_config("tiny")).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    datasets.disable_progress_bars()

    def build_cache(dataset: datasets.Dataset, num_workers: int):
        with tempfile.TemporaryDirectory(prefix="mmemotion-cache-") as cache_dir:  # empty: every build is a miss
            FeatureCache(model, processor, ["video", "audio"], cache_dir, batch_size, num_workers).add_features(dataset, "bench")

    default_threads = torch.get_num_threads()
    settings = [(count, num_workers, default_threads) for num_workers in sorted({0, workers}) for count in counts]
    if default_threads > 1:
        settings.append((max(counts), workers, 1))
    rows = []
    for count, num_workers, threads in settings:
        torch.set_num_threads(threads)
        dataset = datasets.Dataset.from_dict({"video_path": [clip] * count})
        seconds = median_seconds(partial(build_cache, dataset, num_workers), repeats)
        row = {"utterances": count, "workers": num_workers, "threads": threads, "seconds": seconds}
        rows.append({**row, "ms_per_utterance": seconds / count * 1000})
    torch.set_num_threads(default_threads)
    return rows


def scaling_frames(clip: str, frame_counts: list[int], repeats: int) -> list[dict]:
    """Decode + preprocess clips/s (decord, decoder resize) and the tiny video branch's utterances/s vs frames per clip."""
    config = load_config("tiny")
    model = MMEmotionForEmotionClassification(config).eval()
    rows = []
    for num_frames in frame_counts:
        extractor = MMEmotionVideoFeatureExtractor(num_frames=num_frames, decoder="decord", resize_in_decoder=True)
        decode_rate = 1 / median_seconds(partial(extractor.extract, clip), repeats)
        batch = synthetic_batch(config, 8, num_frames=num_frames)
        video = {key: batch[key] for key in BRANCH_INPUTS["video"]}
        with torch.inference_mode():
            forward_rate = 8 / median_seconds(partial(model.mmemotion.get_video_features, **video), repeats)
        rows.append({"frames": num_frames, "decode_clips_per_s": decode_rate, "video_branch_utterances_per_s": forward_rate})
    return rows


# --- feature extraction at corpus scale --------------------------------------------------------------------------

# ECF's clips (16,720 utterances), for extrapolating cache sizes.
ECF_UTTERANCES = 16720


def sharded_cache_build(clip: str, num_utterances: int, process_counts: list[int], repeats: int) -> list[dict]:
    """
    Seconds to build the tiny preset's video + audio feature cache of `num_utterances` clips with 1 or more processes
    (torchrun, gloo, one torch thread each, clips decoded by each process itself): every process encodes its shard,
    the main process joins them (`sharded_build.py`). The 1-minute load average before and after each build is kept:
    the other processes of a shared machine take cores from the shards.
    """
    import subprocess
    import sys

    rows = []
    for num_processes in process_counts:
        runs = []
        for _ in range(repeats + 1):  # the first run warms the page cache up and is not kept
            with tempfile.TemporaryDirectory(prefix="mmemotion-shards-") as folder:
                output = os.path.join(folder, "result.json")
                command = [
                    sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(num_processes),
                    os.path.join(ROOT, "benchmarks", "sharded_build.py"), clip, str(num_utterances), os.path.join(folder, "cache"), output,
                ]
                environment = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
                load_before = os.getloadavg()[0]
                subprocess.run(command, check=True, env=environment, capture_output=True)
                with open(output) as file:
                    runs.append((json.load(file)["seconds"], load_before, os.getloadavg()[0]))
        seconds, load_before, load_after = sorted(runs[1:])[len(runs[1:]) // 2]
        rows.append(
            {
                "processes": num_processes,
                "utterances": num_utterances,
                "seconds": seconds,
                "utterances_per_s": num_utterances / seconds,
                "speedup": rows[0]["seconds"] / seconds if rows else 1.0,
                "load_before": load_before,
                "load_after": load_after,
            }
        )
    return rows


def device_cache_build(
    clip: str, num_utterances: int, preset: str, device: str, dtype: str, workers: list[int], batch_size: int, repeats: int
) -> list[dict]:
    """
    The video + audio feature cache of `num_utterances` copies of a clip built by `training.features.FeatureCache` with the
    encoders of `preset` on `device` in `dtype` (exp0 on a GPU: VideoLLaMA's real sizes) and the clips decoded by 0 or
    more DataLoader workers: seconds, utterances/s and the minutes that rate gives for ECF's clips.
    """
    import datasets

    from training.features import FeatureCache

    datasets.disable_progress_bars()
    with torch.device(device):
        model = MMEmotionForEmotionClassification(load_config(preset)).eval().to(getattr(torch, dtype))
    # The presets' video / audio preprocessing is VideoLLaMA's (text is not cached here, so the tokenizer is unused).
    processor = MMEmotionProcessor.from_pretrained(TINY)
    dataset = datasets.Dataset.from_dict({"video_path": [clip] * num_utterances})

    def build_cache(num_workers: int):
        with tempfile.TemporaryDirectory(prefix="mmemotion-cache-") as cache_dir:  # empty: every build is a miss
            cache = FeatureCache(model, processor, ["video", "audio"], cache_dir, batch_size, num_workers, cache_dtype=dtype)
            cache.add_features(dataset, "bench")

    rows = []
    for num_workers in workers:
        reset_cuda_peak(device)
        seconds = median_seconds(partial(build_cache, num_workers), repeats, device)
        row = {"preset": preset, "device": device, "dtype": dtype, "workers": num_workers, "utterances": num_utterances}
        rate = num_utterances / seconds
        rows.append({**row, "seconds": seconds, "utterances_per_s": rate, "ecf_minutes": ECF_UTTERANCES / rate / 60, "cuda_peak_mb": cuda_peak_mb(device)})
    return rows


def cache_sizes(clip: str, num_utterances: int) -> list[dict]:
    """
    Bytes per utterance of the feature cache files of the tiny preset's text, video and audio in each cache dtype
    (built by `training.features.FeatureCache` from `num_utterances` copies of a clip), and the same layout at VideoLLaMA's
    widths (`exp0`: query tokens x LLaMA-13B width) for ECF's 16,720 utterances; text there at the tiny cache's
    token count per utterance.
    """
    import datasets

    from training.features import CACHE_DTYPES, FeatureCache, tokenize_utterances

    datasets.disable_progress_bars()
    model = MMEmotionForEmotionClassification(load_config("tiny")).eval()
    processor = MMEmotionProcessor.from_pretrained(TINY)
    dataset = datasets.Dataset.from_dict(
        {
            "video_path": [clip] * num_utterances,
            "text": [TRANSCRIPT] * num_utterances,
            "speaker": ["Ross"] * num_utterances,
            "conversation_id": list(range(num_utterances)),  # one utterance a conversation: no context window
        }
    )
    dataset = tokenize_utterances(dataset, processor, TEXT_LENGTH)
    tokens_per_utterance = statistics.mean(dataset["length"])

    def values_per_utterance(config: MMEmotionConfig) -> dict[str, float]:
        return {
            "text": tokens_per_utterance * config.modality_hidden_size("text"),
            "video": config.video_config.num_video_query_tokens * config.modality_hidden_size("video"),
            "audio": config.audio_config.num_audio_query_tokens * config.modality_hidden_size("audio"),
        }

    tiny_values, exp0_values = values_per_utterance(load_config("tiny")), values_per_utterance(load_config("exp0"))
    rows = []
    for cache_dtype, storage in CACHE_DTYPES.items():
        with tempfile.TemporaryDirectory(prefix="mmemotion-cache-") as cache_dir:
            FeatureCache(model, processor, ["text", "video", "audio"], cache_dir, 8, cache_dtype=cache_dtype).add_features(dataset, "bench")
            for modality in ("text", "video", "audio"):
                folder = os.path.join(cache_dir, modality)
                size = sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))
                bytes_per_value = torch.empty(0, dtype=storage).element_size()
                rows.append(
                    {
                        "cache_dtype": cache_dtype,
                        "modality": modality,
                        "tiny_bytes_per_utterance": size / num_utterances,
                        "tiny_values_per_utterance": tiny_values[modality],
                        "exp0_values_per_utterance": exp0_values[modality],
                        "ecf_exp0_gb": ECF_UTTERANCES * exp0_values[modality] * bytes_per_value / 1e9,
                    }
                )
    return rows


CASES = {
    function.__name__: function
    for function in (
        video_decoding,
        frame_difference,
        audio_extraction,
        fbank_implementations,
        utterance_pipeline,
        encoder_forward,
        encoder_flops,
        video_branch_flops,
        training_epoch,
        scaling_utterances,
        scaling_frames,
        sharded_cache_build,
        device_cache_build,
        cache_sizes,
    )
}
