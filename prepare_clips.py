#!/usr/bin/env python
# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Cut the ECF utterance clips (`dia{c}utt{u}.mp4`) from your own Friends episodes, or take them from MELD.

ECF ships timestamps (`video_source = [episode, start, end]`), not video. This script finds each episode under
`--episodes_dir` by its season/episode code, cuts every utterance to the frame and re-encodes it as H.264 + AAC mp4
named by `video_name`, the layout that `train.py --video_dir` reads:

    python prepare_clips.py --data_file Subtask_2_train.json --episodes_dir friends/ --output_dir clips/ \
        --num_workers 8

With `--meld_dir MELD.Raw --meld_mapping all_data_pair_ECFvsMELD.txt` the utterances that MECPE maps to a MELD clip
are copied from MELD; the others are cut from the episodes when `--episodes_dir` is given too.

A finished clip is never rewritten (a second run only cuts what is missing) and a clip only gets its final name once
it is complete. Every utterance that gets no clip is listed with its reason in the JSON report.
"""

import json
import logging
import multiprocessing
import os
import re
import shutil
import sys
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from fractions import Fraction

import av
import numpy as np
from tqdm.auto import tqdm
from transformers import HfArgumentParser

import ecf


logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mkv", ".mp4", ".avi", ".m4v", ".mov", ".webm", ".ts", ".mpg")
# `S01E16`, `s01e16-e17`, `S01E16E17`, `S01.E16`.
_SEASON_EPISODE_PATTERN = re.compile(
    r"(?<![a-z0-9])s(\d{1,2})[ ._-]?e(\d{1,2})(?:[ ._-]?-?[ ._-]?e?(\d{1,2}))?(?!\d)", re.I
)
# `1x01`, `1x16-1x17`, `1x16-17`.
_CROSS_PATTERN = re.compile(r"(?<![a-z0-9])(\d{1,2})x(\d{2})(?:[ ._-]*-[ ._-]*(?:\d{1,2}x)?(\d{2}))?(?!\d)", re.I)
# `Season 01/Episode 05 ...`, `Season 1/05 - The One ...`, `Season 01/E05.mkv`.
_SEASON_FOLDER_PATTERN = re.compile(r"^season[ ._-]*(\d{1,2})$", re.I)
_EPISODE_IN_SEASON_PATTERN = re.compile(r"^(?:(?:episode|ep|e)[ ._-]*)?(\d{1,2})(?!\d)", re.I)
_EPISODE_CODE_PATTERN = re.compile(r"^S(\d{2})E(\d{2})$")
_TIMESTAMP_PATTERN = re.compile(r"^(\d+):(\d{1,2}):(\d{1,2}(?:\.\d+)?)$")
MELD_SPLIT_FOLDERS = {
    "train": ("train_splits",),
    "dev": ("dev_splits_complete", "dev_splits"),
    "test": ("output_repeated_splits_test", "test_splits"),
}
TEMPORARY_SUFFIX = ".part"


@dataclass
class PrepareClipsArguments:
    data_file: str = field(
        metadata={"help": "An ECF / SemEval-2024 Task 3 JSON file (utterances with `video_source`)."}
    )
    output_dir: str = field(metadata={"help": "Where the clips go, named by `video_name` (dia{c}utt{u}.mp4)."})
    episodes_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder (searched recursively) of the Friends episodes, found by their code: "
            "Friends.S01E01.720p.mkv, friends_s01e01.mp4, Friends - 1x01 - ..., Season 01/Episode 01.avi, S01E16-E17."
        },
    )
    meld_dir: str | None = field(
        default=None,
        metadata={"help": "MELD.Raw folder (train_splits/, dev_splits_complete/, output_repeated_splits_test/)."},
    )
    meld_mapping: str | None = field(
        default=None, metadata={"help": "MECPE's all_data_pair_ECFvsMELD.txt: the MELD clip of each ECF utterance."}
    )
    link_meld: bool = field(
        default=False, metadata={"help": "Symlink the MELD clips instead of copying them."}
    )
    num_workers: int = field(
        default=1, metadata={"help": "Processes cutting episodes in parallel (0: cut in this process)."}
    )
    width: int | None = field(default=None, metadata={"help": "Output width (default: the episode's)."})
    height: int | None = field(default=None, metadata={"help": "Output height (default: the episode's)."})
    offsets: str | None = field(
        default=None,
        metadata={
            "help": 'JSON file {"S01E01": 0.5, ...}: seconds added to the timestamps of an episode, for copies '
            "whose timing differs from the one ECF was annotated on."
        },
    )
    min_duration: float = field(default=0.05, metadata={"help": "Shorter utterances are reported, not cut (s)."})
    max_duration: float = field(default=60.0, metadata={"help": "Longer utterances are reported, not cut (s)."})
    crf: int = field(default=20, metadata={"help": "libx264 constant rate factor of the clips."})
    preset: str = field(default="veryfast", metadata={"help": "libx264 preset of the clips."})
    report_file: str | None = field(
        default=None, metadata={"help": "JSON report (default: OUTPUT_DIR/prepare_clips_report.json)."}
    )

    def __post_init__(self):
        if self.episodes_dir is None and self.meld_dir is None:
            raise ValueError("Give --episodes_dir (to cut from episodes) and/or --meld_dir with --meld_mapping.")
        if (self.meld_dir is None) != (self.meld_mapping is None):
            raise ValueError("--meld_dir and --meld_mapping go together.")
        for name in ("episodes_dir", "meld_dir"):
            folder = getattr(self, name)
            if folder is not None and not os.path.isdir(folder):
                raise ValueError(f"--{name} {folder} is not a folder.")
        if (self.width is None) != (self.height is None):
            raise ValueError("--width and --height go together.")
        if self.width is not None and (self.width <= 0 or self.height <= 0 or self.width % 2 or self.height % 2):
            raise ValueError(f"--width/--height must be positive and even (yuv420p), got {self.width}x{self.height}.")
        if not 0 <= self.min_duration < self.max_duration:
            raise ValueError(
                f"need 0 <= --min_duration < --max_duration, got {self.min_duration}, {self.max_duration}."
            )
        if self.report_file is None:
            self.report_file = os.path.join(self.output_dir, "prepare_clips_report.json")


@dataclass
class Utterance:
    conversation_id: int
    utterance_id: int
    video_name: str
    episode: str | None = None
    start: float | None = None
    end: float | None = None


@dataclass
class CutSettings:
    width: int | None
    height: int | None
    crf: int
    preset: str


def parse_timestamp(value) -> float:
    """`HH:MM:SS.mmm` (ECF's format) to seconds."""
    match = _TIMESTAMP_PATTERN.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"timestamp {value!r} is not HH:MM:SS.mmm")
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _episode_codes(relative_path: str) -> list[str]:
    """The episode codes a file's path names (two for a two-part file), or [] when none."""
    name = os.path.splitext(os.path.basename(relative_path))[0]
    for pattern in (_SEASON_EPISODE_PATTERN, _CROSS_PATTERN):
        match = pattern.search(name)
        if match:
            season, first, last = int(match.group(1)), int(match.group(2)), match.group(3)
            last = int(last) if last is not None else first
            if last < first or last - first > 1:  # `1x01-05` would be a range of something else, not a two-parter
                last = first
            return [f"S{season:02d}E{episode:02d}" for episode in range(first, last + 1)]
    season_folder = _SEASON_FOLDER_PATTERN.match(os.path.basename(os.path.dirname(relative_path)))
    episode = _EPISODE_IN_SEASON_PATTERN.match(name)
    if season_folder and episode:
        return [f"S{int(season_folder.group(1)):02d}E{int(episode.group(1)):02d}"]
    return []


def discover_episodes(episodes_dir: str, needed_codes: set[str] | None = None) -> dict[str, str]:
    """Maps each episode code to its video file under `episodes_dir` (searched recursively).

    Raises:
        ValueError: two files match the same needed code (the message names them).
    """
    matches = defaultdict(list)
    for folder, _, files in os.walk(episodes_dir):
        for file_name in sorted(files):
            if not file_name.lower().endswith(VIDEO_EXTENSIONS) or file_name.endswith(TEMPORARY_SUFFIX):
                continue
            path = os.path.join(folder, file_name)
            for code in _episode_codes(os.path.relpath(path, episodes_dir)):
                matches[code].append(path)
    ambiguous = {
        code: paths
        for code, paths in sorted(matches.items())
        if len(paths) > 1 and (needed_codes is None or code in needed_codes)
    }
    if ambiguous:
        lines = "; ".join(f"{code}: {', '.join(paths)}" for code, paths in ambiguous.items())
        raise ValueError(f"{episodes_dir}: more than one file for an episode, keep one: {lines}")
    return {code: paths[0] for code, paths in matches.items()}


def read_meld_mapping(path: str) -> dict[tuple[int, int], tuple[str, int, int]]:
    """Reads MECPE's all_data_pair_ECFvsMELD.txt: (ECF conversation, utterance) -> (MELD split, dialogue, utterance).

    Blocks of a line `conversation_ID num_utterances`, a line of pairs, then `num_utterances` lines
    `utterance_ID | speaker | emotion | text | split_diaX_uttY` (the last field empty where ECF added the utterance).
    """
    with open(path, encoding="utf-8") as file:
        lines = [line.rstrip("\n") for line in file]
    mapping, index = {}, 0
    while index < len(lines):
        if not lines[index].strip():
            index += 1
            continue
        header = lines[index].split()
        if len(header) != 2 or not all(part.isdigit() for part in header):
            raise ValueError(
                f"{path}: line {index + 1}: expected 'conversation_ID num_utterances', got {lines[index]!r}"
            )
        conversation_id, num_utterances = map(int, header)
        utterance_lines = lines[index + 2 : index + 2 + num_utterances]
        if len(utterance_lines) != num_utterances:
            raise ValueError(f"{path}: conversation {conversation_id}: the file ends inside its utterances")
        for offset, line in enumerate(utterance_lines):
            fields = [part.strip() for part in line.split(" | ")]
            if len(fields) < 5 or not fields[0].isdigit():
                raise ValueError(f"{path}: line {index + 3 + offset}: not 'id | speaker | emotion | text | clip'")
            clip = fields[-1]
            if not clip:
                continue
            match = re.fullmatch(r"(train|dev|test)_dia(\d+)_utt(\d+)", clip)
            if match is None:
                raise ValueError(f"{path}: line {index + 3 + offset}: MELD clip {clip!r} is not split_diaX_uttY")
            mapping[conversation_id, int(fields[0])] = (match.group(1), int(match.group(2)), int(match.group(3)))
        index += 2 + num_utterances
    return mapping


def meld_clip_path(meld_dir: str, split: str, dialogue: int, utterance: int) -> str | None:
    name = f"dia{dialogue}_utt{utterance}.mp4"
    for folder in MELD_SPLIT_FOLDERS[split]:
        path = os.path.join(meld_dir, folder, name)
        if os.path.isfile(path):
            return path
    return None


def read_offsets(path: str) -> dict[str, float]:
    with open(path, encoding="utf-8") as file:
        offsets = json.load(file)
    if not isinstance(offsets, dict):
        raise ValueError(f"{path}: expected a JSON object {{\"S01E01\": 0.5, ...}}")
    for code, seconds in offsets.items():
        if not _EPISODE_CODE_PATTERN.match(code) or isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
            raise ValueError(f"{path}: {code!r}: {seconds!r}: expected an episode code like S01E01 and seconds")
    return {code: float(seconds) for code, seconds in offsets.items()}


def read_utterances(data_file: str, offsets: dict[str, float]) -> tuple[list[Utterance], list[dict]]:
    """The utterances of `data_file` with their episode range (offset applied), and the ones whose
    `video_source` cannot be read, as report entries."""
    utterances, skipped = [], []
    for conversation in ecf.load_conversations(data_file, require_labels=False):
        for record in conversation["conversation"]:
            utterance = Utterance(
                conversation_id=conversation["conversation_ID"],
                utterance_id=record["utterance_ID"],
                video_name=record.get("video_name")
                or f"dia{conversation['conversation_ID']}utt{record['utterance_ID']}.mp4",
            )
            source = record.get("video_source")
            try:
                if not (isinstance(source, list) and len(source) == 3):
                    raise ValueError(f"video_source {source!r} is not [episode, start, end]")
                episode = source[0].strip().upper() if isinstance(source[0], str) else None
                if episode is None or not _EPISODE_CODE_PATTERN.match(episode):
                    raise ValueError(f"episode {source[0]!r} is not a code like S01E01")
                shift = offsets.get(episode, 0.0)
                utterance.episode = episode
                utterance.start, utterance.end = parse_timestamp(source[1]) + shift, parse_timestamp(source[2]) + shift
            except ValueError as error:
                skipped.append(report_entry(utterance, "unreadable video_source", str(error)))
            utterances.append(utterance)
    return utterances, skipped


def report_entry(utterance: Utterance, reason: str, detail: str) -> dict:
    """A skipped utterance in the report: its ids, clip name and range, a short `reason` (counted in the summary)
    and the `detail`."""
    entry = {key: value for key, value in asdict(utterance).items() if value is not None}
    entry.update(reason=reason, detail=detail)
    return entry


def _range_problem(utterance: Utterance, args: PrepareClipsArguments) -> tuple[str, str] | None:
    duration = utterance.end - utterance.start
    if duration <= 0:
        return "end <= start", f"start {utterance.start:.3f} s, end {utterance.end:.3f} s"
    if utterance.start < 0:
        return "start before the episode", f"start {utterance.start:.3f} s (after the offset)"
    if duration < args.min_duration:
        return "too short", f"duration {duration:.3f} s is under --min_duration {args.min_duration} s"
    if duration > args.max_duration:
        return "too long", f"duration {duration:.3f} s is over --max_duration {args.max_duration} s"
    return None


def _temporary_path(final_path: str) -> str:
    return f"{final_path}.{os.getpid()}{TEMPORARY_SUFFIX}"


def _audio_slice(frame: av.AudioFrame, start: float, end: float) -> av.AudioFrame | None:
    """The part of a decoded audio frame inside [start, end), as a new frame (None when it is outside)."""
    rate = frame.sample_rate
    first = max(0, int(round((start - frame.time) * rate)))
    last = min(frame.samples, int(round((end - frame.time) * rate)))
    if last <= first:
        return None
    if first == 0 and last == frame.samples:
        return frame
    # Packed formats interleave the channels in one row.
    stride = 1 if frame.format.is_planar else len(frame.layout.channels)
    samples = np.ascontiguousarray(frame.to_ndarray()[:, first * stride : last * stride])
    sliced = av.AudioFrame.from_ndarray(samples, format=frame.format.name, layout=frame.layout.name)
    sliced.sample_rate = rate
    return sliced


def _seek_to_keyframe_before(container, video_in, time: float) -> None:
    """Seeks so that decoding starts at a keyframe at or before `time`. Some demuxers (MPEG-TS) land on a later
    keyframe: then an earlier target is tried."""
    target = time
    for _ in range(8):
        container.seek(int(target * av.time_base), backward=True, any_frame=False)
        times = (frame.time for packet in container.demux(video_in) for frame in packet.decode())
        first = next((frame_time for frame_time in times if frame_time is not None), None)
        if first is None or first <= time + 1e-6 or target <= 0:
            break
        target = max(0.0, target - max(1.0, 2 * (first - time)))
    container.seek(int(target * av.time_base), backward=True, any_frame=False)


def cut_clip(container, utterance: Utterance, final_path: str, settings: CutSettings) -> tuple[str, str] | None:
    """Writes [start, end) of the open episode to `final_path`; returns None, or (category, detail) of why no clip
    was written."""
    video_in = container.streams.video[0]
    audio_in = container.streams.audio[0] if container.streams.audio else None
    rate = video_in.average_rate or video_in.guessed_rate
    # ECF times are player positions (what `ffmpeg -ss` counts): from the container's start time, which is not 0 in
    # every container (MPEG-TS).
    origin = container.start_time / av.time_base if container.start_time else 0.0
    start, end = utterance.start + origin, utterance.end + origin
    # Decoding starts at the keyframe at or before `start`; the frames before `start` are decoded and dropped.
    _seek_to_keyframe_before(container, video_in, start)
    temporary_path = _temporary_path(final_path)
    num_frames = 0
    try:
        with av.open(temporary_path, mode="w", format="mp4") as output:
            video_out = output.add_stream("libx264", rate=rate)
            video_out.width = settings.width or video_in.codec_context.width
            video_out.height = settings.height or video_in.codec_context.height
            video_out.pix_fmt = "yuv420p"
            video_out.options = {"crf": str(settings.crf), "preset": settings.preset}
            audio_out = None
            if audio_in is not None:
                audio_out = output.add_stream("aac", rate=audio_in.codec_context.sample_rate)
                audio_out.layout = audio_in.codec_context.layout.name
            audio_samples = 0
            streams = [video_in] + ([audio_in] if audio_in is not None else [])
            finished = {stream.index: False for stream in streams}
            for packet in container.demux(streams):
                if all(finished.values()):
                    break
                for frame in packet.decode():
                    if frame.time is None or frame.time >= end - 1e-6:
                        finished[packet.stream.index] = frame.time is not None
                        continue
                    if packet.stream.type == "video":
                        if frame.time < start - 1e-6:
                            continue
                        frame = frame.reformat(width=video_out.width, height=video_out.height, format="yuv420p")
                        frame.pts, frame.time_base = num_frames, Fraction(1) / rate
                        output.mux(video_out.encode(frame))
                        num_frames += 1
                    elif audio_out is not None:
                        # The audio frame holding `start` begins before it: it is sliced, not dropped.
                        sliced = _audio_slice(frame, start, end)
                        if sliced is not None:
                            sliced.pts, sliced.time_base = audio_samples, Fraction(1, sliced.sample_rate)
                            audio_samples += sliced.samples
                            output.mux(audio_out.encode(sliced))
            if num_frames:
                output.mux(video_out.encode())
                if audio_out is not None:
                    output.mux(audio_out.encode())
        if not num_frames:
            return "no video frame in range", f"no video frame in [{utterance.start:.3f}, {utterance.end:.3f}) s"
        os.replace(temporary_path, final_path)
    finally:
        if os.path.exists(temporary_path):
            os.remove(temporary_path)
    return None


def cut_episode(
    job: tuple[str, list[Utterance], str, CutSettings],
) -> list[tuple[Utterance, tuple[str, str] | None]]:
    """Cuts all the utterances of one episode (opened once), in time order. Returns (utterance, None) for a clip
    written and (utterance, (category, detail)) for one that could not be."""
    episode_path, utterances, output_dir, settings = job
    try:
        container = av.open(episode_path)
    except (av.FFmpegError, OSError) as error:
        return [(utterance, ("unreadable episode", f"{episode_path}: {error}")) for utterance in utterances]
    results = []
    with container:
        if not container.streams.video:
            reason = ("unreadable episode", f"{episode_path} has no video stream")
            return [(utterance, reason) for utterance in utterances]
        duration = container.duration / av.time_base if container.duration else None
        for utterance in sorted(utterances, key=lambda utterance: (utterance.start, utterance.end)):
            if duration is not None and utterance.start >= duration:
                detail = f"start {utterance.start:.3f} s is past the episode's end ({duration:.3f} s)"
                results.append((utterance, ("start past the episode's end", detail)))
                continue
            try:
                reason = cut_clip(container, utterance, os.path.join(output_dir, utterance.video_name), settings)
            except (av.FFmpegError, OSError, ValueError) as error:
                reason = ("cutting failed", f"{episode_path}: {error}")
            results.append((utterance, reason))
    return results


def copy_meld_clip(source: str, final_path: str, link: bool) -> None:
    if link:
        os.symlink(os.path.abspath(source), final_path)
        return
    temporary_path = _temporary_path(final_path)
    shutil.copyfile(source, temporary_path)
    os.replace(temporary_path, final_path)


def prepare_clips(args: PrepareClipsArguments) -> dict:
    """Makes the clips of `args.data_file`; returns the report (also written to `args.report_file`)."""
    offsets = read_offsets(args.offsets) if args.offsets else {}
    utterances, skipped = read_utterances(args.data_file, offsets)
    unreadable = {(entry["conversation_id"], entry["utterance_id"]) for entry in skipped}
    os.makedirs(args.output_dir, exist_ok=True)
    for name in os.listdir(args.output_dir):  # left by an interrupted run
        if name.endswith(TEMPORARY_SUFFIX):
            os.remove(os.path.join(args.output_dir, name))

    names = Counter(utterance.video_name for utterance in utterances)
    repeated = [name for name, count in names.items() if count > 1]
    if repeated:
        raise ValueError(f"{args.data_file}: several utterances share a video_name: {repeated[:10]}")

    sources: dict[str, str] = {}
    meld_mapping = read_meld_mapping(args.meld_mapping) if args.meld_mapping else {}
    to_cut = []
    for utterance in utterances:
        final_path = os.path.join(args.output_dir, utterance.video_name)
        if os.path.lexists(final_path):
            sources[utterance.video_name] = "existing"
            continue
        meld_clip = meld_mapping.get((utterance.conversation_id, utterance.utterance_id))
        meld_path = meld_clip_path(args.meld_dir, *meld_clip) if meld_clip else None
        if meld_path is not None:
            copy_meld_clip(meld_path, final_path, args.link_meld)
            sources[utterance.video_name] = f"meld:{os.path.relpath(meld_path, args.meld_dir)}"
            continue
        if (utterance.conversation_id, utterance.utterance_id) in unreadable:
            continue
        if args.episodes_dir is None:
            why = "MELD clip missing" if meld_clip else "no MELD clip in the mapping"
            skipped.append(report_entry(utterance, "no MELD clip", f"{why} and no --episodes_dir"))
            continue
        problem = _range_problem(utterance, args)
        if problem is not None:
            skipped.append(report_entry(utterance, *problem))
            continue
        to_cut.append(utterance)

    jobs = []
    if to_cut:
        episodes = discover_episodes(args.episodes_dir, {utterance.episode for utterance in to_cut})
        settings = CutSettings(args.width, args.height, args.crf, args.preset)
        by_episode = defaultdict(list)
        for utterance in to_cut:
            if utterance.episode in episodes:
                by_episode[utterance.episode].append(utterance)
            else:
                detail = f"no file for {utterance.episode} in {args.episodes_dir}"
                skipped.append(report_entry(utterance, "missing episode", detail))
        # Longest episodes first, so that the last worker does not start a long one alone.
        jobs = [
            (episodes[code], episode_utterances, args.output_dir, settings)
            for code, episode_utterances in sorted(by_episode.items(), key=lambda item: -len(item[1]))
        ]

    num_to_cut = sum(len(job[1]) for job in jobs)
    with tqdm(total=num_to_cut, desc="cutting clips", unit="clip", disable=not num_to_cut) as progress:
        if args.num_workers > 0 and len(jobs) > 1:
            with multiprocessing.Pool(min(args.num_workers, len(jobs))) as pool:
                episode_results = pool.imap_unordered(cut_episode, jobs)
                _collect(episode_results, sources, skipped, progress)
        else:
            _collect(map(cut_episode, jobs), sources, skipped, progress)

    counts = Counter(source.split(":", 1)[0] for source in sources.values())
    summary = (
        f"{len(utterances)} utterances: {counts['episode']} cut from episodes, {counts['meld']} from MELD, "
        f"{counts['existing']} already there, {len(skipped)} skipped"
    )
    reasons = Counter(entry["reason"] for entry in skipped)
    if reasons:
        summary += " (" + ", ".join(f"{count}: {reason}" for reason, count in reasons.most_common()) + ")"
    report = {
        "summary": summary,
        "data_file": args.data_file,
        "clips": dict(sorted(sources.items())),
        "skipped": sorted(skipped, key=lambda entry: (entry["conversation_id"], entry["utterance_id"])),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.report_file)), exist_ok=True)
    with open(args.report_file, "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
        file.write("\n")
    logger.info(summary)
    if skipped:
        logger.warning(f"{len(skipped)} utterances got no clip; their reasons are in {args.report_file}")
    return report


def _collect(episode_results, sources: dict[str, str], skipped: list[dict], progress) -> None:
    for results in episode_results:
        for utterance, reason in results:
            if reason is None:
                sources[utterance.video_name] = f"episode:{utterance.episode}"
            else:
                skipped.append(report_entry(utterance, *reason))
        progress.update(len(results))


def main(args: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    (prepare_args,) = HfArgumentParser(PrepareClipsArguments).parse_args_into_dataclasses(args=args)
    return prepare_clips(prepare_args)


if __name__ == "__main__":
    main(sys.argv[1:])
