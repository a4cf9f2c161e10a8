# Copyright 2024 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""The ECF 2.0 / SemEval-2024 Task 3 (subtask 2) JSON format.

A file is a list of conversations::

    {"conversation_ID": 1,
     "conversation": [{"utterance_ID": 1, "text": "...", "speaker": "Chandler", "emotion": "neutral",
                       "video_source": ["S01E01", "00:01:19.037", "00:01:25.417"], "video_name": "dia1utt1.mp4"},
                      ...],
     "emotion-cause_pairs": [["3_surprise", "1"], ...]}

A pair ``["5_surprise", "2"]`` reads "utterance 5 feels surprise, caused by utterance 2" (1-based ids).
This module validates such files, turns them into `datasets.Dataset` objects (one row per utterance or
one row per conversation) and writes predictions back in the same format.
"""

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import datasets

from configuration_mmemotion import ECF_EMOTIONS
from processing_mmemotion import speaker_ids


logger = logging.getLogger(__name__)

EMOTIONS = ECF_EMOTIONS
"""The 7 labels; their position is the label id (the model config's default labels)."""

EMOTION_TO_ID = {emotion: label_id for label_id, emotion in enumerate(EMOTIONS)}
CAUSAL_EMOTIONS = EMOTIONS[1:]
"""Only utterances with one of these emotions have causes (and appear as the first half of a pair)."""

IGNORE_INDEX = -100
"""Label id of an utterance without a gold emotion (ignored by the PyTorch cross-entropy loss)."""

_PAIR_EMOTION_PATTERN = re.compile(r"^(\d+)_([A-Za-z]+)$")

PathLike = str | os.PathLike


def pair_emotion(utterance_id: int, emotion: str) -> str:
    """The first half of a pair, `"5_surprise"`: utterance 5 (1-based) feels surprise."""
    return f"{utterance_id}_{emotion}"


class ECFFormatError(ValueError):
    """A file does not follow the ECF / SemEval-2024 Task 3 format; the message names the faulty record."""


def _read_json(path: PathLike) -> Any:
    """Parses a JSON file, turning a syntax error into an `ECFFormatError` that names the file and position."""
    with open(path, encoding="utf-8") as file:
        try:
            return json.load(file)
        except json.JSONDecodeError as error:
            raise ECFFormatError(
                f"{path}: invalid JSON at line {error.lineno}, column {error.colno}: {error.msg}"
            ) from error


def _parse_id(value: Any) -> int | None:
    """Returns `value` as an int when it is an int or a string of digits, else None (bool is not an id)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None


def _normalize_emotion(value: Any) -> str | None:
    """Returns the lower-case label when `value` names one of `EMOTIONS` (any case), else None."""
    if isinstance(value, str) and value.strip().lower() in EMOTION_TO_ID:
        return value.strip().lower()
    return None


class _RecordValidator:
    """Validates and normalises the records of one file, building error messages that locate the problem."""

    def __init__(self, path: PathLike, require_labels: bool, allow_empty_text: bool = False):
        self.path = path
        self.require_labels = require_labels
        self.allow_empty_text = allow_empty_text
        self.empty_texts: list[str] = []  # where the empty transcripts are, when allowed

    def error(self, where: str, problem: str) -> ECFFormatError:
        return ECFFormatError(f"{self.path}: {where}: {problem}")

    def conversation(self, index: int, record: Any) -> dict[str, Any]:
        if not isinstance(record, dict):
            raise self.error(f"record {index}", f"expected a JSON object, got {type(record).__name__}")
        required = ["conversation_ID", "conversation"] + (["emotion-cause_pairs"] if self.require_labels else [])
        conversation_id = _parse_id(record.get("conversation_ID"))
        where = f"conversation_ID {record['conversation_ID']}" if conversation_id is not None else f"record {index}"
        missing = [field for field in required if field not in record]
        if missing:
            raise self.error(where, f"missing field(s) {', '.join(missing)}")
        if conversation_id is None:
            raise self.error(where, f"conversation_ID must be an integer, got {record['conversation_ID']!r}")
        where = f"conversation_ID {conversation_id}"
        utterances = record["conversation"]
        if not isinstance(utterances, list) or not utterances:
            raise self.error(where, "'conversation' must be a non-empty list of utterances")

        normalized_utterances = [
            self.utterance(conversation_id, position, utterance) for position, utterance in enumerate(utterances)
        ]
        normalized = dict(record, conversation_ID=conversation_id, conversation=normalized_utterances)
        if "emotion-cause_pairs" in record:
            normalized["emotion-cause_pairs"] = self.pairs(
                conversation_id, record["emotion-cause_pairs"], normalized_utterances
            )
        return normalized

    def utterance(self, conversation_id: int, position: int, record: Any) -> dict[str, Any]:
        where = f"conversation_ID {conversation_id}, utterance {position + 1}"
        if not isinstance(record, dict):
            raise self.error(where, f"expected a JSON object, got {type(record).__name__}")
        if "utterance_ID" in record:
            where = f"conversation_ID {conversation_id}, utterance_ID {record['utterance_ID']}"
        required = ["utterance_ID", "text", "speaker"] + (["emotion"] if self.require_labels else [])
        missing = [field for field in required if field not in record]
        if missing:
            raise self.error(where, f"missing field(s) {', '.join(missing)}")

        # Utterance ids are 1-based positions: pairs refer to utterances by id, so a gap or a repeat would
        # make them point at the wrong text.
        utterance_id = _parse_id(record["utterance_ID"])
        if utterance_id != position + 1:
            raise self.error(
                where, f"utterance ids must be consecutive from 1 (no gaps, no duplicates); expected {position + 1}"
            )
        text = record["text"]
        if text is not None and not isinstance(text, str):
            raise self.error(where, f"text must be a string, got {text!r}")
        if text is None or not text.strip():
            if not self.allow_empty_text:
                raise self.error(where, "empty text")
            self.empty_texts.append(where)
            text = ""
        if not isinstance(record["speaker"], str):
            raise self.error(where, f"speaker must be a string, got {record['speaker']!r}")
        normalized = dict(record, utterance_ID=utterance_id, text=text)
        if "emotion" in record:
            emotion = _normalize_emotion(record["emotion"])
            if emotion is None:
                raise self.error(where, f"emotion {record['emotion']!r} is not one of {', '.join(EMOTIONS)}")
            normalized["emotion"] = emotion
        return normalized

    def pairs(self, conversation_id: int, pairs: Any, utterances: list[dict[str, Any]]) -> list[list[str]]:
        where = f"conversation_ID {conversation_id}"
        if not isinstance(pairs, list):
            raise self.error(where, "'emotion-cause_pairs' must be a list")
        normalized = []
        for pair in pairs:
            emotion_utterance_id, emotion, cause_utterance_id = self.pair(conversation_id, pair, utterances)
            entry = [pair_emotion(emotion_utterance_id, emotion), str(cause_utterance_id)]
            if entry not in normalized:  # a repeated gold pair is still one pair
                normalized.append(entry)
        return normalized

    def pair(self, conversation_id: int, pair: Any, utterances: list[dict[str, Any]]) -> tuple[int, str, int]:
        where = f"conversation_ID {conversation_id}"
        if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
            raise self.error(where, f"pair {pair!r} is not of the form ['5_surprise', '2']")
        match = _PAIR_EMOTION_PATTERN.match(pair[0].strip())
        cause_utterance_id = _parse_id(pair[1])
        if match is None or cause_utterance_id is None:
            raise self.error(where, f"pair {pair!r} is not of the form ['5_surprise', '2']")
        emotion_utterance_id = int(match.group(1))
        where = f"conversation_ID {conversation_id}, utterance_ID {emotion_utterance_id}"
        for utterance_id in (emotion_utterance_id, cause_utterance_id):
            if not 1 <= utterance_id <= len(utterances):
                raise self.error(
                    where,
                    f"pair {pair!r} names utterance {utterance_id}, outside the conversation (1-{len(utterances)})",
                )
        emotion = _normalize_emotion(match.group(2))
        if emotion is None or emotion == "neutral":
            raise self.error(where, f"pair {pair!r}: the emotion must be one of {', '.join(CAUSAL_EMOTIONS)}")
        labelled_emotion = utterances[emotion_utterance_id - 1].get("emotion")
        if labelled_emotion is not None and labelled_emotion != emotion:
            raise self.error(where, f"pair {pair!r} says {emotion} but the utterance is labelled {labelled_emotion}")
        return emotion_utterance_id, emotion, cause_utterance_id


def _select(
    conversations: list[dict[str, Any]],
    path: PathLike,
    conversation_ids: Iterable[int] | None,
    exclude_conversation_ids: Iterable[int] | None,
) -> list[dict[str, Any]]:
    """Keeps the requested conversations (file order); an id that the file lacks is an error, as it means a
    split file that does not belong to this data file."""
    available = {conversation["conversation_ID"] for conversation in conversations}
    selected = conversations
    for ids, keep in ((conversation_ids, True), (exclude_conversation_ids, False)):
        if ids is None:
            continue
        ids = {_parse_id(conversation_id) for conversation_id in ids}
        unknown = sorted(ids - available, key=str)
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} requested conversation id(s) not in the file: {unknown[:10]}")
        selected = [conversation for conversation in selected if (conversation["conversation_ID"] in ids) == keep]
    return selected


def load_conversations(
    path: PathLike,
    conversation_ids: Iterable[int] | None = None,
    exclude_conversation_ids: Iterable[int] | None = None,
    require_labels: bool = True,
    allow_empty_text: bool = False,
) -> list[dict[str, Any]]:
    """Reads and validates an ECF / SemEval-2024 Task 3 JSON file.

    Args:
        path: the JSON file (a list of conversations).
        conversation_ids: keep only these conversations (e.g. from `read_conversation_ids`).
        exclude_conversation_ids: drop these conversations (e.g. the dev ids, to train on the rest).
        require_labels: when False (files to predict on), `emotion` and `emotion-cause_pairs` may be absent;
            where present they are still validated.
        allow_empty_text: when True, an empty or whitespace-only transcript (or `null`) becomes `""`, which the
            processor masks (`text_mask` 0) as it does at inference, and a warning gives their count and names the
            first few (conversation_ID, utterance_ID); when False (the default: ECF has none) it is an error.

    Returns:
        The conversations in file order, as in the file but normalised: integer ids, lower-case emotions,
        pairs written `["5_surprise", "2"]` with repeats removed.

    Raises:
        ECFFormatError: malformed JSON (with its position), a missing field, an unknown emotion, utterance ids
            that are not 1, 2, 3, ..., an empty text, a pair outside its conversation or whose emotion differs
            from the utterance's label, a repeated conversation id. The message names the file, the
            conversation_ID and the utterance_ID.
        ValueError: a requested or excluded conversation id that the file lacks.
    """
    data = _read_json(path)
    if not isinstance(data, list):
        raise ECFFormatError(f"{path}: expected a JSON list of conversations, got {type(data).__name__}")
    validator = _RecordValidator(path, require_labels, allow_empty_text)
    conversations = []
    seen_ids = set()
    for index, record in enumerate(data):
        conversation = validator.conversation(index, record)
        if conversation["conversation_ID"] in seen_ids:
            raise validator.error(f"conversation_ID {conversation['conversation_ID']}", "repeated conversation_ID")
        seen_ids.add(conversation["conversation_ID"])
        conversations.append(conversation)
    if validator.empty_texts:
        empty = validator.empty_texts
        logger.warning(
            f"{path}: {len(empty)} empty transcript(s), their text is masked: {'; '.join(empty[:5])}"
            + ("; ..." if len(empty) > 5 else "")
        )
    return _select(conversations, path, conversation_ids, exclude_conversation_ids)


def read_conversation_ids(path: PathLike, split: str | None = None) -> list[int]:
    """Reads a list of conversation ids.

    The file is a JSON list, or an object such as `{"dev": [...], "note": "..."}`: then `split` names the key to
    read; by default the object must hold exactly one list (other values, like a note, are ignored).
    """
    data = _read_json(path)
    if isinstance(data, dict):
        if split is not None:
            if split not in data:
                raise ValueError(f"{path}: no {split!r} key (keys: {', '.join(data)})")
            data = data[split]
        else:
            lists = [value for value in data.values() if isinstance(value, list)]
            if len(lists) != 1:
                raise ValueError(f"{path}: {len(lists)} lists in the object; pass `split` to choose one")
            (data,) = lists
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of conversation ids")
    ids = [_parse_id(conversation_id) for conversation_id in data]
    if None in ids:
        raise ValueError(f"{path}: conversation ids must be integers, got {data[ids.index(None)]!r}")
    return ids


def missing_clips(conversations: list[dict[str, Any]], video_dir: PathLike) -> tuple[list[str], list[str]]:
    """The clip names the conversations need and those of them not in `video_dir`. A `video_dir` that is not a folder,
    or holds none of the clips, is an error: a mistyped path must not run everything without video."""
    if not os.path.isdir(video_dir):
        raise ValueError(f"--video_dir {video_dir} is not a folder.")
    names = list(
        dict.fromkeys(
            clip_name(conversation, utterance) for conversation in conversations for utterance in conversation["conversation"]
        )
    )
    missing = [name for name in names if not os.path.isfile(os.path.join(video_dir, name))]
    if missing and len(missing) == len(names):
        raise ValueError(
            f"--video_dir {video_dir} holds none of the {len(names)} clips of the data (e.g. {', '.join(names[:3])}): "
            "pass the folder of the clips, or leave --video_dir out to run without video and audio."
        )
    return names, missing


def clip_name(conversation: dict[str, Any], utterance: dict[str, Any]) -> str:
    """The file name of an utterance's clip: its `video_name`, default `dia{c}utt{u}.mp4`."""
    return utterance.get("video_name") or f"dia{conversation['conversation_ID']}utt{utterance['utterance_ID']}.mp4"


def video_paths(conversations: list[dict[str, Any]], video_dir: PathLike | None) -> list[list[str | None]]:
    """Resolves each utterance's clip as `video_dir/video_name` (default `dia{c}utt{u}.mp4`), per conversation.

    A clip that is not on disk gets None (the model then runs without video for that utterance) and the count
    is logged once, so that missing media is visible without failing the run.
    """
    if video_dir is None:
        return [[None] * len(conversation["conversation"]) for conversation in conversations]
    paths, missing, total = [], 0, 0
    for conversation in conversations:
        conversation_paths = []
        for utterance in conversation["conversation"]:
            path = os.path.join(video_dir, clip_name(conversation, utterance))
            if not os.path.isfile(path):
                path = None
                missing += 1
            conversation_paths.append(path)
            total += 1
        paths.append(conversation_paths)
    if missing:
        logger.warning(f"video missing for {missing} of {total} utterances (looked in {video_dir})")
    return paths


def _label_ids(conversation: dict[str, Any]) -> list[int]:
    return [EMOTION_TO_ID.get(utterance.get("emotion"), IGNORE_INDEX) for utterance in conversation["conversation"]]


def _label_feature(conversations: list[dict[str, Any]]) -> datasets.ClassLabel | datasets.Value:
    """`ClassLabel` when every utterance is labelled; a plain integer otherwise, since `ClassLabel` cannot
    hold `IGNORE_INDEX`."""
    labelled = all(
        "emotion" in utterance for conversation in conversations for utterance in conversation["conversation"]
    )
    return datasets.ClassLabel(names=list(EMOTIONS)) if labelled else datasets.Value("int64")


def conversations_to_utterance_dataset(
    conversations: list[dict[str, Any]], video_dir: PathLike | None = None
) -> datasets.Dataset:
    """One row per utterance, in conversation then utterance order.

    Columns: `conversation_id`, `utterance_id` (1-based), `speaker`, `text`, `video_path` (None when there is
    no `video_dir` or the clip is missing) and `label` (`ClassLabel` over `EMOTIONS`; `IGNORE_INDEX` for
    unlabelled utterances, in which case the column is a plain integer).
    """
    columns = {name: [] for name in ("conversation_id", "utterance_id", "speaker", "text", "video_path", "label")}
    for conversation, paths in zip(conversations, video_paths(conversations, video_dir)):
        for utterance, video_path, label in zip(conversation["conversation"], paths, _label_ids(conversation)):
            columns["conversation_id"].append(conversation["conversation_ID"])
            columns["utterance_id"].append(utterance["utterance_ID"])
            columns["speaker"].append(utterance["speaker"])
            columns["text"].append(utterance["text"])
            columns["video_path"].append(video_path)
            columns["label"].append(label)
    features = datasets.Features(
        conversation_id=datasets.Value("int64"),
        utterance_id=datasets.Value("int64"),
        speaker=datasets.Value("string"),
        text=datasets.Value("string"),
        video_path=datasets.Value("string"),
        label=_label_feature(conversations),
    )
    return datasets.Dataset.from_dict(columns, features=features)


def _cause_pair_indexes(conversation: dict[str, Any]) -> list[list[int]]:
    """The gold pairs as 0-based `[emotion_utterance_index, cause_utterance_index]`."""
    pairs = []
    for emotion_part, cause_utterance_id in conversation.get("emotion-cause_pairs", []):
        emotion_utterance_id = int(emotion_part.split("_", 1)[0])
        pairs.append([emotion_utterance_id - 1, int(cause_utterance_id) - 1])
    return pairs


def conversations_to_conversation_dataset(conversations: list[dict[str, Any]]) -> datasets.Dataset:
    """One row per conversation.

    Columns: `conversation_id`; per-utterance lists `utterance_ids`, `labels` (as in
    `conversations_to_utterance_dataset`) and `speaker_ids` (0-based, in order of first appearance in the
    conversation); `cause_pairs`, the gold pairs as 0-based `[emotion_utterance_index, cause_utterance_index]` (empty
    when unlabelled). The text and clips of the utterances are rows of `conversations_to_utterance_dataset`.
    """
    columns = {name: [] for name in ("conversation_id", "utterance_ids", "speaker_ids", "labels", "cause_pairs")}
    for conversation in conversations:
        utterances = conversation["conversation"]
        columns["conversation_id"].append(conversation["conversation_ID"])
        columns["utterance_ids"].append([utterance["utterance_ID"] for utterance in utterances])
        columns["speaker_ids"].append(speaker_ids([utterance["speaker"] for utterance in utterances]))
        columns["labels"].append(_label_ids(conversation))
        columns["cause_pairs"].append(_cause_pair_indexes(conversation))
    features = datasets.Features(
        conversation_id=datasets.Value("int64"),
        utterance_ids=datasets.List(datasets.Value("int64")),
        speaker_ids=datasets.List(datasets.Value("int64")),
        labels=datasets.List(_label_feature(conversations)),
        cause_pairs=datasets.List(datasets.List(datasets.Value("int64"), length=2)),
    )
    return datasets.Dataset.from_dict(columns, features=features)


def _emotion_name(prediction: Any) -> str:
    """Accepts a label id (int or numpy integer) or a label name."""
    if isinstance(prediction, str):
        emotion = _normalize_emotion(prediction)
        if emotion is None:
            raise ValueError(f"unknown emotion {prediction!r}; expected one of {', '.join(EMOTIONS)}")
        return emotion
    label_id = int(prediction)
    if not 0 <= label_id < len(EMOTIONS):
        raise ValueError(f"emotion id {label_id} outside 0-{len(EMOTIONS) - 1}")
    return EMOTIONS[label_id]


def _submission_pairs(
    conversation: dict[str, Any], utterances: list[dict[str, Any]], pair_indexes: Iterable[Sequence[int]]
) -> tuple[list[list[str]], int]:
    """Turns 0-based `(emotion_utterance_index, cause_utterance_index)` pairs into sorted, repeat-free
    `["5_surprise", "2"]` pairs labelled with the predicted emotion of `utterances`. Returns them with the number of
    pairs left out because their emotion utterance is predicted neutral."""
    pairs, dropped = [], 0
    for emotion_index, cause_index in sorted({(int(e), int(c)) for e, c in pair_indexes}):
        if not (0 <= emotion_index < len(utterances) and 0 <= cause_index < len(utterances)):
            raise ValueError(
                f"conversation_ID {conversation['conversation_ID']}: pair ({emotion_index}, {cause_index}) "
                f"outside the utterance indexes 0-{len(utterances) - 1}"
            )
        emotion = utterances[emotion_index]["emotion"]
        if emotion == "neutral":
            dropped += 1
            continue
        pairs.append([pair_emotion(emotion_index + 1, emotion), str(cause_index + 1)])
    return pairs, dropped


def write_predictions(
    path: PathLike,
    conversations: list[dict[str, Any]],
    emotion_predictions: Sequence[Any],
    pair_predictions: Sequence[Iterable[Sequence[int]]] | None = None,
    probabilities: Sequence[Sequence[float]] | None = None,
) -> None:
    """Writes predictions in the input format (a SemEval-2024 Task 3 submission when pairs are given).

    Args:
        path: output JSON file (parent folders are created).
        conversations: the conversations predicted on, as returned by `load_conversations`.
        emotion_predictions: one label id or label name per utterance, in the row order of
            `conversations_to_utterance_dataset` (conversation order, then utterance order).
        pair_predictions: one entry per conversation: its predicted pairs as 0-based
            `(emotion_utterance_index, cause_utterance_index)`, like the `cause_pairs` column. They are written
            `["5_surprise", "2"]` (1-based ids, the emotion being the predicted emotion of the first utterance),
            sorted and without repeats. Pairs whose emotion utterance is predicted neutral are left out (only the
            six other emotions have causes) and counted in a log message. When None, no pairs are written (the
            gold pairs of `conversations` are never copied into a prediction file).
        probabilities: one vector of `len(EMOTIONS)` probabilities per utterance, same order as
            `emotion_predictions`; written as `emotion_probabilities` {label: p} rounded to 6 decimals.
    """
    num_utterances = sum(len(conversation["conversation"]) for conversation in conversations)
    emotion_predictions = [_emotion_name(prediction) for prediction in emotion_predictions]
    if len(emotion_predictions) != num_utterances:
        raise ValueError(f"got {len(emotion_predictions)} emotion predictions for {num_utterances} utterances")
    if probabilities is not None and len(probabilities) != num_utterances:
        raise ValueError(f"got {len(probabilities)} probability vectors for {num_utterances} utterances")
    if pair_predictions is not None and len(pair_predictions) != len(conversations):
        raise ValueError(f"got pair predictions for {len(pair_predictions)} of {len(conversations)} conversations")

    output, row, dropped_neutral_pairs = [], 0, 0
    for index, conversation in enumerate(conversations):
        utterances = []
        for utterance in conversation["conversation"]:
            written = dict(utterance, emotion=emotion_predictions[row])
            if probabilities is not None:
                vector = [float(p) for p in probabilities[row]]
                if len(vector) != len(EMOTIONS):
                    raise ValueError(f"probability vector {row} has {len(vector)} values, expected {len(EMOTIONS)}")
                written["emotion_probabilities"] = {emotion: round(p, 6) for emotion, p in zip(EMOTIONS, vector)}
            utterances.append(written)
            row += 1
        record = {key: value for key, value in conversation.items() if key != "emotion-cause_pairs"}
        record["conversation"] = utterances
        if pair_predictions is not None:
            record["emotion-cause_pairs"], dropped = _submission_pairs(
                conversation, utterances, pair_predictions[index]
            )
            dropped_neutral_pairs += dropped
        output.append(record)

    if dropped_neutral_pairs:
        logger.info(f"left out {dropped_neutral_pairs} predicted pairs whose emotion utterance is predicted neutral")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as file:
        json.dump(output, file, indent=2, ensure_ascii=False)
        file.write("\n")


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], label_names: Sequence[str], path: PathLike, title: str | None = None
) -> None:
    """Saves a confusion matrix (rows = gold, columns = predicted) as a PNG.

    Cells show counts; the colour is the row-normalised fraction (the per-class recall on the diagonal), so that
    rare emotions are as readable as neutral.
    """
    # The object-oriented API renders with Agg without touching pyplot's global backend, so this works
    # headless and inside a process that uses another backend.
    import numpy as np
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    counts = np.asarray(matrix, dtype=np.int64)
    row_totals = counts.sum(axis=1, keepdims=True)
    fractions = np.divide(counts, row_totals, out=np.zeros(counts.shape, dtype=float), where=row_totals > 0)

    size = 1.0 + 0.75 * len(label_names)
    figure = Figure(figsize=(size + 1.5, size))
    axes = figure.add_subplot()
    display = ConfusionMatrixDisplay(fractions, display_labels=list(label_names))
    display.plot(ax=axes, cmap="Blues", colorbar=False, xticks_rotation=45, im_kw={"vmin": 0.0, "vmax": 1.0})
    figure.colorbar(display.im_, ax=axes, label="fraction of gold row")
    for (row, column), text in np.ndenumerate(display.text_):
        text.set_text(str(counts[row, column]))
        text.set_fontsize(8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("gold")
    if title:
        axes.set_title(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    figure.savefig(path, dpi=150)
