"""`make demo`: the whole pipeline on the bundled ECF-format sample, in a few minutes on 2 CPU cores.

1. writes one real mp4 clip (H.264 video + AAC audio) per utterance of `demo/sample_{train,test}.json`;
2. trains the `presets/tiny` model (all three VideoLLaMA branches at tiny sizes, frozen, random weights) with
   `train.py`: encoder features cached once, then the fusion head trains; evaluates and predicts the test sample;
3. reloads the output folder, a self-contained Hub model repo, with `AutoModel` / `AutoProcessor` and
   `trust_remote_code=True` in a fresh process and classifies two test clips.

The sample's emotions show in the clip colour, the audio pitch and (for most utterances) a cue word, so a model that
uses the clips beats one that reads the transcripts alone. Chance is 0.2 accuracy (five emotions).
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap


HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUTPUT_DIR = os.path.join(ROOT, "demo_output")
CLIP_DIR = os.path.join(HERE, "clips")
TRAIN_FILE = os.path.join(HERE, "sample_train.json")
TEST_FILE = os.path.join(HERE, "sample_test.json")

RELOAD_AND_PREDICT = textwrap.dedent(
    """
    import json, sys
    import torch
    from transformers import AutoModel, AutoProcessor

    model_dir, test_file, clip_dir = sys.argv[1:4]
    model = AutoModel.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    utterances = json.load(open(test_file))[0]["conversation"][:2]
    inputs = processor(
        text=[u["text"] for u in utterances], videos=[f"{clip_dir}/{u['video_name']}" for u in utterances],
        return_tensors="pt",
    )
    with torch.no_grad():
        probabilities = model(**inputs).logits.softmax(-1)
    print(f"reloaded {type(model).__name__} + {type(processor).__name__} from {model_dir} (trust_remote_code=True)")
    for utterance, row in zip(utterances, probabilities):
        predicted = model.config.id2label[int(row.argmax())]
        print(f"  {utterance['text']!r}: predicted {predicted} ({row.max():.2f}), gold {utterance['emotion']}")
    """
)


def run(command: list[str], **kwargs):
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, **kwargs)


def main():
    run([sys.executable, os.path.join(HERE, "make_demo_data.py"), "--clip_dir", CLIP_DIR])
    run(
        [
            sys.executable, os.path.join(ROOT, "train.py"),
            "--task", "emotion",
            "--config_name", "tiny",
            "--train_file", TRAIN_FILE,
            "--validation_file", TEST_FILE,
            "--test_file", TEST_FILE,
            "--video_dir", CLIP_DIR,
            "--do_train", "--do_eval", "--do_predict",
            "--num_train_epochs", "40",
            "--learning_rate", "3e-3",
            "--per_device_train_batch_size", "16",
            "--logging_steps", "20",
            "--seed", "0",
            "--log_level", "warning",
            "--output_dir", OUTPUT_DIR,
        ]
    )
    with open(os.path.join(OUTPUT_DIR, "eval_results.json")) as handle:
        results = json.load(handle)
    print("\nDemo test-sample metrics (chance accuracy 0.20):")
    for name in ("eval_accuracy", "eval_weighted_f1", "eval_macro_f1"):
        print(f"  {name}: {results[name]:.3f}")
    print(f"  predictions: {os.path.join(OUTPUT_DIR, 'predictions.json')}\n")
    # A fresh interpreter outside the repository: only the output folder's own code is there to load.
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run([sys.executable, "-c", RELOAD_AND_PREDICT, OUTPUT_DIR, TEST_FILE, CLIP_DIR], cwd=tempfile.gettempdir(), env=environment)


if __name__ == "__main__":
    main()
