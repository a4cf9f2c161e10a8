"""
The audio feature extractor's hand-written filterbank against transformers' `ASTFeatureExtractor` (the library piece
it stands in for) on the same clips: CPU time to turn one item's waveform into its normalised clips, and the largest
difference between the two outputs.

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/fbank_vs_ast.py

Writes `results/fbank-vs-ast.json` and `results/fbank-vs-ast.md`. On its own, not part of `run.py`.

The two are timed three ways: called in turn on waveforms, with glibc's malloc as it comes (which, with AST's calls in
between, maps the extractor's large temporary arrays afresh on every call: page faults); the same with malloc told
to keep freed memory (`mallopt`, glibc only); and inside the processor, on the sound of a generated mp4 read with
its video (what training and inference do).
"""

import argparse
import ctypes
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from functools import partial

import numpy as np
from transformers import ASTFeatureExtractor
from transformers.utils import is_speech_available


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.measure import machine_info  # noqa: E402
from demo.media import tone, write_mp4  # noqa: E402
from processing_mmemotion import MMEmotionAudioFeatureExtractor, MMEmotionProcessor  # noqa: E402


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3


def ast_clips(ast: ASTFeatureExtractor, extractor: MMEmotionAudioFeatureExtractor, waveform: np.ndarray) -> np.ndarray:
    """`extractor.extract_clips(waveform)` computed by `ASTFeatureExtractor`, (num_clips, 1, num_mel_bins, target_length)."""
    clips = [waveform[start:end] for start, end in extractor.clip_boundaries(len(waveform))]
    values = ast(clips, sampling_rate=extractor.sampling_rate, return_tensors="np")["input_values"]
    return values.transpose(0, 2, 1)[:, None]


def round_robin(functions: dict, repeats: int) -> dict:
    """
    Median and fastest CPU milliseconds, and minor page faults, per call of each function over `repeats` rounds that
    call every function once (after one untimed call each): CPU time of this single-threaded process, every function
    in every round, so that the load of other jobs on a shared machine, which changes over time, weighs on each alike.
    """
    for function in functions.values():
        function()
    times = {key: [] for key in functions}
    faults = dict.fromkeys(functions, 0)
    for _ in range(repeats):
        for key, function in functions.items():
            faults_before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
            function()
            times[key].append((time.process_time() - start) * 1000)
            faults[key] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
    return {
        key: {"median_ms": statistics.median(values), "fastest_ms": min(values), "page_faults": faults[key] / repeats}
        for key, values in times.items()
    }


def timed_calls(function, times: list, faults: list):
    """`function`, appending the CPU milliseconds and minor page faults of each call to `times` and `faults`."""

    def timed(*args):
        faults_before, start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.process_time()
        result = function(*args)
        times.append((time.process_time() - start) * 1000)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before)
        return result

    return timed


def in_processor(ast: ASTFeatureExtractor, seconds: float, repeats: int) -> dict:
    """
    Median and fastest CPU milliseconds, and minor page faults, per `extract_clips` call of the processor reading a
    generated mp4 (640x360 noise frames, 25 fps, a tone), with the extractor's own clips or AST's, in turn.
    """
    processor = MMEmotionProcessor.from_pretrained(os.path.join(ROOT, "presets", "tiny"))
    extractor = processor.audio_feature_extractor
    implementations = {"extractor": extractor.extract_clips, "ast": partial(ast_clips, ast, extractor)}
    with tempfile.TemporaryDirectory(prefix="fbank-vs-ast-") as folder:
        frames = np.random.default_rng(0).integers(0, 256, (int(25 * seconds), 360, 640, 3), dtype=np.uint8)
        path = write_mp4(os.path.join(folder, "clip.mp4"), frames, fps=25, audio=tone(440, seconds))
        samples = {name: ([], []) for name in implementations}
        for round_index in range(repeats + 1):
            for name, implementation in implementations.items():
                times, faults = samples[name] if round_index else ([], [])  # the first round is not timed
                extractor.extract_clips = timed_calls(implementation, times, faults)
                processor(text=["Oh my God."], videos=[path])
    return {
        name: {"median_ms": statistics.median(times), "fastest_ms": min(times), "page_faults": statistics.mean(faults)}
        for name, (times, faults) in samples.items()
    }


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for the next allocations; False where there is no glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 64 * 2**20)) and bool(libc.mallopt(M_TRIM_THRESHOLD, 256 * 2**20))


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--seconds", type=float, nargs="+", default=[1.0, 3.0, 10.0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--processor_seconds", type=float, default=3.0, help="length of the mp4 read by the processor")
    parser.add_argument("--processor_repeats", type=int, default=40)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "fbank-vs-ast"))
    args = parser.parse_args()

    extractor = MMEmotionAudioFeatureExtractor()
    with warnings.catch_warnings():
        # 128 Kaldi filters over 257 FFT bins leave the lowest filters empty (the extractor silences the same warning).
        warnings.filterwarnings("ignore", message="At least one mel filter has all zero values")
        ast = ASTFeatureExtractor(
            num_mel_bins=extractor.num_mel_bins,
            max_length=extractor.target_length,
            mean=extractor.mean,
            std=extractor.std / 2,  # AST divides by twice its std
            sampling_rate=extractor.sampling_rate,
        )
    load_at_start = os.getloadavg()[0]
    functions = {}
    for seconds in args.seconds:
        num_samples = int(seconds * extractor.sampling_rate)
        sine = 0.5 * np.sin(2 * np.pi * 440 * np.arange(num_samples) / extractor.sampling_rate)
        waveform = (sine + np.random.default_rng(0).normal(0, 0.05, num_samples)).astype(np.float32)
        functions[seconds, "extractor"] = partial(extractor.extract_clips, waveform)
        functions[seconds, "ast"] = partial(ast_clips, ast, extractor, waveform)

    rows = []

    def add_rows(setting: str, figures: dict, differences: dict):
        for seconds, difference in differences.items():
            ours, theirs = figures[seconds, "extractor"], figures[seconds, "ast"]
            rows.append(
                {
                    "setting": setting,
                    "waveform_seconds": seconds,
                    "clips": extractor.num_clips,
                    "extractor": ours,
                    "ast_feature_extractor": theirs,
                    "speedup_of_medians": theirs["median_ms"] / ours["median_ms"],
                    "speedup_of_fastest": theirs["fastest_ms"] / ours["fastest_ms"],
                    "max_abs_difference": difference,
                }
            )

    differences = {
        seconds: float(np.abs(functions[seconds, "extractor"]() - functions[seconds, "ast"]()).max())
        for seconds in args.seconds
    }
    add_rows("waveforms, malloc as it comes", round_robin(functions, args.repeats), differences)
    # In the processor before `mallopt`, which would change what it measures.
    processor_figures = in_processor(ast, args.processor_seconds, args.processor_repeats)
    if keep_freed_memory():
        add_rows("waveforms, malloc keeps freed memory", round_robin(functions, args.repeats), differences)
    add_rows(
        "in the processor, reading an mp4",
        {(args.processor_seconds, name): figures for name, figures in processor_figures.items()},
        {args.processor_seconds: None},
    )

    command = ("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/fbank_vs_ast.py " + " ".join(sys.argv[1:])).strip()
    machine = machine_info()
    results = {
        "command": command,
        "ast_backend": "torchaudio" if is_speech_available() else "numpy (transformers.audio_utils.spectrogram)",
        "threads": {name: os.environ.get(name) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")},
        "load_average_1min": {"start": load_at_start, "end": os.getloadavg()[0]},
        "timer": "time.process_time (CPU time of this process)",
        "machine": machine,
        "rows": rows,
    }
    lines = [
        "# Audio filterbank: the extractor's against `ASTFeatureExtractor`",
        "",
        f"Command: `{command}` ({machine['date']}; {machine['cpu_cores']} CPU cores, shared; 1-minute load average "
        f"{load_at_start:.1f} at the start, {results['load_average_1min']['end']:.1f} at the end; transformers "
        f"{machine['transformers']}, numpy {machine['numpy']}; AST's backend: {results['ast_backend']}).",
        "",
        f"CPU milliseconds per call (median / fastest of {args.repeats} rounds that call each once) to turn one item's",
        "16 kHz waveform into its 3 normalised clips of 128 x 204 (2 s each; a shorter waveform whole in each):",
        "`MMEmotionAudioFeatureExtractor.extract_clips` against `ASTFeatureExtractor(num_mel_bins=128, max_length=204,",
        "mean=-4.268, std=9.138 / 2)` on the same clips (`clip_boundaries`); minor page faults per call.",
        "",
        "| setting | waveform | extractor | faults | ASTFeatureExtractor | faults | speed-up (medians / fastest) "
        "| largest difference |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours, theirs = row["extractor"], row["ast_feature_extractor"]
        difference = "-" if row["max_abs_difference"] is None else f"{row['max_abs_difference']:.1e}"
        lines.append(
            f"| {row['setting']} | {row['waveform_seconds']:g} s | {ours['median_ms']:.2f} / {ours['fastest_ms']:.2f} ms "
            f"| {ours['page_faults']:.0f} | {theirs['median_ms']:.2f} / {theirs['fastest_ms']:.2f} ms "
            f"| {theirs['page_faults']:.0f} | {row['speedup_of_medians']:.1f}x / {row['speedup_of_fastest']:.1f}x "
            f"| {difference} |"
        )
    lines.append("")
    with open(f"{args.output}.json", "w", encoding="utf-8") as file:
        json.dump(results, file, indent=2)
    with open(f"{args.output}.md", "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
