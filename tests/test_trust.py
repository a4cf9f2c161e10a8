"""train.py's traps: settings that used to run silently wrong fail before any work (or warn, naming what is missing).

Each test asserts the message and that no training step ran: `Trainer.train` is patched to fail, or the error comes
before the model is built.
"""

import json
import os
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
from huggingface_hub import HfApi, ModelCard, constants

import ecf
import train
import training.checks
from configuration_mmemotion import MMEmotionConfig
from demo.media import write_mp4
from training.checks import MISSING_CLIPS_FILE
from training.model_card import CONFUSION_MATRIX_FILE, ModelCardInfo, render_model_card
from test_train import data, minilm_path, read_json, train_arguments  # noqa: F401 (`data`: the cue-word files)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if a training step, the model or the feature cache is reached."""

    def reached(*args, **kwargs):
        raise AssertionError("the run got past its checks")

    monkeypatch.setattr(train.MMEmotionTrainer, "train", reached)
    monkeypatch.setattr(train, "load_model", reached)
    monkeypatch.setattr(train.FeatureCache, "add_features", reached)


def run(tmp_path, data, *extra):
    output_dir = tmp_path / "run"
    train.main(train_arguments(tmp_path, data, output_dir, "--do_train", *extra))
    return output_dir


def test_video_dir_that_is_not_a_folder(tmp_path, data, no_training):
    with pytest.raises(ValueError, match=r"--video_dir .*no-such-folder is not a folder"):
        run(tmp_path, data, "--config_name", "tiny", "--video_dir", str(tmp_path / "no-such-folder"))
    assert not (tmp_path / "run").exists()


def test_video_dir_without_any_clip_of_the_data(tmp_path, data, no_training):
    clip_dir = tmp_path / "clips"
    clip_dir.mkdir()
    write_mp4(str(clip_dir / "dia999utt1.mp4"), np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=4)  # not in the data
    with pytest.raises(ValueError, match=r"holds none of the \d+ clips of the data \(e.g. dia1utt1.mp4"):
        run(tmp_path, data, "--config_name", "tiny", "--video_dir", str(clip_dir))
    assert not (tmp_path / "run").exists()


def test_some_clips_missing_are_named_and_listed(tmp_path, data, monkeypatch, caplog):
    clip_dir = tmp_path / "clips"
    clip_dir.mkdir()
    write_mp4(str(clip_dir / "dia1utt1.mp4"), np.zeros((4, 32, 32, 3), dtype=np.uint8), fps=4)
    stopped = RuntimeError("stopped after the checks")

    def stop(*args, **kwargs):
        raise stopped

    monkeypatch.setattr(train, "load_model", stop)
    with pytest.raises(RuntimeError) as error:
        run(tmp_path, data, "--config_name", "tiny", "--video_dir", str(clip_dir))
    assert error.value is stopped
    conversations = [*read_json(data["train"]), *read_json(data["validation"])]
    expected = [
        f"dia{c['conversation_ID']}utt{u['utterance_ID']}.mp4" for c in conversations for u in c["conversation"]
    ][1:]
    listed = (tmp_path / "run" / MISSING_CLIPS_FILE).read_text().splitlines()
    assert listed == expected
    assert f"{len(expected)} of the {len(expected) + 1} clips are not in {clip_dir}" in caplog.text
    assert f"{', '.join(expected[:5])}, ..." in caplog.text


@pytest.mark.parametrize("preset", ["exp0", "exp1", "exp3", "exp4"])
def test_full_size_encoders_without_weights(tmp_path, data, no_training, preset):
    with pytest.raises(ValueError, match=r"The video \(1114M parameters\).* encoder\(s\) would have random weights") as error:
        run(tmp_path, data, "--config_name", preset, "--text_model_name_or_path", minilm_path())
    message = str(error.value)
    assert "convert_videollama_to_mmemotion.py (docs/converting-videollama.md)" in message
    assert "--model_name_or_path" in message and "--allow_random_encoders" in message
    assert ("audio (110M parameters)" in message) == (preset in ("exp0", "exp3"))
    assert not (tmp_path / "run").exists()


def test_full_size_text_encoder_without_weights(tmp_path, data, no_training):
    with pytest.raises(ValueError, match=r"The text \(164M parameters\) encoder\(s\) would have random weights"):
        run(tmp_path, data, "--config_name", "exp1", "--modalities", "text")


def test_random_encoders_when_asked(tmp_path, data, monkeypatch):
    stopped = RuntimeError("stopped at the model")

    def stop(*args, **kwargs):
        raise stopped

    monkeypatch.setattr(train, "load_model", stop)
    with pytest.raises(RuntimeError) as error:
        run(tmp_path, data, "--config_name", "exp1", "--text_model_name_or_path", minilm_path(), "--allow_random_encoders")
    assert error.value is stopped


def test_accelerate_launch_without_multi_gpu(tmp_path, data):
    """`accelerate launch --num_processes 2` (no --multi_gpu) starts one process: said in one line, nothing trained."""
    output_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", os.path.join(ROOT, "train.py"),
        *train_arguments(tmp_path, data, output_dir, "--config_name", "tiny", "--modalities", "text", "--do_train"),
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300
    )
    assert result.returncode != 0
    assert (
        "accelerate launch started 1 process although --num_processes asked for more (it does without --multi_gpu): "
        "run `accelerate launch --multi_gpu --num_processes N train.py ...`"
    ) in result.stderr
    assert not output_dir.exists()


@pytest.mark.parametrize("offline", [True, False])
def test_push_to_hub_without_the_hub(tmp_path, data, no_training, monkeypatch, offline):
    # Offline mode, or a Hub address that does not resolve (no network).
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    monkeypatch.setattr(training.checks, "HfApi", partial(HfApi, endpoint="http://hub.invalid"))
    with pytest.raises(ValueError) as error:
        run(tmp_path, data, "--config_name", "tiny", "--modalities", "text", "--push_to_hub", "--hub_model_id",
            "someone/model", "--hub_token", "hf_invalid")
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith("--push_to_hub: the Hub cannot be reached to create someone/model (")
    assert ("OfflineModeIsEnabled" in message) == offline
    assert "hf upload someone/model" in message
    assert not (tmp_path / "run").exists()


def test_empty_transcript_in_a_training_file_is_masked_and_named(tmp_path, data, caplog):
    """The processor's rule in training files too: the utterance stays, its text is masked, the warning names it."""
    conversations = read_json(data["train"])
    conversations[1]["conversation"][2]["text"] = "  "
    conversations[2]["conversation"][0]["text"] = None
    path = tmp_path / "train.json"
    path.write_text(json.dumps(conversations))
    with pytest.raises(ecf.ECFFormatError, match="conversation_ID 2, utterance_ID 3: empty text"):
        ecf.load_conversations(path)  # the validator's default: strict

    captured = {}

    def add_features(feature_cache, dataset, split):  # the tokenized utterance rows, as train.py builds them
        captured[split] = dataset
        raise RuntimeError("stopped after the data")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train.FeatureCache, "add_features", add_features)
        with pytest.raises(RuntimeError, match="stopped after the data"):
            train.main(train_arguments(tmp_path, {**data, "train": str(path)}, tmp_path / "run", "--config_name", "tiny",
                                       "--modalities", "text", "--do_train"))
    assert (
        f"{path}: 2 empty transcript(s), their text is masked: conversation_ID 2, utterance_ID 3; "
        "conversation_ID 3, utterance_ID 1"
    ) in caplog.text
    rows = captured["train"]
    masked = [(row["conversation_id"], row["utterance_id"]) for row in rows if row["text_mask"] == 0]
    assert masked == [(2, 3), (3, 1)]
    assert len(rows) == sum(len(conversation["conversation"]) for conversation in conversations)


def render_card(output_dir, task="emotion", calibration=(), tuned_on_validation=(), **training_arguments):
    """The model card of a run with these training arguments, written and read back with huggingface_hub."""
    config = MMEmotionConfig.from_pretrained(os.path.join(ROOT, "presets", "tiny"))
    training_args = train.MMEmotionTrainingArguments(output_dir=str(output_dir), **training_arguments)
    os.makedirs(output_dir, exist_ok=True)
    labels = list(ecf.EMOTIONS)
    matrix = np.eye(len(labels), dtype=int).tolist()
    ecf.plot_confusion_matrix(matrix, labels, os.path.join(output_dir, CONFUSION_MATRIX_FILE), title="validation")
    info = ModelCardInfo(
        text_model=None, lora=None, training_data=["train: 3 conversations"], task=task, calibration=list(calibration),
        tuned_on_validation=list(tuned_on_validation),
        eval_metrics={"accuracy": 0.51234, "weighted_f1": 0.4321, "loss": 1.2, "confusion_matrix": matrix},
    )
    render_model_card(config, training_args, info).save(output_dir / "README.md")
    return ModelCard.load(output_dir / "README.md")


def test_model_card_shows_the_confusion_matrix_and_the_scores_as_model_index(tmp_path):
    card = render_card(tmp_path, do_eval=True)
    assert "![Confusion matrix on the validation set](confusion_matrix.png)" in card.text
    assert "model-index:" in (tmp_path / "README.md").read_text()
    results = {result.metric_type: result for result in card.data.eval_results}
    assert sorted(results) == ["accuracy", "weighted_f1"]  # not the loss, nor the confusion matrix
    accuracy = results["accuracy"]
    assert accuracy.metric_value == 0.5123 and accuracy.dataset_split == "validation" and accuracy.dataset_type == "ecf"
    assert accuracy.task_type == "text-classification" and accuracy.task_name == "Emotion recognition in conversation"
    assert "optimistic" not in card.text  # evaluated only: nothing was chosen on these conversations


def test_model_card_says_when_the_validation_set_chose_the_epoch_and_threshold(tmp_path):
    trained = render_card(tmp_path / "trained", do_train=True, load_best_model_at_end=True).text
    assert (
        "The same validation conversations chose the epoch (best validation weighted_f1): these scores are optimistic"
    ) in trained
    calibrated = render_card(
        tmp_path / "joint", "joint", ["Pair threshold 0.4 tuned on ..."], ["the pair threshold"], do_train=True,
        load_best_model_at_end=True,
    ).text
    assert "chose the epoch (best validation weighted_f1) and the pair threshold: these scores" in calibrated
    last_epoch = render_card(tmp_path / "last", do_train=True, load_best_model_at_end=False, save_strategy="no").text
    assert "optimistic" not in last_epoch and "the last epoch kept" in last_epoch
