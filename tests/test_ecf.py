"""Tests of `ecf.py`: validation of the ECF / SemEval-2024 Task 3 JSON format, datasets, predictions writer."""

import json
import logging
from pathlib import Path

import datasets
import pytest

import ecf


FIXTURE = Path(__file__).parent / "fixtures" / "ecf_sample.json"
# The full corpus, next to the repository on the development machine; tests that need it skip elsewhere.
SHARED_ECF = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ecf"


def sample_records():
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def write_records(tmp_path, records, name="data.json"):
    path = tmp_path / name
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def conversation(records, conversation_id):
    return next(record for record in records if record["conversation_ID"] == conversation_id)


def test_load_sample():
    conversations = ecf.load_conversations(FIXTURE)
    assert [c["conversation_ID"] for c in conversations] == [1, 2, 5, 65, 117, 507]
    assert sum(len(c["conversation"]) for c in conversations) == 24
    assert sum(len(c["emotion-cause_pairs"]) for c in conversations) == 14
    # Utterance 3 of conversation 5 causes the joy of utterance 1: a forward cause is valid.
    assert conversation(conversations, 5)["emotion-cause_pairs"] == [["1_joy", "3"], ["3_joy", "3"]]
    assert {u["emotion"] for c in conversations for u in c["conversation"]} == set(ecf.EMOTIONS)


def test_emotions_are_matched_case_insensitively_and_normalised(tmp_path):
    records = sample_records()
    conversation(records, 2)["conversation"][2]["emotion"] = "Surprise"
    conversation(records, 2)["emotion-cause_pairs"] = [["1_SADNESS", "1"], ["3_surprise", "3"], ["3_surprise", "3"]]
    loaded = conversation(ecf.load_conversations(write_records(tmp_path, records)), 2)
    assert loaded["conversation"][2]["emotion"] == "surprise"
    # The repeated pair is kept once.
    assert loaded["emotion-cause_pairs"] == [["1_sadness", "1"], ["3_surprise", "3"]]


def _drop_text(records):
    del conversation(records, 2)["conversation"][1]["text"]


def _unknown_emotion(records):
    conversation(records, 2)["conversation"][1]["emotion"] = "happy"


def _duplicate_utterance_id(records):
    conversation(records, 2)["conversation"][1]["utterance_ID"] = 1


def _skipped_utterance_id(records):
    conversation(records, 2)["conversation"][1]["utterance_ID"] = 3


def _pair_outside_conversation(records):
    conversation(records, 2)["emotion-cause_pairs"].append(["2_joy", "9"])


def _pair_emotion_differs(records):
    conversation(records, 2)["emotion-cause_pairs"].append(["2_joy", "1"])


def _empty_text(records):
    conversation(records, 2)["conversation"][1]["text"] = "  "


@pytest.mark.parametrize(
    "corrupt, problem",
    [
        (_drop_text, "missing field(s) text"),
        (_unknown_emotion, "emotion 'happy' is not one of"),
        (_duplicate_utterance_id, "consecutive"),
        (_skipped_utterance_id, "consecutive"),
        (_pair_outside_conversation, "outside the conversation"),
        (_pair_emotion_differs, "says joy but the utterance is labelled neutral"),
        (_empty_text, "empty text"),
    ],
)
def test_bad_record_names_file_conversation_and_utterance(tmp_path, corrupt, problem):
    records = sample_records()
    corrupt(records)
    path = write_records(tmp_path, records, name="bad.json")
    with pytest.raises(ecf.ECFFormatError) as error:
        ecf.load_conversations(path)
    message = str(error.value)
    assert str(path) in message
    assert "conversation_ID 2, utterance_ID" in message
    assert problem in message


def test_missing_conversation_field(tmp_path):
    records = sample_records()
    del conversation(records, 5)["emotion-cause_pairs"]
    path = write_records(tmp_path, records)
    with pytest.raises(ecf.ECFFormatError, match="conversation_ID 5: missing field"):
        ecf.load_conversations(path)
    # A file to predict on may lack labels.
    assert len(ecf.load_conversations(path, require_labels=False)) == 6


def test_malformed_json_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"conversation_ID": 1,\n  "conversation": [}]', encoding="utf-8")
    with pytest.raises(ValueError, match=r"broken\.json: invalid JSON at line 2, column 20"):
        ecf.load_conversations(path)


def test_conversation_filters(tmp_path):
    assert [c["conversation_ID"] for c in ecf.load_conversations(FIXTURE, conversation_ids=[65, 2])] == [2, 65]
    kept = ecf.load_conversations(FIXTURE, exclude_conversation_ids=[65, 2])
    assert [c["conversation_ID"] for c in kept] == [1, 5, 117, 507]
    with pytest.raises(ValueError, match="not in the file: \\[999\\]"):
        ecf.load_conversations(FIXTURE, conversation_ids=[1, 999])


def test_read_conversation_ids(tmp_path):
    split_file = tmp_path / "split.json"
    split_file.write_text(json.dumps({"dev": [65, 2], "note": "held out"}), encoding="utf-8")
    assert ecf.read_conversation_ids(split_file) == [65, 2]
    plain_list = tmp_path / "ids.json"
    plain_list.write_text("[1, 5]", encoding="utf-8")
    assert ecf.read_conversation_ids(plain_list) == [1, 5]
    two_splits = tmp_path / "splits.json"
    two_splits.write_text(json.dumps({"dev": [2], "test": [5]}), encoding="utf-8")
    assert ecf.read_conversation_ids(two_splits, split="test") == [5]
    with pytest.raises(ValueError, match="pass `split`"):
        ecf.read_conversation_ids(two_splits)


def test_utterance_dataset():
    dataset = ecf.conversations_to_utterance_dataset(ecf.load_conversations(FIXTURE))
    assert dataset.num_rows == 24
    assert dataset.features["label"] == datasets.ClassLabel(names=list(ecf.EMOTIONS))
    first_surprise = dataset[2]
    assert first_surprise["conversation_id"] == 1 and first_surprise["utterance_id"] == 3
    assert first_surprise["speaker"] == "Chandler"
    assert first_surprise["label"] == ecf.EMOTIONS.index("surprise")
    assert first_surprise["video_path"] is None


def test_video_paths_and_missing_clips_are_logged(tmp_path, caplog):
    conversations = ecf.load_conversations(FIXTURE, conversation_ids=[2])
    (tmp_path / "dia2utt1.mp4").write_bytes(b"")
    (tmp_path / "dia2utt3.mp4").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="ecf"):
        dataset = ecf.conversations_to_utterance_dataset(conversations, video_dir=tmp_path)
    assert dataset["video_path"] == [str(tmp_path / "dia2utt1.mp4"), None, str(tmp_path / "dia2utt3.mp4")]
    assert [record.getMessage().split(" (")[0] for record in caplog.records] == ["video missing for 1 of 3 utterances"]


def test_conversation_dataset():
    conversations = ecf.load_conversations(FIXTURE)
    dataset = ecf.conversations_to_conversation_dataset(conversations)
    assert dataset.num_rows == 6
    first = dataset[0]
    # The text and clips of a conversation are its rows of the utterance dataset.
    utterances = ecf.conversations_to_utterance_dataset(conversations[:1])
    assert utterances["speaker"] == ["Chandler", "All", "Chandler", "Joey", "Chandler", "Joey", "Phoebe", "Chandler"]
    assert first["speaker_ids"] == [0, 1, 0, 2, 0, 2, 3, 0]
    assert first["labels"] == [0, 0, 6, 6, 1, 0, 0, 0]
    # ["3_surprise", "1"] -> [2, 0]: 0-based indexes.
    assert first["cause_pairs"][:2] == [[2, 0], [2, 2]]
    assert dataset[2]["cause_pairs"] == [[0, 2], [2, 2]]
    assert dataset[5]["cause_pairs"] == []
    assert utterances["video_path"] == [None] * 8


def test_unlabelled_conversations(tmp_path):
    records = sample_records()
    for record in records:
        del record["emotion-cause_pairs"]
        for utterance in record["conversation"]:
            del utterance["emotion"]
    conversations = ecf.load_conversations(write_records(tmp_path, records), require_labels=False)
    utterances = ecf.conversations_to_utterance_dataset(conversations)
    assert utterances.features["label"] == datasets.Value("int64")
    assert set(utterances["label"]) == {ecf.IGNORE_INDEX}
    dialogues = ecf.conversations_to_conversation_dataset(conversations)
    assert dialogues[0]["labels"] == [ecf.IGNORE_INDEX] * 8
    assert dialogues[0]["cause_pairs"] == []


def test_write_predictions(tmp_path):
    conversations = ecf.load_conversations(FIXTURE, conversation_ids=[2, 5])
    emotions = [ecf.EMOTIONS.index(name) for name in ("sadness", "neutral", "joy", "joy", "neutral", "joy")]
    probabilities = [[1.0 / 7] * 7 for _ in emotions]
    pairs = [
        # the repeat is written once; (1, 0) is left out because utterance 2 is predicted neutral
        [(2, 1), (0, 0), (2, 1), (1, 0)],
        [(2, 0)],
    ]
    path = tmp_path / "out" / "predictions.json"
    ecf.write_predictions(path, conversations, emotions, pair_predictions=pairs, probabilities=probabilities)
    written = json.loads(path.read_text(encoding="utf-8"))
    assert [record["emotion-cause_pairs"] for record in written] == [
        [["1_sadness", "1"], ["3_joy", "2"]],
        [["3_joy", "1"]],
    ]
    assert [u["emotion"] for u in written[0]["conversation"]] == ["sadness", "neutral", "joy"]
    assert written[0]["conversation"][0]["emotion_probabilities"]["fear"] == pytest.approx(1 / 7, abs=1e-6)
    assert written[0]["conversation"][0]["video_name"] == "dia2utt1.mp4"
    # The output is itself a valid file, in a deterministic form.
    assert len(ecf.load_conversations(path)) == 2
    first_bytes = path.read_bytes()
    ecf.write_predictions(path, conversations, emotions, pair_predictions=pairs, probabilities=probabilities)
    assert path.read_bytes() == first_bytes


def test_write_predictions_without_pairs_drops_the_gold_pairs(tmp_path):
    conversations = ecf.load_conversations(FIXTURE, conversation_ids=[2])
    path = tmp_path / "predictions.json"
    ecf.write_predictions(path, conversations, ["joy", "joy", "anger"])
    (written,) = json.loads(path.read_text(encoding="utf-8"))
    assert "emotion-cause_pairs" not in written
    assert [u["emotion"] for u in written["conversation"]] == ["joy", "joy", "anger"]
    with pytest.raises(ValueError, match="got 2 emotion predictions for 3 utterances"):
        ecf.write_predictions(path, conversations, ["joy", "joy"])


def test_gold_round_trip_reproduces_the_gold_pairs(tmp_path):
    conversations = ecf.load_conversations(FIXTURE)
    dialogues = ecf.conversations_to_conversation_dataset(conversations)
    path = tmp_path / "gold_as_predictions.json"
    labels = [label for row in dialogues["labels"] for label in row]
    ecf.write_predictions(path, conversations, labels, pair_predictions=dialogues["cause_pairs"])
    written = ecf.load_conversations(path)
    for before, after in zip(conversations, written):
        assert sorted(before["emotion-cause_pairs"]) == sorted(after["emotion-cause_pairs"])
        assert before["conversation"] == after["conversation"]


def test_plot_confusion_matrix(tmp_path):
    path = tmp_path / "plots" / "confusion.png"
    matrix = [[5 if row == column else 1 for column in range(7)] for row in range(7)]
    matrix[3] = [0] * 7  # a class without gold utterances must not divide by zero
    ecf.plot_confusion_matrix(matrix, ecf.EMOTIONS, path, title="dev")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not SHARED_ECF.is_dir(), reason="the full ECF corpus is not next to the repository")
def test_full_training_file():
    conversations = ecf.load_conversations(SHARED_ECF / "Subtask_2_train.json")
    assert len(conversations) == 1374
    assert sum(len(c["conversation"]) for c in conversations) == 13619
    assert sum(len(c["emotion-cause_pairs"]) for c in conversations) == 9794
    dev_ids = ecf.read_conversation_ids(SHARED_ECF / "dev_conversation_ids.json")
    assert len(dev_ids) == 112
    train = ecf.load_conversations(SHARED_ECF / "Subtask_2_train.json", exclude_conversation_ids=dev_ids)
    assert len(train) == 1374 - 112
