"""
Runs every mmemotion benchmark and writes `benchmarks/results/results.json` and `results.md`.

    python benchmarks/run.py            # the full run (about 11 minutes on 2 CPU cores)
    python benchmarks/run.py --quick    # a few minutes
    python benchmarks/run.py --only video audio --output /tmp/bench   # some groups, elsewhere

TV-like clips are generated in a temporary folder first. Then the jobs (a case of `benchmarks/cases.py` with its
settings) run; the encoder and training ones each in a Python process of its own, so that the peak resident memory
reported is that job's own. Throughputs are medians of several runs after a warm-up run; every comparison (ratio)
is between figures of the same run. The GPU cases run when `torch.cuda.is_available()`.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
# Everything is local (presets/tiny): no Hub request, no tokenizer fork warning, no transformers notices in the output.
for variable, value in (("HF_HUB_OFFLINE", "1"), ("TOKENIZERS_PARALLELISM", "false"), ("TRANSFORMERS_VERBOSITY", "error")):
    os.environ.setdefault(variable, value)

import torch

from benchmarks.measure import cuda_peak_mb, machine_info, peak_rss_mb
from benchmarks.media import FPS, bitrate_mbps, write_tv_clip
from benchmarks.report import render_markdown

NO_GPU = "no GPU available in this session"
# The settings of each profile. `clips` is how many copies of a clip one pass decodes (about a second of work);
# `encoders` lists (preset, batch sizes, with the no_grad / per-branch breakdown); `training` (preset, utterances,
# modes). `repeats` runs are timed after a warm-up run (`slow_repeats` for the mid-size preset and the scaling).
PROFILES = {
    "full": {
        "repeats": 3,
        "slow_repeats": 2,
        "clip_size": (640, 360),
        "durations": [1, 3, 10, 30],
        "clips": {1: 16, 3: 8, 10: 4, 30: 2},
        "workers": [0, 2],
        "pipeline_utterances": 32,
        "encoders": [("tiny", [1, 8, 32], True), ("mid", [1, 2], False)],
        "flops": ["tiny", "mid", "exp0"],
        "training": [("tiny", 128, ["cached", "live", "lora"]), ("mid", 4, ["cached", "live"])],
        "scaling_counts": [8, 16, 32, 64],
        "frame_counts": [2, 4, 8, 16, 32],
        "shard_utterances": 64,
        "dtype_encoders": [("tiny", [8]), ("mid", [1])],
        "device_cache_utterances": 128,
        "device_cache_workers": [0, 4, 12],
    },
    "quick": {
        "repeats": 3,
        "slow_repeats": 2,
        "clip_size": (640, 360),
        "durations": [1, 3],
        "clips": {1: 8, 3: 4},
        "workers": [0, 2],
        "pipeline_utterances": 8,
        "encoders": [("tiny", [1, 8], True), ("mid", [1], False)],
        "flops": ["tiny", "mid", "exp0"],
        "training": [("tiny", 32, ["cached", "live", "lora"])],
        "scaling_counts": [8, 16],
        "frame_counts": [4, 8, 16],
        "shard_utterances": 32,
        "dtype_encoders": [("tiny", [8]), ("mid", [1])],
        "device_cache_utterances": 32,
        "device_cache_workers": [0, 4],
    },
    # Every code path on the smallest inputs (tests/test_benchmarks.py).
    "smoke": {
        "repeats": 1,
        "slow_repeats": 1,
        "clip_size": (64, 48),
        "durations": [1],
        "clips": {1: 2},
        "workers": [0],
        "pipeline_utterances": 2,
        "encoders": [("tiny", [1], True)],
        "flops": ["tiny"],
        "training": [("tiny", 2, ["cached", "live", "lora"])],
        "scaling_counts": [2],
        "frame_counts": [2],
        "shard_utterances": 4,
        "dtype_encoders": [("tiny", [1])],
        "device_cache_utterances": 2,
        "device_cache_workers": [0],
    },
}
GROUPS = ("video", "audio", "pipeline", "encoders", "gpu", "training", "scaling", "scale")
# Utterances per batch of the encoders and of training (a smaller dataset is one smaller batch).
BATCH_SIZE = 8
# The clip length of the pipeline and scaling cases: ECF utterances last 3.2 s on average (median 2.5 s).
UTTERANCE_SECONDS = 3
# The cases whose memory is reported run in a process of their own; the others share this one.
ISOLATED_CASES = ("encoder_forward", "training_epoch", "video_branch_flops", "device_cache_build")


def plan(profile: dict, clips: dict[float, str], groups: tuple[str, ...], cuda: bool) -> list[dict]:
    """The jobs of a run: `{"group", "case", "kwargs"}` dicts, in the order they run."""
    repeats, slow = profile["repeats"], profile["slow_repeats"]
    utterance_seconds = min(clips, key=lambda seconds: abs(seconds - UTTERANCE_SECONDS))
    utterance_clip = clips[utterance_seconds]
    jobs = []

    def add(group, case, **kwargs):
        if group in groups:
            jobs.append({"group": group, "case": case, "kwargs": kwargs, "isolated": case in ISOLATED_CASES})

    for seconds, clip in clips.items():
        common = {"clip": clip, "seconds": seconds, "repeats": repeats, "workers": profile["workers"]}
        add("video", "video_decoding", num_clips=profile["clips"][seconds], decoders=["decord", "pyav"], **common)
        add("audio", "audio_extraction", num_items=profile["clips"][seconds], **common)
    add("video", "frame_difference", clip=utterance_clip)
    add("audio", "fbank_implementations", seconds=2.0, repeats=repeats)
    add(
        "pipeline",
        "utterance_pipeline",
        clip=utterance_clip,
        seconds=utterance_seconds,
        num_utterances=profile["pipeline_utterances"],
        repeats=repeats,
        workers=profile["workers"],
        batch_size=BATCH_SIZE // 2,
    )
    add("encoders", "encoder_flops", presets=profile["flops"])
    for device, dtype in [("cpu", "float32")] + ([("cuda", "bfloat16")] if cuda else []):
        for preset, batch_sizes, breakdown in profile["encoders"]:
            preset_repeats = repeats if preset == "tiny" else slow
            add("encoders", "encoder_forward", preset=preset, batch_sizes=batch_sizes, repeats=preset_repeats, breakdown=breakdown, device=device, dtype=dtype)
        for preset, num_utterances, modes in profile["training"]:
            for mode in modes:
                add(
                    "training",
                    "training_epoch",
                    preset=preset,
                    mode=mode,
                    num_utterances=num_utterances,
                    batch_size=min(BATCH_SIZE, num_utterances),
                    repeats=repeats if preset == "tiny" else slow,
                    device=device,
                )
    if cuda:
        add("gpu", "video_branch_flops", batch_size=4, repeats=repeats, device="cuda", dtype="bfloat16", attention=["sdpa", "eager"])
        add(
            "gpu",
            "device_cache_build",
            clip=utterance_clip,
            num_utterances=profile["device_cache_utterances"],
            preset="exp0",
            device="cuda",
            dtype="bfloat16",
            workers=profile["device_cache_workers"],
            batch_size=BATCH_SIZE,
            repeats=slow,
        )
    add("scaling", "scaling_utterances", clip=utterance_clip, counts=profile["scaling_counts"], repeats=slow, workers=max(profile["workers"]), batch_size=BATCH_SIZE)
    add("scaling", "scaling_frames", clip=clips[max(clips)], frame_counts=profile["frame_counts"], repeats=repeats)
    # Feature extraction at corpus scale: sharded cache builds, half-precision encoders on the CPU, cache sizes.
    add("scale", "sharded_cache_build", clip=utterance_clip, num_utterances=profile["shard_utterances"], process_counts=[1, 2], repeats=slow)
    for preset, batch_sizes in profile["dtype_encoders"]:
        for dtype in ("float32", "bfloat16"):
            preset_repeats = repeats if preset == "tiny" else slow
            add("scale", "encoder_forward", preset=preset, batch_sizes=batch_sizes, repeats=preset_repeats, breakdown=False, dtype=dtype)
    add("scale", "cache_sizes", clip=utterance_clip, num_utterances=profile["shard_utterances"])
    return jobs


def run_job(job: dict) -> dict:
    """Runs one job in this process: its rows, wall time and (for an isolated job) the process's peak memory."""
    # transformers and the model: seconds to import, so only when a job needs them
    from benchmarks.cases import CASES

    start = time.perf_counter()
    rows = CASES[job["case"]](**job["kwargs"])
    memory = {"peak_rss_mb": None, "cuda_peak_mb": None}
    if job["isolated"]:
        memory = {"peak_rss_mb": peak_rss_mb(), "cuda_peak_mb": cuda_peak_mb(job["kwargs"].get("device", "cpu"))}
    return {**job, "rows": rows, "wall_s": time.perf_counter() - start, **memory}


def run_job_in_subprocess(job: dict, folder: str) -> dict:
    """Runs one job in a fresh Python process (its own peak RSS) and reads back its result."""
    output = os.path.join(folder, "job.json")
    command = [sys.executable, os.path.abspath(__file__), "--job", json.dumps(job), "--job-output", output]
    subprocess.run(command, check=True)
    with open(output) as file:
        return json.load(file)


def make_clips(folder: str, profile: dict) -> tuple[dict[float, str], list[dict]]:
    """Writes one TV-like clip per duration of the profile; returns their paths and a description of each."""
    width, height = profile["clip_size"]
    clips, described = {}, []
    for seconds in profile["durations"]:
        path = write_tv_clip(os.path.join(folder, f"tv_{seconds}s.mp4"), seconds, width=width, height=height)
        clips[seconds] = path
        described.append({"seconds": seconds, "width": width, "height": height, "fps": FPS, "mbps": bitrate_mbps(path, seconds)})
    return clips, described


def run(profile_name: str, groups: tuple[str, ...], output: str | None, command: str, in_process: bool = False) -> dict:
    """Makes the clips, runs the jobs and writes (when `output` is set) `results.json` and `results.md` there."""
    profile = PROFILES[profile_name]
    cuda = torch.cuda.is_available()
    results = {"command": command, "profile": profile_name, "machine": machine_info(), "gpu": None if cuda else NO_GPU}
    # Other work on the machine slows every figure down: the 1-minute load average is recorded with them.
    results["load_average"] = {"start": os.getloadavg()[0]}
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mmemotion-bench-") as folder:
        clips, results["clips"] = make_clips(folder, profile)
        jobs = plan(profile, clips, groups, cuda)
        results["jobs"] = []
        for index, job in enumerate(jobs, start=1):
            print(f"[{index}/{len(jobs)}] {job['case']} {job['kwargs'].get('preset', '')} {job['kwargs'].get('mode', '')}".rstrip(), flush=True)
            isolated = job["isolated"] and not in_process
            results["jobs"].append(run_job_in_subprocess(job, folder) if isolated else run_job(job))
    results["total_s"] = time.perf_counter() - start
    results["load_average"]["end"] = os.getloadavg()[0]
    if output:
        os.makedirs(output, exist_ok=True)
        with open(os.path.join(output, "results.json"), "w") as file:
            json.dump(results, file, indent=1)
        with open(os.path.join(output, "results.md"), "w") as file:
            file.write(render_markdown(results))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer clip lengths, repeats and sizes: a few minutes")
    parser.add_argument("--only", nargs="+", choices=GROUPS, default=list(GROUPS), help="run only these groups")
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results"), help="results folder")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    parser.add_argument("--job-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        with open(args.job_output, "w") as file:
            json.dump(run_job(json.loads(args.job)), file)
        return
    command = "python benchmarks/run.py" + " ".join(["", *(argv if argv is not None else sys.argv[1:])])
    results = run("quick" if args.quick else "full", tuple(args.only), args.output, command)
    print(f"Done in {results['total_s'] / 60:.1f} min: {os.path.join(args.output, 'results.md')}")


if __name__ == "__main__":
    main()
