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
from test_modeling import random_inputs
from test_trust import render_card
from test_train_joint import LogMessages, data, run_train  # noqa: F401 (data: the cue-word conversations fixture)
from training.evaluation import ConversationPredictions, select_cause_threshold, select_neutral_logit_offset


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
    assert selection.fixed_score < 1.0 and selection.tuned_value == 0.65
    assert selection.fold_values == [0.65] * 5 and selection.cross_fitted_score == pytest.approx(1.0)
    assert selection.value == 0.65


def test_a_tuned_threshold_that_does_not_win_on_held_out_folds_is_not_kept(joint_model):
    # Every threshold from 0.3 up is perfect: tuning picks the lowest, 0.3, and gains nothing on the held-out folds.
    predictions, references = two_utterance_predictions(20, self_cause_probability=0.28)
    selection = select_cause_threshold(joint_model, predictions, references)
    assert selection.tuned_value == 0.3 and selection.cross_fitted_score == pytest.approx(selection.fixed_score)
    assert selection.value == 0.5


def test_too_few_conversations_for_the_folds_keep_the_fixed_threshold(joint_model):
    predictions, references = two_utterance_predictions(9, self_cause_probability=0.62)
    selection = select_cause_threshold(joint_model, predictions, references)
    assert selection.tuned_value == 0.65 and math.isnan(selection.cross_fitted_score) and not selection.fold_values
    assert selection.value == 0.5


def neutral_biased_logits(num_conversations, joy_margin, neutral_margin=1.0):
    """Conversations of 3 joy utterances and 2 neutral ones, from a model that leans to neutral: on the joy ones the
    neutral logit is `joy_margin` above the joy logit (below 0: joy is predicted), on the neutral ones `neutral_margin`
    above it."""
    labels = [JOY, JOY, JOY, 0, 0] * num_conversations
    logits = torch.zeros(len(labels), 7)
    logits[:, JOY] = 1.0
    logits[:, 0] = torch.tensor([1.0 + (joy_margin if label == JOY else neutral_margin) for label in labels])
    conversation_ids = [conversation for conversation in range(num_conversations) for _ in range(5)]
    return logits, labels, conversation_ids


def test_a_neutral_logit_offset_that_wins_on_held_out_folds_is_kept_and_applied(joint_model):
    logits, labels, conversation_ids = neutral_biased_logits(20, joy_margin=0.32)
    config = MMEmotionConfig.from_pretrained(os.path.join(ROOT, "presets", "tiny"))
    selection = select_neutral_logit_offset(config, logits, labels, conversation_ids)
    # Every joy utterance is predicted neutral at 0; -0.35 is the smallest change that gets them all (the neutral ones
    # stay neutral down to -1.0).
    assert selection.fixed_value == 0.0 and selection.fixed_score < 0.3
    assert selection.tuned_value == -0.35 and selection.fold_values == [-0.35] * 5
    assert selection.cross_fitted_score == pytest.approx(1.0) and selection.value == -0.35
    # Both task models add the offset to the neutral logit alone; the pair scores do not move.
    classifier = MMEmotionForEmotionClassification(config).eval()
    inputs = random_inputs(config, batch_size=4)
    joint_inputs = {name: value[None] for name, value in inputs.items()}
    with torch.no_grad():
        before = classifier(**inputs).logits
        joint_before = joint_model(utterance_mask=torch.ones(1, 4, dtype=torch.long), **joint_inputs)
        classifier.config.neutral_logit_offset = joint_model.config.neutral_logit_offset = selection.value
        after = classifier(**inputs).logits
        joint_after = joint_model(utterance_mask=torch.ones(1, 4, dtype=torch.long), **joint_inputs)
    joint_model.config.neutral_logit_offset = 0.0
    for old, new in ((before, after), (joint_before.emotion_logits, joint_after.emotion_logits)):
        torch.testing.assert_close(new[..., 0], old[..., 0] - 0.35)
        torch.testing.assert_close(new[..., 1:], old[..., 1:])
    torch.testing.assert_close(joint_after.cause_logits, joint_before.cause_logits)


def test_a_neutral_logit_offset_that_does_not_win_on_held_out_folds_is_not_kept():
    # The model already separates the two emotions: no offset does better than 0, which is kept (first of equal scores).
    logits, labels, conversation_ids = neutral_biased_logits(20, joy_margin=-0.5)
    config = MMEmotionConfig.from_pretrained(os.path.join(ROOT, "presets", "tiny"), neutral_logit_offset=0.2)
    selection = select_neutral_logit_offset(config, logits + torch.nn.functional.one_hot(torch.tensor(0), 7) * 0.2, labels, conversation_ids)
    assert selection.fixed_score == pytest.approx(1.0) and selection.tuned_value == 0.0
    assert selection.cross_fitted_score == pytest.approx(1.0) and selection.value == 0.2  # no gain: the current one stays
    # Unlabelled utterances are left out; a setting that is not a number, or an offset without a neutral label, is an error.
    unlabelled = select_neutral_logit_offset(config, logits, [-100] * 5 + labels[5:], conversation_ids)
    assert len(unlabelled.fold_values) == 5
    with pytest.raises(ValueError, match="`neutral_logit_offset` must be a number, got 'low'"):
        MMEmotionConfig(neutral_logit_offset="low")
    with pytest.raises(ValueError, match="no label is 'neutral'"):
        MMEmotionConfig(neutral_logit_offset=-0.5, num_labels=2, id2label={0: "happy", 1: "sad"})


def test_labels_of_ones_own_survive_saving_and_the_emotion_cause_model_needs_a_neutral_one(tmp_path):
    assert MMEmotionConfig().neutral_label_id == 0  # the ECF emotions
    moods = MMEmotionConfig(id2label={0: "happy", 1: "neutral", 2: "sad"})
    assert moods.label2id == {"happy": 0, "neutral": 1, "sad": 2} and moods.neutral_label_id == 1
    moods.save_pretrained(tmp_path)
    reloaded = MMEmotionConfig.from_pretrained(tmp_path)  # not replaced by the ECF emotions
    assert (reloaded.id2label, reloaded.label2id, reloaded.neutral_label_id) == (moods.id2label, moods.label2id, 1)
    without = MMEmotionConfig(num_labels=2, id2label={0: "happy", 1: "sad"})
    assert without.neutral_label_id is None
    # Utterances predicted neutral get no cause pairs: without that label the model would have no rule to decode by.
    with pytest.raises(ValueError, match="The emotion-cause model needs a 'neutral' label .* 'happy'"):
        MMEmotionForEmotionCauseExtraction(without)


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
    # Scored once, after training (its calibration and evaluation), not after each epoch.
    assert not [entry for entry in read_json(stage_dir / "trainer_state.json")["log_history"] if "eval_loss" in entry]
    assert "eval_weighted_f1" in read_json(stage_dir / "eval_results.json")
    assert any("Encoder features cached: ['text']" in message for message in messages)

    joint = MMEmotionForEmotionCauseExtraction.from_pretrained(output_dir)
    emotion = MMEmotionForEmotionClassification.from_pretrained(stage_dir)
    assert joint.config.emotion_head_input == "utterance_embeds"
    assert joint.config.neutral_logit_offset == emotion.config.neutral_logit_offset  # the stage's emotions, as decided
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
    fixed = render_card(tmp_path / "fixed", "joint", ["Pair threshold 0.5 (unchanged) ..."], do_train=True).text
    assert "optimistic" not in fixed and "the last epoch kept" in fixed
    tuned = render_card(
        tmp_path / "tuned", "joint", ["Pair threshold 0.7 (tuned) ..."], ["the pair threshold"], do_train=True
    ).text
    assert "The same validation conversations chose the pair threshold: these scores are optimistic" in tuned
