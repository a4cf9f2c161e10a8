"""train.py --task joint: a run end to end (train, threshold tuning, eval, predict, reload in a fresh process), the
feature cache shared between runs and with the emotion task, an emotion checkpoint as the start, the task's training
defaults, and bad input.

The runs use the tiny preset's text branch on generated cue-word conversations (plus a one-utterance and a
40-utterance one), and `tests/fixtures/ecf_sample.json` for the bad input, so that each takes seconds.
"""

import json
import logging
import os
import random
import re
import subprocess
import sys

import evaluate
import pytest
import torch

import ecf
import train
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, MMEmotionForEmotionClassification
from training.evaluation import ECPE_PAIR_F1, pair_records
from test_train import CUE_WORDS, FILLERS, minilm_path, read_json


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "tests", "fixtures", "ecf_sample.json")
EMOTION_METRIC = os.path.join(ROOT, "metrics", "emotion_classification")
LONG_ID, SINGLE_ID = 9002, 9001


def write_json(path, data):
    with open(path, "w", encoding="utf-8") as file:
        json.dump(data, file)
    return str(path)


def cue_word_conversation(conversation_id, num_utterances, rng):
    """An ECF-format conversation whose transcripts hold their emotion's cue word among fillers; each utterance with an
    emotion other than neutral is caused by itself and by the previous utterance (ECF's two commonest causes)."""
    utterances = []
    for utterance_id in range(1, num_utterances + 1):
        emotion = rng.choice(list(CUE_WORDS))
        words = rng.sample(FILLERS, 4)
        words.insert(rng.randint(0, 4), CUE_WORDS[emotion])
        utterances.append(
            {"utterance_ID": utterance_id, "text": " ".join(words), "speaker": rng.choice(["Ross", "Rachel"]), "emotion": emotion}
        )
    pairs = [
        [f"{u['utterance_ID']}_{u['emotion']}", str(cause)]
        for u in utterances
        if u["emotion"] != "neutral"
        for cause in sorted({max(u["utterance_ID"] - 1, 1), u["utterance_ID"]})
    ]
    return {"conversation_ID": conversation_id, "conversation": utterances, "emotion-cause_pairs": pairs}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """`labelled`: 30 cue-word conversations, a one-utterance one and a 40-utterance one (more than ECF's longest, 33);
    `unlabelled`: the same conversations without emotions and pairs."""
    directory = tmp_path_factory.mktemp("data")
    rng = random.Random(0)
    conversations = [cue_word_conversation(index, rng.randint(3, 6), rng) for index in range(1, 31)]
    conversations += [cue_word_conversation(SINGLE_ID, 1, rng), cue_word_conversation(LONG_ID, 40, rng)]
    unlabelled = [
        {
            "conversation_ID": c["conversation_ID"],
            "conversation": [{k: v for k, v in u.items() if k != "emotion"} for u in c["conversation"]],
        }
        for c in conversations
    ]
    return {
        "labelled": write_json(directory / "labelled.json", conversations),
        "unlabelled": write_json(directory / "unlabelled.json", unlabelled),
    }


LOGGERS = [train.logger, logging.getLogger("training")]


class LogMessages(logging.Handler):
    """Collects the log messages of train.py and its `training` modules (module-scoped fixtures cannot use `caplog`)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())

    def __enter__(self):
        for logger in LOGGERS:
            logger.addHandler(self)
        return self.messages

    def __exit__(self, *exc_info):
        for logger in LOGGERS:
            logger.removeHandler(self)


def run_train(output_dir, cache_dir, *arguments):
    """Runs train.py in this process; returns its log messages."""
    with LogMessages() as messages:
        train.main(
            [
                "--output_dir", str(output_dir), "--feature_cache_dir", str(cache_dir), "--disable_tqdm", "true",
                "--learning_rate", "3e-2", "--logging_steps", "5", *arguments,
            ]
        )
    return messages


def cache_outcomes(messages):
    """{split: "hit" or "miss"} of the text features, from the feature cache's log messages."""
    outcomes = {}
    for message in messages:
        match = re.match(r"Feature cache (hit|miss): (?:encoding the text of \d+ )?(\w+)", message)
        if match:
            outcomes[match.group(2)] = match.group(1)
    return outcomes


TINY_TEXT = ["--config_name", "tiny", "--modalities", "text"]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory, data):
    """A joint run on the tiny preset's text branch: train, tune the threshold, evaluate, predict."""
    directory = tmp_path_factory.mktemp("joint")
    output_dir = directory / "joint"
    messages = run_train(
        output_dir, directory / "cache", "--task", "joint", *TINY_TEXT, "--num_train_epochs", "5",
        "--per_device_train_batch_size", "4", "--train_file", data["labelled"], "--validation_file", data["labelled"],
        "--test_file", data["unlabelled"], "--do_train", "--do_eval", "--do_predict",
    )
    return {"output_dir": output_dir, "cache_dir": directory / "cache", "messages": messages}


# --- end to end -----------------------------------------------------------------------------------------------------


def test_predictions_are_a_valid_submission_scored_like_the_evaluation(joint_run, data):
    output_dir = joint_run["output_dir"]
    config = read_json(output_dir / "config.json")
    eval_results = read_json(output_dir / "eval_results.json")
    predictions, gold = read_json(output_dir / "predictions.json"), read_json(data["labelled"])
    assert [c["conversation_ID"] for c in predictions] == [c["conversation_ID"] for c in gold]
    for predicted, given in zip(predictions, gold):
        utterances = predicted["conversation"]
        assert [u["text"] for u in utterances] == [u["text"] for u in given["conversation"]]
        assert all(u["emotion"] in ecf.EMOTIONS for u in utterances)
        pairs = [
            (int(emotion.split("_")[0]), emotion.split("_")[1], int(cause))
            for emotion, cause in predicted["emotion-cause_pairs"]
        ]
        # Each pair carries the predicted emotion of its utterance and stays within the window and the conversation;
        # every utterance predicted non-neutral has a cause.
        assert all(emotion == utterances[i - 1]["emotion"] != "neutral" for i, emotion, _ in pairs)
        assert all(1 <= j <= len(utterances) and abs(i - j) <= config["cause_window"] for i, _, j in pairs)
        assert {i for i, _, _ in pairs} == {u["utterance_ID"] for u in utterances if u["emotion"] != "neutral"}
    assert len(predictions[-1]["conversation"]) == 40 and predictions[-1]["emotion-cause_pairs"]
    assert {tuple(pair) for pair in predictions[-2]["emotion-cause_pairs"]} <= {(f"1_{e}", "1") for e in ecf.CAUSAL_EMOTIONS}

    # The file is a submission: the official metric scores it. The test conversations are the validation ones, so its
    # scores are those of the evaluation, whose gold pairs come from the batches' label tensors.
    scores = evaluate.load(ECPE_PAIR_F1).compute(predictions=pair_records(predictions), references=pair_records(gold))
    assert scores["weighted_f1"] == pytest.approx(eval_results["eval_pair_weighted_f1"])
    assert scores["micro_precision"] == pytest.approx(eval_results["eval_pair_micro_precision"])
    assert scores["weighted_f1"] > 0.3  # it learned: the emotions from the cue words, the causes from the positions

    def emotion_ids(conversations):
        return [ecf.EMOTION_TO_ID[u["emotion"]] for c in conversations for u in c["conversation"]]

    emotion_scores = evaluate.load(EMOTION_METRIC).compute(predictions=emotion_ids(predictions), references=emotion_ids(gold))
    assert emotion_scores["weighted_f1"] == pytest.approx(eval_results["eval_weighted_f1"])


def test_threshold_is_tuned_saved_and_on_the_model_card(joint_run):
    output_dir = joint_run["output_dir"]
    config = read_json(output_dir / "config.json")
    assert config["architectures"] == ["MMEmotionForEmotionCauseExtraction"]
    assert config["auto_map"]["AutoModel"] == "modeling_mmemotion.MMEmotionForEmotionCauseExtraction"
    threshold = config["cause_threshold"]
    assert threshold in [round(0.05 * step, 2) for step in range(1, 20)]
    card = (output_dir / "README.md").read_text()
    offset = config["neutral_logit_offset"]
    for setting in (f"Pair threshold {threshold}", f"Neutral-logit offset {offset}"):
        assert re.search(rf"{setting} \((tuned|unchanged)\) on the 32 validation conversations: tuned on 4 of 5 folds and "
                         r"scored on the fifth", card)
    assert f"- Pair threshold: {threshold} (`config.cause_threshold`" in card
    assert "| pair_weighted_f1 |" in card and "| weighted_f1 |" in card and "emotion-cause pair extraction" in card
    assert "the last epoch kept" in card


def test_card_example_reloads_the_model_in_a_fresh_process_and_predicts_like_train_py(joint_run, data):
    """The card's code, on the 40-utterance test conversation, outside the repository: AutoModel with remote code, the
    tuned threshold from the config, and the emotions and pairs of predictions.json."""
    output_dir = joint_run["output_dir"]
    card = (output_dir / "README.md").read_text()
    code = card.split("```python\n")[1].split("```")[0]
    example_conversation = re.search(r"^conversation = .*$", code, flags=re.MULTILINE)
    assert example_conversation is not None
    code = code.replace(
        example_conversation.group(0),
        "import json, sys\n"
        "conversation = [(u['speaker'], u['text']) for u in json.load(open(sys.argv[1]))[-1]['conversation']]",
    )
    code += (
        "\nprint(json.dumps({'class': type(model).__name__, 'threshold': model.config.cause_threshold, "
        "'emotions': emotions, 'pairs': [[f'{i + 1}_{emotions[i]}', str(j + 1)] for i, j in pairs]}))\n"
    )
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-c", code, data["unlabelled"]],
        cwd=output_dir.parent, env=environment, capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reloaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert reloaded["class"] == "MMEmotionForEmotionCauseExtraction"
    assert reloaded["threshold"] == read_json(output_dir / "config.json")["cause_threshold"]
    predicted = read_json(output_dir / "predictions.json")[-1]
    assert reloaded["emotions"] == [u["emotion"] for u in predicted["conversation"]]
    assert reloaded["pairs"] == predicted["emotion-cause_pairs"]


def test_second_run_hits_the_cache_and_keeps_the_saved_threshold(joint_run, data, tmp_path):
    # The three splits hold the same utterances: one encoding serves them all.
    assert cache_outcomes(joint_run["messages"]) == {"train": "miss", "validation": "hit", "test": "hit"}
    output_dir = tmp_path / "again"
    messages = run_train(
        output_dir, joint_run["cache_dir"], "--task", "joint", "--model_name_or_path", str(joint_run["output_dir"]),
        "--validation_file", data["labelled"], "--test_file", data["unlabelled"], "--do_eval", "--do_predict",
    )
    assert cache_outcomes(messages) == {"validation": "hit", "test": "hit"}
    first = read_json(joint_run["output_dir"] / "eval_results.json")
    again = read_json(output_dir / "eval_results.json")
    for name in ("eval_pair_weighted_f1", "eval_pair_micro_f1", "eval_weighted_f1"):
        assert again[name] == pytest.approx(first[name])
    assert read_json(output_dir / "predictions.json") == read_json(joint_run["output_dir"] / "predictions.json")


def test_joint_model_starts_from_an_emotion_checkpoint_and_its_cache(data, tmp_path):
    emotion_dir = tmp_path / "emotion"
    run_train(emotion_dir, tmp_path / "cache", *TINY_TEXT, "--train_file", data["labelled"], "--do_train",
              "--num_train_epochs", "1", "--eval_strategy", "no", "--load_best_model_at_end", "false")
    messages = run_train(
        tmp_path / "joint", tmp_path / "cache", "--task", "joint", "--model_name_or_path", str(emotion_dir),
        "--train_file", data["labelled"], "--validation_file", data["labelled"], "--do_train", "--num_train_epochs", "1",
    )
    # The same encoder on the same utterances: the emotion run's features serve the joint run.
    assert cache_outcomes(messages) == {"train": "hit", "validation": "hit"}
    assert read_json(tmp_path / "joint" / "config.json")["architectures"] == ["MMEmotionForEmotionCauseExtraction"]

    model_args = train.ModelArguments(model_name_or_path=str(emotion_dir))
    joint = train.load_model(MMEmotionForEmotionCauseExtraction, train.build_config(model_args, None), model_args)
    emotion = MMEmotionForEmotionClassification.from_pretrained(emotion_dir)
    for name, parameter in emotion.mmemotion.state_dict().items():
        torch.testing.assert_close(joint.mmemotion.state_dict()[name], parameter)


def test_joint_model_starts_from_a_lora_emotion_run(data, tmp_path):
    """The adapter of a LoRA emotion run is merged on loading; the joint model's own layers must still train (loading
    the adapter had left only the adapter's weights trainable: nothing required a gradient)."""
    emotion_dir = tmp_path / "emotion"
    run_train(emotion_dir, tmp_path / "cache", "--config_name", "tiny", "--modalities", "text", "--text_embedding",
              "last_hidden_state", "--lora_r", "4", "--train_file", data["labelled"], "--do_train", "--num_train_epochs",
              "1", "--eval_strategy", "no", "--load_best_model_at_end", "false")
    model_args = train.ModelArguments(model_name_or_path=str(emotion_dir))
    joint = train.load_model(MMEmotionForEmotionCauseExtraction, train.build_config(model_args, None), model_args)
    trainable = {name.split(".")[0] for name, parameter in joint.named_parameters() if parameter.requires_grad}
    assert trainable == {"mmemotion", "context_encoder", "emotion_classifier", "pair_scorer"}
    assert joint.mmemotion.is_encoder_frozen("text")

    run_train(
        tmp_path / "joint", tmp_path / "cache", "--task", "joint", "--model_name_or_path", str(emotion_dir),
        "--train_file", data["labelled"], "--validation_file", data["labelled"], "--do_train", "--num_train_epochs", "1",
    )
    history = read_json(tmp_path / "joint" / "trainer_state.json")["log_history"]
    assert any("eval_pair_weighted_f1" in entry for entry in history)

    # Frozen, with the emotion run's head: the joint model keeps that run's utterance model and predicts its emotions.
    run_train(
        tmp_path / "kept", tmp_path / "cache", "--task", "joint", "--model_name_or_path", str(emotion_dir),
        "--train_file", data["labelled"], "--validation_file", data["labelled"], "--do_train", "--do_eval",
        "--num_train_epochs", "1", "--freeze_utterance_model", "--config_overrides", "emotion_head_input=utterance_embeds",
    )
    kept = MMEmotionForEmotionCauseExtraction.from_pretrained(tmp_path / "kept")
    emotion = train.load_model(MMEmotionForEmotionClassification, train.build_config(model_args, None), model_args)
    for part in ("mmemotion", "classifier"):
        kept_weights = getattr(kept, part).state_dict()
        for name, parameter in getattr(emotion, part).state_dict().items():
            torch.testing.assert_close(kept_weights[name], parameter.float(), msg=f"{part}.{name}")
    # A joint checkpoint whose emotion head reads the conversation states has no `classifier` to keep.
    with pytest.raises(ValueError, match=r"keeps the emotion head `classifier` of .*joint, which has none"):
        run_train(
            tmp_path / "no-head", tmp_path / "cache", "--task", "joint", "--model_name_or_path", str(tmp_path / "joint"),
            "--train_file", data["labelled"], "--do_train", "--freeze_utterance_model",
            "--config_overrides", "emotion_head_input=utterance_embeds",
        )


# --- arguments --------------------------------------------------------------------------------------------------------


def test_joint_training_defaults_apply_unless_given(tmp_path, monkeypatch):
    common = [*TINY_TEXT, "--output_dir", str(tmp_path)]

    def training_args(*arguments):
        return train.parse_arguments([*common, *arguments])[2]

    emotion, joint = training_args(), training_args("--task", "joint")
    assert (emotion.per_device_train_batch_size, emotion.metric_for_best_model, emotion.train_sampling_strategy) == (
        32, "weighted_f1", "group_by_length"
    )
    assert (joint.per_device_train_batch_size, joint.metric_for_best_model, joint.train_sampling_strategy) == (
        8, "pair_weighted_f1", "random"
    )
    assert training_args("--task", "joint", "--per_device_train_batch_size", "3").per_device_train_batch_size == 3
    with pytest.raises(ValueError, match="the joint task batches whole conversations"):
        train.main(["--task", "joint", *common, "--train_sampling_strategy", "group_by_length"])

    arguments_file = write_json(
        tmp_path / "args.json",
        {"task": "joint", "config_name": "tiny", "output_dir": str(tmp_path), "metric_for_best_model": "weighted_f1"},
    )
    monkeypatch.setattr(sys, "argv", ["train.py", arguments_file])
    _, data_args, from_file = train.parse_arguments(None)
    assert data_args.task == "joint" and from_file.per_device_train_batch_size == 8
    assert from_file.metric_for_best_model == "weighted_f1"


def test_config_overrides(tmp_path):
    model_args = train.parse_arguments(
        [*TINY_TEXT, "--output_dir", str(tmp_path),
         "--config_overrides", "context_encoder=transformer,cause_window=4,cause_positive_weight=2.5,classifier_dropout=0"]
    )[0]
    config = train.build_config(model_args, None)
    assert (config.context_encoder, config.cause_window, config.cause_positive_weight) == ("transformer", 4, 2.5)
    assert config.classifier_dropout == 0 and config.modalities == ["text"]
    with pytest.raises(ValueError, match="'cause_windows' is not a setting"):
        train.parse_arguments([*TINY_TEXT, "--output_dir", str(tmp_path), "--config_overrides", "cause_windows=4"])


# --- bad input --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (
            lambda c: c[1]["emotion-cause_pairs"].append(["3_surprise", "7"]),
            r"conversation_ID 2, utterance_ID 3: pair \['3_surprise', '7'\] names utterance 7, outside the conversation \(1-3\)",
        ),
        (
            lambda c: c[1]["conversation"][1].update(emotion="boredom"),
            r"conversation_ID 2, utterance_ID 2: emotion 'boredom' is not one of neutral, anger",
        ),
    ],
    ids=["pair-outside-the-conversation", "unknown-emotion"],
)
def test_bad_input_is_an_error_naming_the_conversation(tmp_path, corrupt, message):
    conversations = read_json(SAMPLE)
    corrupt(conversations)
    broken = write_json(tmp_path / "broken.json", conversations)
    with pytest.raises(ecf.ECFFormatError, match=message):
        train.main(["--task", "joint", *TINY_TEXT, "--train_file", broken, "--validation_file", SAMPLE, "--do_train",
                    "--output_dir", str(tmp_path / "out")])


def test_joint0_preset_with_a_pretrained_text_encoder(data, tmp_path):
    output_dir = tmp_path / "joint0"
    run_train(
        output_dir, tmp_path / "cache", "--task", "joint", "--config_name", "joint0", "--modalities", "text",
        "--text_model_name_or_path", minilm_path(), "--text_embedding", "last_hidden_state", "--train_file", data["labelled"],
        "--validation_file", data["labelled"], "--do_train", "--num_train_epochs", "1",
    )
    config = read_json(output_dir / "config.json")
    assert (config["context_encoder"], config["context_hidden_size"], config["cause_window"]) == ("bilstm", 512, 32)
    assert config["modalities"] == ["text"] and config["text_config"]["model_type"] == "bert"
    assert "eval_pair_weighted_f1" in read_json(output_dir / "eval_results.json")
