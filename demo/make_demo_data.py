"""Make the demo's ECF-format sample and its clips.

`python demo/make_demo_data.py --write_json` regenerates the bundled `demo/sample_{train,test}.json` (committed);
`python demo/make_demo_data.py --clip_dir DIR` writes one real mp4 per utterance (H.264 + AAC, named
`dia{conversation}utt{utterance}.mp4` as in ECF) into DIR. The clips are generated, never committed.

The sample is learnable from every modality, and from none alone perfectly: each emotion has a colour cast in the video,
a pitch in the audio, and (for most utterances) a cue word in the text; some utterances have a neutral text, a clip
without an audio track, or no clip at all, so a model has to combine modalities and cope with absent ones.
"""

import argparse
import json
import os
import random

import numpy as np

try:
    from demo.media import tone, write_mp4
except ImportError:  # run as `python demo/make_demo_data.py`
    from media import tone, write_mp4


HERE = os.path.dirname(os.path.abspath(__file__))
EMOTIONS = ("neutral", "anger", "joy", "sadness", "surprise")
COLOURS = {"neutral": (128, 128, 128), "anger": (200, 40, 40), "joy": (230, 200, 40), "sadness": (40, 60, 200), "surprise": (60, 200, 90)}
PITCHES = {"neutral": 220.0, "anger": 330.0, "joy": 523.0, "sadness": 147.0, "surprise": 784.0}
CUE_WORDS = {
    "neutral": ["okay", "right", "sure", "fine"],
    "anger": ["ridiculous", "unbelievable", "furious", "stop"],
    "joy": ["great", "wonderful", "love", "amazing"],
    "sadness": ["sorry", "miss", "lost", "alone"],
    "surprise": ["what", "really", "wow", "seriously"],
}
FILLERS = ["so", "i", "think", "you", "know", "that", "the", "it", "was", "we", "then", "well"]
SPEAKERS = ["Monica", "Ross", "Rachel", "Chandler", "Joey", "Phoebe"]
# Share of utterances whose transcript carries no cue word; of clips without audio; of utterances without a clip.
NEUTRAL_TEXT_RATE, NO_AUDIO_RATE, NO_CLIP_RATE = 0.35, 0.1, 0.05


def make_conversation(conversation_id: int, rng: random.Random) -> dict:
    """One conversation in SemEval-2024 Task 3 format; non-neutral utterances are caused by themselves or the previous one."""
    speakers = rng.sample(SPEAKERS, 2)
    utterances, pairs = [], []
    for index in range(rng.randint(4, 8)):
        emotion = rng.choice(EMOTIONS)
        words = rng.sample(FILLERS, 5)
        if rng.random() >= NEUTRAL_TEXT_RATE:
            words.insert(rng.randint(0, 5), rng.choice(CUE_WORDS[emotion]))
        utterance_id = index + 1
        utterances.append(
            {
                "utterance_ID": utterance_id,
                "text": " ".join(words).capitalize() + " .",
                "speaker": speakers[index % 2],
                "emotion": emotion,
                "video_name": f"dia{conversation_id}utt{utterance_id}.mp4",
            }
        )
        if emotion != "neutral":
            cause = utterance_id if index == 0 or rng.random() < 0.5 else utterance_id - 1
            pairs.append([f"{utterance_id}_{emotion}", str(cause)])
    return {"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": pairs}


def write_json(num_train: int, num_test: int, seed: int):
    rng = random.Random(seed)
    conversations = [make_conversation(conversation_id, rng) for conversation_id in range(1, num_train + num_test + 1)]
    for name, part in (("train", conversations[:num_train]), ("test", conversations[num_train:])):
        with open(os.path.join(HERE, f"sample_{name}.json"), "w") as handle:
            json.dump(part, handle, indent=1)


def utterance_clip(emotion: str, seed: int, with_audio: bool, size: int = 64, fps: int = 8):
    """A 1-2 s clip: noisy frames with the emotion's colour cast, and a tone at its pitch plus noise."""
    rng = np.random.default_rng(seed)
    seconds = float(rng.uniform(1.0, 2.0))
    num_frames = int(seconds * fps)
    colour = np.asarray(COLOURS[emotion], dtype=np.float32)
    frames = colour + rng.normal(0, 40, size=(num_frames, size, size, 3))
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    audio = None
    if with_audio:
        audio = tone(PITCHES[emotion] * rng.uniform(0.97, 1.03), seconds, amplitude=0.4)
        audio = audio + rng.normal(0, 0.05, size=audio.shape).astype(np.float32)
    return frames, audio, fps


def write_clips(json_paths: list[str], clip_dir: str) -> int:
    """Writes the clips of every utterance of the given sample files; returns how many were written."""
    os.makedirs(clip_dir, exist_ok=True)
    written = 0
    for path in json_paths:
        with open(path) as handle:
            conversations = json.load(handle)
        for conversation in conversations:
            for utterance in conversation["conversation"]:
                seed = conversation["conversation_ID"] * 100 + utterance["utterance_ID"]
                rng = random.Random(seed)
                if rng.random() < NO_CLIP_RATE:
                    continue  # this utterance has no clip: the demo shows the "video missing" count
                frames, audio, fps = utterance_clip(utterance["emotion"], seed, with_audio=rng.random() >= NO_AUDIO_RATE)
                target = os.path.join(clip_dir, utterance["video_name"])
                if not os.path.exists(target):
                    write_mp4(target, frames, fps=fps, audio=audio)
                written += 1
    return written


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write_json", action="store_true", help="Regenerate demo/sample_{train,test}.json.")
    parser.add_argument("--num_train", type=int, default=48)
    parser.add_argument("--num_test", type=int, default=16)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--clip_dir", help="Write the clips of the sample here.")
    args = parser.parse_args()
    if args.write_json:
        write_json(args.num_train, args.num_test, args.seed)
    if args.clip_dir:
        paths = [os.path.join(HERE, f"sample_{name}.json") for name in ("train", "test")]
        print(f"{write_clips(paths, args.clip_dir)} clips in {args.clip_dir}")


if __name__ == "__main__":
    main()
