"""predict.py: the output of train.py --do_predict for the same checkpoint and data, an ensemble that averages the
checkpoints' probabilities, the official scores of a labelled input, and bad records named."""

import json
import shutil

import pytest
import torch

import ecf
import predict
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction
from test_train_joint import data, joint_run, read_json  # noqa: F401 (fixtures)


def run_predict(tmp_path, name, *arguments):
    output = tmp_path / f"{name}.json"
    scores = predict.main([*arguments, "--output_file", str(output), "--batch_size", "3", "--device", "cpu"])
    return read_json(output), scores


def test_predict_py_writes_what_train_py_wrote_and_scores_labelled_input(tmp_path, joint_run, data):
    checkpoint = str(joint_run["output_dir"])
    predicted, scores = run_predict(tmp_path, "unlabelled", "--model_name_or_path", checkpoint, "--input_file", data["unlabelled"])
    expected = read_json(joint_run["output_dir"] / "predictions.json")
    assert [c["conversation_ID"] for c in predicted] == [c["conversation_ID"] for c in expected] and scores is None
    for conversation, reference in zip(predicted, expected):
        assert conversation["emotion-cause_pairs"] == reference["emotion-cause_pairs"]
        for utterance, written in zip(conversation["conversation"], reference["conversation"]):
            assert utterance["emotion"] == written["emotion"]
            assert utterance["emotion_probabilities"] == pytest.approx(written["emotion_probabilities"], abs=1e-4)

    _, scores = run_predict(tmp_path, "labelled", "--model_name_or_path", checkpoint, "--input_file", data["labelled"])
    eval_results = read_json(joint_run["output_dir"] / "eval_results.json")
    assert scores["pair_weighted_f1"] == pytest.approx(eval_results["eval_pair_weighted_f1"])
    assert scores["weighted_f1"] == pytest.approx(eval_results["eval_weighted_f1"])
    assert read_json(tmp_path / "labelled_metrics.json") == pytest.approx(scores)


def test_two_checkpoint_ensemble_averages_their_probabilities(tmp_path, joint_run, data):
    first = joint_run["output_dir"]
    second = tmp_path / "second"
    model = MMEmotionForEmotionCauseExtraction.from_pretrained(first)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in model.emotion_classifier.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.5)
    model.save_pretrained(second)
    for name in ("processor_config.json", "tokenizer.json", "tokenizer_config.json", "processing_mmemotion.py"):
        shutil.copy(first / name, second / name)
    inputs = ["--input_file", data["unlabelled"]]
    alone = [run_predict(tmp_path, f"alone{i}", "--model_name_or_path", str(path), *inputs)[0] for i, path in enumerate((first, second))]
    both, _ = run_predict(tmp_path, "both", "--model_name_or_path", str(first), str(second), *inputs)

    def probabilities(predicted):
        return torch.tensor([list(u["emotion_probabilities"].values()) for c in predicted for u in c["conversation"]])

    mean = (probabilities(alone[0]) + probabilities(alone[1])) / 2
    assert not torch.allclose(probabilities(alone[0]), probabilities(alone[1]), atol=1e-3)
    torch.testing.assert_close(probabilities(both), mean, atol=2e-6, rtol=0)
    emotions = [u["emotion"] for c in both for u in c["conversation"]]
    assert emotions == [ecf.EMOTIONS[i] for i in mean.argmax(-1).tolist()]


def test_bad_record_is_an_error_naming_it(tmp_path, joint_run):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"conversation_ID": 7, "conversation": [{"utterance_ID": 1, "speaker": "Ross"}]}]))
    with pytest.raises(ecf.ECFFormatError, match="7"):
        run_predict(tmp_path, "bad", "--model_name_or_path", str(joint_run["output_dir"]), "--input_file", str(bad))


def test_a_wrong_video_dir_is_an_error_before_any_model_is_loaded(tmp_path, data, monkeypatch):
    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(predict, "load_models", no_model)
    arguments = ("--model_name_or_path", "unused", "--input_file", data["unlabelled"])
    with pytest.raises(ValueError, match="is not a folder"):
        run_predict(tmp_path, "typo", *arguments, "--video_dir", str(tmp_path / "clipz"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds none of the"):
        run_predict(tmp_path, "empty", *arguments, "--video_dir", str(tmp_path / "empty"))
    assert not (tmp_path / "typo.json").exists() and not (tmp_path / "empty.json").exists()
