"""The `emotion-cause-extraction` pipeline from a saved checkpoint alone: a fresh process whose working folder holds only
the checkpoint, on joint and emotion checkpoints trained by train.py, against train.py --do_predict's predictions."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from test_train_joint import TINY_TEXT, data, joint_run, read_json, run_train  # noqa: F401 (fixtures)


RUN_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from transformers import pipeline

    conversations = json.load(open(sys.argv[1]))
    extractor = pipeline(model="checkpoint", trust_remote_code=True)  # task=None: the checkpoint's own pipeline
    named = pipeline("emotion-cause-extraction", model="checkpoint", trust_remote_code=True)
    utterances = [[{"text": u["text"], "speaker": u["speaker"]} for u in c["conversation"]] for c in conversations]
    try:
        extractor([{"text": "so wow", "speaker": "Ross", "video": "clips/missing.mp4"}])
        missing_video = None
    except Exception as error:
        missing_video = f"{type(error).__name__}: {error}"
    print(json.dumps({
        "pipeline": type(extractor).__name__,
        "modules": sorted(m for m in sys.modules if m.endswith("_mmemotion")),
        "all": extractor(utterances),
        "single": named(utterances[-2]),
        "long": named(utterances[-1]),
        "missing_video": missing_video,
    }))
    """
)


def run_pipeline_alone(tmp_path, output_dir, conversations_file):
    """Copies the checkpoint (its top-level files) into an empty folder and runs the pipeline there in a fresh
    interpreter, without the repository on `sys.path`."""
    workdir = tmp_path / "user"
    (workdir / "checkpoint").mkdir(parents=True)
    for name in os.listdir(output_dir):
        if os.path.isfile(output_dir / name) and name != "predictions.json":
            shutil.copy(output_dir / name, workdir / "checkpoint" / name)
    shutil.copy(conversations_file, workdir / "conversations.json")
    environment = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    environment.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    result = subprocess.run(
        [sys.executable, "-c", RUN_PIPELINE, "conversations.json"],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = json.loads(result.stdout.strip().splitlines()[-1])
    assert output["pipeline"] == "EmotionCauseExtractionPipeline"
    assert all(name.startswith("transformers_modules.") for name in output["modules"]), output["modules"]
    assert output["missing_video"] == "FileNotFoundError: No such media file: 'clips/missing.mp4'"

    # The model card's pipeline example runs as written there (with the folder's name for the repo id).
    card_code = (output_dir / "README.md").read_text().split("```python\n")[2].split("```")[0]
    card_code = card_code.replace(f'model="{output_dir.name}"', 'model="checkpoint"')
    assert 'model="checkpoint"' in card_code
    card_run = subprocess.run(
        [sys.executable, "-c", card_code], cwd=workdir, env=environment, capture_output=True, text=True, timeout=600
    )
    assert card_run.returncode == 0 and "'emotion':" in card_run.stdout, card_run.stderr[-3000:]
    return output


def check_emotions(output, predictions):
    assert len(output["all"]) == len(predictions)
    for predicted, expected in zip(output["all"], predictions):
        assert [u["emotion"] for u in predicted] == [u["emotion"] for u in expected["conversation"]]
        for utterance, written in zip(predicted, expected["conversation"]):
            assert utterance["score"] == pytest.approx(utterance["scores"][utterance["emotion"]])
            assert utterance["scores"] == pytest.approx(written["emotion_probabilities"], abs=1e-4)
    assert output["single"] == output["all"][-2] and len(output["single"]) == 1
    assert output["long"] == output["all"][-1] and len(output["long"]) == 40


def test_pipeline_of_a_joint_checkpoint_predicts_like_train_py(tmp_path, joint_run, data):
    output_dir = joint_run["output_dir"]
    predictions = read_json(output_dir / "predictions.json")
    output = run_pipeline_alone(tmp_path, output_dir, data["unlabelled"])
    check_emotions(output, predictions)
    for predicted, expected in zip(output["all"], predictions):
        pairs = sorted([f"{index}_{u['emotion']}", str(cause)] for index, u in enumerate(predicted, 1) for cause in u["causes"])
        assert pairs == sorted(expected["emotion-cause_pairs"])
        for utterance in predicted:
            assert len(utterance["cause_scores"]) == len(utterance["causes"])
            assert (utterance["emotion"] == "neutral") == (utterance["causes"] == [])
            assert all(0 <= score <= 1 for score in utterance["cause_scores"])
    assert any(u["causes"] for u in output["long"])


def test_pipeline_of_an_emotion_checkpoint_predicts_like_train_py(tmp_path, data):
    output_dir = tmp_path / "emotion"
    run_train(
        output_dir, tmp_path / "cache", *TINY_TEXT, "--num_train_epochs", "2", "--train_file", data["labelled"],
        "--validation_file", data["labelled"], "--test_file", data["unlabelled"], "--do_train", "--do_predict",
    )
    predictions = read_json(output_dir / "predictions.json")
    output = run_pipeline_alone(tmp_path, output_dir, data["unlabelled"])
    check_emotions(output, predictions)
    assert all("causes" not in u for c in output["all"] for u in c)
