"""prepare_clips.py on generated episodes whose frames show their own index as a grey level."""

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from fractions import Fraction

import av
import numpy as np
import pytest

import prepare_clips
from demo.media import write_mp4


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SAMPLE_RATE = 16000
GREY_STEP = 2  # frame index i is drawn in grey level 2 * i, which survives H.264 to within one step


def write_episode(path, fps, seconds, gop_seconds=2.0, with_audio=True):
    num_frames = int(seconds * fps)
    assert GREY_STEP * num_frames < 256
    levels = (np.arange(num_frames) * GREY_STEP).astype(np.uint8)
    frames = np.broadcast_to(levels[:, None, None, None], (num_frames, 48, 64, 3)).copy()
    audio = 0.3 * np.sin(np.arange(int(seconds * SAMPLE_RATE)) * 2 * np.pi * 440 / SAMPLE_RATE) if with_audio else None
    os.makedirs(os.path.dirname(path), exist_ok=True)
    return write_mp4(path, frames, fps=fps, audio=audio, sample_rate=SAMPLE_RATE, gop_size=round(gop_seconds * fps))


def frame_indexes(path):
    with av.open(path) as container:
        return [int(round(frame.to_ndarray(format="gray").mean() / GREY_STEP)) for frame in container.decode(video=0)]


def audio_seconds(path):
    with av.open(path) as container:
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.codec_context.sample_rate


def timestamp(seconds):
    return f"00:{int(seconds // 60):02d}:{seconds % 60:06.3f}"


def write_data_file(path, ranges):
    """One conversation per entry of `ranges`, a list of utterances (episode, start, end) in seconds."""
    conversations = []
    for conversation_id, utterances in enumerate(ranges, start=1):
        conversation = []
        for utterance_id, (episode, start, end) in enumerate(utterances, start=1):
            conversation.append(
                {
                    "utterance_ID": utterance_id,
                    "text": "hello .",
                    "speaker": "Ross",
                    "emotion": "neutral",
                    "video_source": [episode, timestamp(start), timestamp(end)],
                    "video_name": f"dia{conversation_id}utt{utterance_id}.mp4",
                }
            )
        conversations.append(
            {"conversation_ID": conversation_id, "conversation": conversation, "emotion-cause_pairs": []}
        )
    with open(path, "w", encoding="utf-8") as file:
        json.dump(conversations, file)
    return path


def run(tmp_path, data_file, *extra, **kwargs):
    output_dir = kwargs.pop("output_dir", tmp_path / "clips")
    args = ["--data_file", str(data_file), "--output_dir", str(output_dir), "--num_workers", "0", *map(str, extra)]
    return prepare_clips.main(args)


@pytest.mark.parametrize(
    "fps, extension",
    [(Fraction(25), "mkv"), (Fraction(24000, 1001), "mkv"), (Fraction(25), "ts")],
    ids=["25fps-mkv", "23.976fps-mkv", "25fps-mpegts"],  # MPEG-TS seeks land after the target
)
def test_cuts_are_frame_accurate_with_sparse_keyframes(tmp_path, fps, extension):
    episode = write_episode(str(tmp_path / "friends" / f"Friends.S01E01.720p.BluRay.x264.{extension}"), fps, seconds=5)
    with av.open(episode) as container:  # the MPEG-TS muxer shows the first frame a little after the start
        stream = container.streams.video[0]
        first_frame_time = float(stream.start_time * stream.time_base) - (container.start_time or 0) / av.time_base
    ranges = [(2.31, 3.07), (0.5, 1.0), (4.1, 4.9), (1.04, 2.5)]  # not in time order, inside a 2 s GOP
    data_file = write_data_file(tmp_path / "data.json", [[("S01E01", start, end) for start, end in ranges]])

    report = run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")

    assert report["skipped"] == []
    for utterance_id, (start, end) in enumerate(ranges, start=1):
        clip = str(tmp_path / "clips" / f"dia1utt{utterance_id}.mp4")
        assert report["clips"][os.path.basename(clip)] == "episode:S01E01"
        # the frames whose time is in [start, end)
        expected = list(range(math.ceil((start - first_frame_time) * fps), math.ceil((end - first_frame_time) * fps)))
        indexes = frame_indexes(clip)
        assert abs(indexes[0] - expected[0]) <= 1 and abs(indexes[-1] - expected[-1]) <= 1, (indexes, expected)
        assert abs(len(indexes) - len(expected)) <= 1
        with av.open(clip) as container:
            assert container.streams.video[0].average_rate == fps
            assert container.streams.video[0].codec_context.name == "h264"
            assert container.streams.audio[0].codec_context.name == "aac"
        # AAC adds at most one frame of priming / padding (1024 samples) on top of the range.
        assert abs(audio_seconds(clip) - (end - start)) <= 2048 / SAMPLE_RATE


def test_size_and_offsets(tmp_path):
    write_episode(str(tmp_path / "friends" / "friends_s01e02.mp4"), 25, seconds=4)
    data_file = write_data_file(tmp_path / "data.json", [[("S01E02", 1.0, 1.6)]])
    offsets = tmp_path / "offsets.json"
    offsets.write_text(json.dumps({"S01E02": 0.8}))

    run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends", "--width", 32, "--height", 24, "--offsets", offsets)

    clip = str(tmp_path / "clips" / "dia1utt1.mp4")
    with av.open(clip) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.width, stream.codec_context.height) == (32, 24)
    assert abs(frame_indexes(clip)[0] - 45) <= 1  # (1.0 + 0.8) s at 25 fps


def test_resume_cuts_only_what_is_missing(tmp_path):
    write_episode(str(tmp_path / "friends" / "Friends - 1x03 - The One With the Thumb.avi"), 25, seconds=4)
    data_file = write_data_file(tmp_path / "data.json", [[("S01E03", 0.2, 0.9), ("S01E03", 1.0, 2.0)]])
    run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")
    first, second = tmp_path / "clips" / "dia1utt1.mp4", tmp_path / "clips" / "dia1utt2.mp4"
    first_mtime = first.stat().st_mtime_ns
    second.unlink()
    time.sleep(0.01)

    report = run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")

    assert first.stat().st_mtime_ns == first_mtime
    assert second.is_file()
    assert report["clips"] == {"dia1utt1.mp4": "existing", "dia1utt2.mp4": "episode:S01E03"}


def test_killed_run_leaves_no_half_clip_and_a_rerun_completes(tmp_path):
    write_episode(str(tmp_path / "friends" / "S01E04.mkv"), 25, seconds=5)
    write_episode(str(tmp_path / "friends" / "S01E05.mkv"), 25, seconds=5)
    utterances = [(episode, start / 10, start / 10 + 1.5) for episode in ("S01E04", "S01E05") for start in range(30)]
    data_file = write_data_file(tmp_path / "data.json", [utterances])
    output_dir = tmp_path / "clips"
    command = [sys.executable, os.path.join(ROOT, "prepare_clips.py"), "--data_file", str(data_file),
               "--episodes_dir", str(tmp_path / "friends"), "--output_dir", str(output_dir), "--num_workers", "2"]
    process = subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    deadline = time.time() + 60
    while time.time() < deadline and not (output_dir.is_dir() and any(output_dir.glob("*.mp4"))):
        time.sleep(0.05)
    os.killpg(process.pid, 9)  # the workers too, mid-clip
    process.wait()

    finished = [name for name in os.listdir(output_dir) if name.endswith(".mp4")]
    assert 0 < len(finished) < len(utterances)
    for name in finished:  # every final-named clip is whole
        assert len(frame_indexes(str(output_dir / name))) in (37, 38)

    report = run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")
    assert report["skipped"] == []
    expected = [f"dia1utt{i}.mp4" for i in range(1, 61)] + ["prepare_clips_report.json"]
    assert sorted(os.listdir(output_dir)) == sorted(expected)


def test_every_bad_case_is_reported(tmp_path):
    episodes_dir = tmp_path / "friends"
    write_episode(str(episodes_dir / "Season 01" / "Episode 06.mp4"), 25, seconds=3)
    (episodes_dir / "Friends.S01E07.mkv").write_bytes(b"not a video at all")
    data_file = write_data_file(
        tmp_path / "data.json",
        [[
            ("S01E06", 1.0, 1.5),  # fine
            ("S01E06", 1.5, 1.5),  # end <= start
            ("S01E06", 1.0, 1.01),  # too short
            ("S01E06", 0.0, 61.0),  # too long
            ("S01E06", 10.0, 11.0),  # past the episode's end
            ("S02E01", 1.0, 2.0),  # no such episode file
            ("S01E07", 1.0, 2.0),  # unreadable
        ]],
    )

    completed = subprocess.run(
        [sys.executable, "prepare_clips.py", "--data_file", str(data_file), "--episodes_dir", str(episodes_dir),
         "--output_dir", str(tmp_path / "clips")],
        cwd=ROOT, capture_output=True, text=True,
    )

    assert completed.returncode == 0, completed.stderr
    with open(tmp_path / "clips" / "prepare_clips_report.json") as file:
        report = json.load(file)
    reasons = {entry["utterance_id"]: entry["reason"] for entry in report["skipped"]}
    assert reasons == {
        2: "end <= start",
        3: "too short",
        4: "too long",
        5: "start past the episode's end",
        6: "missing episode",
        7: "unreadable episode",
    }
    assert report["clips"] == {"dia1utt1.mp4": "episode:S01E06"}
    assert "Friends.S01E07.mkv" in next(e["detail"] for e in report["skipped"] if e["utterance_id"] == 7)
    assert report["summary"] in completed.stderr
    assert "6 skipped" in report["summary"]
    assert sorted(os.listdir(tmp_path / "clips")) == ["dia1utt1.mp4", "prepare_clips_report.json"]


@pytest.mark.parametrize(
    "relative_path, codes",
    [
        ("Friends.S01E01.720p.BluRay.x264.mkv", ["S01E01"]),
        ("friends_s01e01.mp4", ["S01E01"]),
        ("Season 01/Episode 05.avi", ["S01E05"]),
        ("Season 3/07 - The One with the Race Car Bed.mkv", ["S03E07"]),
        ("Friends - 1x01 - The One Where Monica Gets a Roommate.mkv", ["S01E01"]),
        ("Friends.S01E16-E17.The.One.With.Two.Parts.mkv", ["S01E16", "S01E17"]),
        ("Friends - 1x16-1x17 - The One With Two Parts.avi", ["S01E16", "S01E17"]),
        ("Friends.S10E17E18.mkv", ["S10E17", "S10E18"]),
        ("Friends.1080p.x264.mkv", []),
    ],
)
def test_episode_codes_of_the_usual_naming_schemes(relative_path, codes):
    assert prepare_clips._episode_codes(relative_path) == codes


def test_ambiguous_episode_is_an_error_naming_the_files(tmp_path):
    for name in ("Friends.S01E01.720p.mkv", "Season 01/friends_s01e01.mp4", "Friends.S01E02.mkv", "Friends.S01E02.srt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    with pytest.raises(ValueError, match=r"S01E01: .*Friends\.S01E01\.720p\.mkv, .*friends_s01e01\.mp4"):
        prepare_clips.discover_episodes(str(tmp_path), {"S01E01", "S01E02"})
    assert prepare_clips.discover_episodes(str(tmp_path), {"S01E02"})["S01E02"].endswith("Friends.S01E02.mkv")


def test_meld_clips_are_copied_and_the_rest_cut_from_episodes(tmp_path):
    # The fixture maps conversation 1's utterances 1-2 to MELD train_dia0_utt0-1, utterance 3 is an ECF addition
    # (no MELD clip) and conversation 2's utterance 1 maps to dev_dia3_utt0, which this MELD folder lacks.
    meld_dir = tmp_path / "MELD.Raw"
    write_episode(str(meld_dir / "train_splits" / "dia0_utt0.mp4"), 25, seconds=1)
    shutil.copy(meld_dir / "train_splits" / "dia0_utt0.mp4", meld_dir / "train_splits" / "dia0_utt1.mp4")
    (meld_dir / "dev_splits_complete").mkdir()
    write_episode(str(tmp_path / "friends" / "Friends.S01E01.mkv"), 25, seconds=4)
    data_file = write_data_file(
        tmp_path / "data.json", [[("S01E01", 0.1, 0.5), ("S01E01", 0.5, 1.0), ("S01E01", 1.0, 2.0)], [("S01E01", 2.0, 3.0)]]
    )
    mapping = os.path.join(FIXTURES, "ecf_meld_mapping.txt")

    meld_only = run(tmp_path, data_file, "--meld_dir", meld_dir, "--meld_mapping", mapping, output_dir=tmp_path / "meld")
    assert meld_only["clips"] == {
        "dia1utt1.mp4": "meld:train_splits/dia0_utt0.mp4",
        "dia1utt2.mp4": "meld:train_splits/dia0_utt1.mp4",
    }
    assert {(e["conversation_id"], e["utterance_id"]): e["reason"] for e in meld_only["skipped"]} == {
        (1, 3): "no MELD clip",
        (2, 1): "no MELD clip",
    }

    both = run(tmp_path, data_file, "--meld_dir", meld_dir, "--meld_mapping", mapping, "--episodes_dir", tmp_path / "friends")
    assert both["skipped"] == []
    assert both["clips"]["dia1utt3.mp4"] == both["clips"]["dia2utt1.mp4"] == "episode:S01E01"
    assert both["clips"]["dia1utt1.mp4"] == "meld:train_splits/dia0_utt0.mp4"
    copied = (tmp_path / "clips" / "dia1utt1.mp4").read_bytes()
    assert copied == (meld_dir / "train_splits" / "dia0_utt0.mp4").read_bytes()


def test_train_reads_the_clips_it_made_with_no_missing_clip(tmp_path, caplog):
    import train

    write_episode(str(tmp_path / "friends" / "Friends.S01E01.mkv"), 25, seconds=5)
    emotions = ["joy", "anger", "neutral", "joy", "anger", "neutral"]
    data_file = write_data_file(tmp_path / "data.json", [[("S01E01", 0.6 * i, 0.6 * i + 0.5) for i in range(6)]])
    with open(data_file) as file:
        conversations = json.load(file)
    for utterance, emotion in zip(conversations[0]["conversation"], emotions):
        utterance["emotion"] = emotion
    with open(data_file, "w") as file:
        json.dump(conversations, file)
    report = run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")
    assert len(report["clips"]) == 6

    caplog.set_level(logging.INFO)
    train.main([
        "--config_name", "tiny", "--train_file", str(data_file), "--validation_file", str(data_file),
        "--video_dir", str(tmp_path / "clips"), "--do_train", "--do_eval", "--num_train_epochs", "1",
        "--output_dir", str(tmp_path / "run"), "--feature_cache_dir", str(tmp_path / "cache"), "--disable_tqdm", "true",
    ])

    messages = [record.getMessage() for record in caplog.records]
    assert not [message for message in messages if "video missing" in message]
    assert any("Feature cache miss: encoding the video" in message for message in messages), messages


def test_episode_without_audio_gives_clips_without_audio_and_meld_clips_can_be_linked(tmp_path):
    write_episode(str(tmp_path / "friends" / "Friends.S01E01.mkv"), 25, seconds=3, with_audio=False)
    data_file = write_data_file(tmp_path / "data.json", [[("S01E01", 0.5, 1.5), ("S01E01", 1.5, 2.5)]])
    report = run(tmp_path, data_file, "--episodes_dir", tmp_path / "friends")
    with av.open(str(tmp_path / "clips" / "dia1utt1.mp4")) as container:
        assert len(container.streams.video) == 1 and not container.streams.audio

    meld_dir = tmp_path / "MELD.Raw"
    write_episode(str(meld_dir / "train_splits" / "dia0_utt0.mp4"), 25, seconds=1)
    mapping = os.path.join(FIXTURES, "ecf_meld_mapping.txt")
    linked = tmp_path / "linked"
    report = run(tmp_path, data_file, "--meld_dir", meld_dir, "--meld_mapping", mapping, "--link_meld", "true",
                 "--episodes_dir", tmp_path / "friends", output_dir=linked)
    assert os.path.realpath(linked / "dia1utt1.mp4") == str(meld_dir / "train_splits" / "dia0_utt0.mp4")
    assert report["clips"] == {"dia1utt1.mp4": "meld:train_splits/dia0_utt0.mp4", "dia1utt2.mp4": "episode:S01E01"}
