"""How a run chooses what it keeps: the pair threshold is tuned only where tuning wins on held-out folds, the last epoch
is kept, and a new model from `--text_model_name_or_path` gets the fine-tuning recipe (for the joint task in two
stages: a LoRA emotion model, then the joint model over its merged encoder)."""

import math
import os

import pytest
import torch
from transformers import AutoModel

import train
from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, MMEmotionForEmotionClassification
from test_train import minilm_path, read_json
from test_trust import render_card
from test_train_joint import LogMessages, data, run_train  # noqa: F401 (data: the cue-word conversations fixture)
from training.evaluation import ConversationPredictions, select_cause_threshold


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOY = 4


def two_utterance_predictions(num_conversations, self_cause_probability):
    """Conversations of a neutral utterance and a joy one that it caused: the model is sure of that pair and gives the
    wrong pair (the joy utterance causing itself) `self_cause_probability`."""
    emotion_logits = torch.zeros(num_conversations, 2, 7)
    emotion_logits[:, 0, 0] = emotion_logits[:, 1, JOY] = 5.0
    cause_logits = torch.full((num_conversations, 2, 2), torch.finfo(torch.float32).min)
    cause_logits[:, 1, 0] = 5.0
    cause_logits[:, 1, 1] = math.log(self_cause_probability / (1 - self_cause_probability))
    predictions = ConversationPredictions(
        conversation_ids=list(range(1, num_conversations + 1)),
        emotion_logits=emotion_logits,
        cause_logits=cause_logits,
        utterance_mask=torch.ones(num_conversations, 2, dtype=torch.long),
    )
    references = [{"conversation_ID": index, "emotion-cause_pairs": [["2_joy", "1"]]} for index in predictions.conversation_ids]
    return predictions, references


@pytest.fixture(scope="module")
def joint_model():
    config = MMEmotionConfig.from_pretrained(os.path.join(ROOT, "presets", "tiny"), cause_threshold=0.5, cause_window=2)
    return MMEmotionForEmotionCauseExtraction(config).eval()


def test_a_tuned_threshold_that_wins_on_held_out_folds_is_kept(joint_model):
    predictions, references = two_utterance_predictions(20, self_cause_probability=0.62)
    selection = select_cause_threshold(joint_model, predictions, references)
    assert selection.fixed_f1 < 1.0 and selection.tuned_threshold == 0.65
    assert selection.fold_thresholds == [0.65] * 5 and selection.cross_fitted_f1 == pytest.approx(1.0)
    assert selection.threshold == 0.65


def test_a_tuned_threshold_that_does_not_win_on_held_out_folds_is_not_kept(joint_model):
    # Every threshold from 0.3 up is perfect: tuning picks the lowest, 0.3, and gains nothing on the held-out folds.
    predictions, references = two_utterance_predictions(20, self_cause_probability=0.28)
    selection = select_cause_threshold(joint_model, predictions, references)
    assert selection.tuned_threshold == 0.3 and selection.cross_fitted_f1 == pytest.approx(selection.fixed_f1)
    assert selection.threshold == 0.5


def test_too_few_conversations_for_the_folds_keep_the_fixed_threshold(joint_model):
    predictions, references = two_utterance_predictions(9, self_cause_probability=0.62)
    selection = select_cause_threshold(joint_model, predictions, references)
    assert selection.tuned_threshold == 0.65 and math.isnan(selection.cross_fitted_f1) and not selection.fold_thresholds
    assert selection.threshold == 0.5


def test_defaults_of_a_new_text_model_and_of_a_preset(tmp_path):
    def arguments(*extra):
        model_args, data_args, training_args = train.parse_arguments(["--output_dir", str(tmp_path), *extra])
        return model_args, data_args, training_args

    model_args, data_args, training_args = arguments("--text_model_name_or_path", minilm_path())
    assert (model_args.lora_r, training_args.num_train_epochs, data_args.max_seq_length) == (8, 3, 96)
    config = train.build_config(model_args, class_weights=None)
    assert (config.text_embedding, config.text_context_past, config.text_context_future) == ("last_hidden_state", 2, 1)
    assert config.text_context_speakers
    assert model_args.emotion_stage_epochs == 0 and not training_args.load_best_model_at_end
    model_args, data_args, training_args = arguments("--task", "joint", "--text_model_name_or_path", minilm_path())
    assert (model_args.lora_r, model_args.emotion_stage_epochs, data_args.max_seq_length) == (8, 3, 96)
    assert (training_args.num_train_epochs, training_args.per_device_train_batch_size) == (10, 8)
    # A flag wins; a preset or a checkpoint keeps the frozen-encoder defaults.
    assert arguments("--text_model_name_or_path", minilm_path(), "--lora_r", "0")[0].lora_r == 0
    model_args, data_args, training_args = arguments("--config_name", "tiny", "--text_model_name_or_path", minilm_path())
    assert (model_args.lora_r, training_args.num_train_epochs, data_args.max_seq_length) == (0, 10, 128)
    config = train.build_config(model_args, class_weights=None)
    assert (config.text_context_past, config.text_context_future) == (0, 0)
    model_args = arguments("--text_model_name_or_path", minilm_path(), "--text_context_past", "0")[0]
    assert train.build_config(model_args, class_weights=None).text_context_past == 0


def test_joint_model_in_two_stages_from_a_new_text_model(data, tmp_path):  # noqa: F811
    output_dir = tmp_path / "joint"
    messages = run_train(
        output_dir, tmp_path / "cache", "--task", "joint", "--text_model_name_or_path", minilm_path(),
        "--modalities", "text", "--train_file", data["labelled"], "--validation_file", data["labelled"], "--do_train",
        "--emotion_stage_epochs", "1", "--num_train_epochs", "2", "--lora_r", "4",
        "--text_encoder_learning_rate", "3e-2",  # the stage's adapters (the joint stage's encoder is frozen)
    )
    stage_dir = output_dir / train.EMOTION_STAGE_DIR
    stage_config = read_json(stage_dir / "config.json")
    assert stage_config["architectures"] == ["MMEmotionForEmotionClassification"]
    assert not (stage_dir / "adapter_config.json").exists()  # merged: a plain checkpoint
    assert not list(stage_dir.glob("checkpoint-*"))  # its last epoch is what stage 2 reads
    assert any("Encoder features cached: ['text']" in message for message in messages)

    joint = MMEmotionForEmotionCauseExtraction.from_pretrained(output_dir)
    emotion = MMEmotionForEmotionClassification.from_pretrained(stage_dir)
    assert joint.config.emotion_head_input == "utterance_embeds"
    # The joint stage kept the stage's utterance model and emotion head as they were, so it predicts the same emotions.
    kept = {**joint.mmemotion.state_dict(), **{f"classifier.{n}": p for n, p in joint.classifier.state_dict().items()}}
    stage = {**emotion.mmemotion.state_dict(), **{f"classifier.{n}": p for n, p in emotion.classifier.state_dict().items()}}
    assert kept.keys() == stage.keys()
    for name, parameter in stage.items():
        torch.testing.assert_close(kept[name], parameter, msg=name)
    joint_scores, stage_scores = read_json(output_dir / "eval_results.json"), read_json(stage_dir / "eval_results.json")
    assert joint_scores["eval_weighted_f1"] == pytest.approx(stage_scores["eval_weighted_f1"])
    stage_text = emotion.mmemotion.text_encoder.state_dict()
    # The stage trained the encoder (the LoRA update is merged into it): it is not MiniLM's any more.
    minilm = AutoModel.from_pretrained(minilm_path()).state_dict()
    compared = {name: parameter for name, parameter in stage_text.items() if name.removeprefix("model.") in minilm}
    assert compared and any(not torch.equal(p, minilm[name.removeprefix("model.")]) for name, p in compared.items())
    card = (output_dir / "README.md").read_text()
    assert "in a first stage: an utterance-level emotion model trained for 1 epochs" in card
    assert "the joint model keeps its utterance model and emotion head, frozen" in card
    assert "(text encoder 0.03)" in (stage_dir / "README.md").read_text() and "(text encoder" not in card
    assert "eval_pair_weighted_f1" in joint_scores


def test_freeze_utterance_model_flag(data, tmp_path):  # noqa: F811
    def parsed(*extra):
        return train.parse_arguments(["--output_dir", str(tmp_path), "--task", "joint", "--config_name", "tiny", *extra])[0]

    # Unset, the joint stage of --emotion_stage_epochs freezes and a one-stage run does not; alone, the flag means true.
    assert parsed().freeze_utterance_model is None
    assert parsed("--freeze_utterance_model").freeze_utterance_model is True
    assert parsed("--freeze_utterance_model", "false").freeze_utterance_model is False
    with pytest.raises(ValueError, match="--freeze_utterance_model keeps the utterance model .* needs --task joint"):
        run_train(
            tmp_path / "emotion", tmp_path / "cache", "--task", "emotion", "--config_name", "tiny", "--modalities", "text",
            "--train_file", data["labelled"], "--do_train", "--freeze_utterance_model", "true",
        )
    # A new model has nothing trained to keep.
    with pytest.raises(ValueError, match="--freeze_utterance_model keeps the utterance model .* needs --task joint and --model_name_or_path"):
        run_train(
            tmp_path / "new", tmp_path / "cache", "--task", "joint", "--config_name", "tiny", "--modalities", "text",
            "--train_file", data["labelled"], "--do_train", "--freeze_utterance_model",
        )


def test_emotion_stage_needs_lora(data, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="--emotion_stage_epochs fine-tunes the text encoder with LoRA first"):
        run_train(
            tmp_path / "joint", tmp_path / "cache", "--task", "joint", "--text_model_name_or_path", minilm_path(),
            "--modalities", "text", "--train_file", data["labelled"], "--do_train", "--lora_r", "0",
        )


def test_model_card_calls_scores_optimistic_only_when_validation_chose_the_threshold(tmp_path):
    fixed = render_card(tmp_path / "fixed", "joint", "Pair threshold 0.5 (the fixed one) ...", do_train=True).text
    assert "optimistic" not in fixed and "the last epoch kept" in fixed
    tuned = render_card(tmp_path / "tuned", "joint", "Pair threshold 0.7 (the tuned one) ...", threshold_tuned=True, do_train=True).text
    assert "The same validation conversations chose the pair threshold: these scores are optimistic" in tuned
