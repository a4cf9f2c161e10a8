"""Clips per second of `prepare_clips.py` with 2 worker processes on generated TV-like episodes.

    python benchmarks/prepare_clips_bench.py [--episode_seconds 40] [--repeats 2]

Two 640x360 25 fps episodes (H.264 with x264's default 10 s GOP, 48 kHz stereo AAC, `media.write_tv_clip`) are cut
into back-to-back utterances whose durations cycle around ECF's mean (3.2 s); every timed run starts from an empty
output folder. Results go to `benchmarks/results/prepare_clips.md`.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import prepare_clips  # noqa: E402
from benchmarks.media import write_tv_clip  # noqa: E402


ECF_CLIPS = 16720
UTTERANCE_SECONDS = (1.5, 2.5, 3.2, 5.6)  # mean 3.2 s, ECF's mean utterance duration
GAP_SECONDS = 0.2


def timestamp(seconds: float) -> str:
    return f"00:{int(seconds // 60):02d}:{seconds % 60:06.3f}"


def write_data_file(path: str, episodes: list[str], episode_seconds: float) -> int:
    conversations, count = [], 0
    for conversation_id, episode in enumerate(episodes, start=1):
        utterances, start = [], 0.5
        while True:
            end = start + UTTERANCE_SECONDS[len(utterances) % len(UTTERANCE_SECONDS)]
            if end > episode_seconds - 0.5:
                break
            utterances.append(
                {
                    "utterance_ID": len(utterances) + 1, "text": "hello .", "speaker": "Ross", "emotion": "neutral",
                    "video_source": [episode, timestamp(start), timestamp(end)],
                    "video_name": f"dia{conversation_id}utt{len(utterances) + 1}.mp4",
                }
            )
            start = end + GAP_SECONDS
        count += len(utterances)
        conversations.append({"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": []})
    with open(path, "w", encoding="utf-8") as file:
        json.dump(conversations, file)
    return count


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episode_seconds", type=float, default=40.0)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--num_workers", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "prepare_clips.md"))
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="prepare-clips-bench-") as work:
        episodes = ["S01E01", "S01E02"]
        os.makedirs(os.path.join(work, "friends"))
        for episode in episodes:
            write_tv_clip(os.path.join(work, "friends", f"Friends.{episode}.720p.mkv"), args.episode_seconds)
        data_file = os.path.join(work, "data.json")
        num_clips = write_data_file(data_file, episodes, args.episode_seconds)
        load_before = os.getloadavg()[0]
        seconds = []
        for repeat in range(args.repeats):
            output_dir = os.path.join(work, f"clips{repeat}")
            started = time.perf_counter()
            report = prepare_clips.main(
                ["--data_file", data_file, "--episodes_dir", os.path.join(work, "friends"), "--output_dir", output_dir,
                 "--num_workers", str(args.num_workers)]
            )
            seconds.append(time.perf_counter() - started)
            if report["skipped"]:
                raise RuntimeError(f"the benchmark skipped utterances: {report['skipped'][:3]}")
        load_after = os.getloadavg()[0]

    wall = statistics.median(seconds)
    rate = num_clips / wall
    per_worker = rate / args.num_workers
    extrapolated_hours = ECF_CLIPS / (per_worker * 16) / 3600
    lines = [
        "# prepare_clips.py throughput",
        "",
        f"Command: `python benchmarks/prepare_clips_bench.py --episode_seconds {args.episode_seconds:g} "
        f"--repeats {args.repeats} --num_workers {args.num_workers}`",
        "",
        f"- Input: 2 generated episodes of {args.episode_seconds:g} s, 640x360 25 fps H.264 (10 s GOP) + 48 kHz "
        f"stereo AAC; {num_clips} back-to-back utterances of 1.5-5.6 s (mean 3.2 s, as ECF).",
        f"- Output: H.264 (libx264 `veryfast`, CRF 20) + AAC mp4 at the episode size, {args.num_workers} worker processes.",
        f"- Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), shared; 1-minute load "
        f"average {load_before:.1f} before the timed runs, {load_after:.1f} after.",
        f"- Wall time per run (includes starting the pool): {', '.join(f'{s:.1f} s' for s in seconds)}; median {wall:.1f} s.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| clips/s, {args.num_workers} workers | {rate:.2f} |",
        f"| clips/s per worker | {per_worker:.2f} |",
        f"| **extrapolation**, not measured: the {ECF_CLIPS:,} ECF clips on 16 cores (16 workers, linear scaling "
        f"assumed) | {extrapolated_hours * 60:.0f} min |",
        "",
    ]
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as file:
        file.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
