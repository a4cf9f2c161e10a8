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
"""The official SemEval-2024 Task 3 subtask 2 (multimodal emotion-cause pair extraction) score.

`score_emotion_cause_pairs` is the plain-Python implementation (importable without the `evaluate` loading
machinery, e.g. `from metrics.ecpe_pair_f1.ecpe_pair_f1 import score_emotion_cause_pairs` from the repository
root); the `EcpePairF1` metric only feeds it.
"""

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import evaluate


# The 6 emotions that have causes (ECF labels minus neutral), in the ECF label order: `ecf.CAUSAL_EMOTIONS`, repeated
# here because evaluate copies this script into its module cache, from where the repository's modules cannot be imported.
CAUSAL_EMOTIONS = ("anger", "disgust", "fear", "joy", "sadness", "surprise")

_PAIR_EMOTION_PATTERN = re.compile(r"^(\d+)_([A-Za-z]+)$")

# (conversation_ID, emotion utterance id, cause utterance id, emotion)
Pair = tuple[int, int, int, str]

_DESCRIPTION = """
Official score of SemEval-2024 Task 3, subtask 2 (multimodal emotion-cause pair extraction in conversations).
A predicted pair counts only when conversation, emotion utterance, cause utterance and emotion all match a gold
pair (repeated pairs count once). For each of the 6 non-neutral emotions c, precision, recall and F1 are computed
over the pairs of that emotion; the ranking metric is weighted F1 = sum_c F1_c * gold_c / gold_total. A pair with
the right utterances but the wrong emotion is a false positive for the predicted emotion and a false negative for
the gold one. Predicted conversations absent from the references are ignored; a reference conversation absent
from the predictions counts as predicting no pairs.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `dict`): one per conversation, in submission format:
        `{"conversation_ID": 1375, "emotion-cause_pairs": [["1_disgust", "1"], ["5_surprise", "2"]]}`
        (1-based utterance ids, as strings).
    references (`list` of `dict`): the gold conversations, same shape.
    Conversations are matched by `conversation_ID`, not by position. `evaluate` needs as many predictions as
    references; to score lists of different lengths, call `score_emotion_cause_pairs` directly.
Returns:
    weighted_f1 (`float`): the ranking metric.
    micro_precision, micro_recall, micro_f1 (`float`): over all pairs of the 6 emotions.
    precision_<emotion>, recall_<emotion>, f1_<emotion> (`float`): per emotion.
Examples:
    >>> metric = evaluate.load("metrics/ecpe_pair_f1")
    >>> gold = [{"conversation_ID": 1, "emotion-cause_pairs": [["2_joy", "1"], ["2_joy", "2"]]}]
    >>> predicted = [{"conversation_ID": 1, "emotion-cause_pairs": [["2_joy", "2"]]}]
    >>> round(metric.compute(predictions=predicted, references=gold)["weighted_f1"], 4)
    0.6667
"""


def _pairs_of(conversation: Mapping[str, Any]) -> set[Pair]:
    """The set of pairs of one submission-format conversation (the set removes repeats)."""
    conversation_id = int(conversation["conversation_ID"])
    pairs = set()
    for pair in conversation.get("emotion-cause_pairs") or []:
        match = _PAIR_EMOTION_PATTERN.match(str(pair[0]).strip()) if len(pair) == 2 else None
        cause = str(pair[1]).strip() if len(pair) == 2 else ""
        if match is None or not cause.isdigit():
            raise ValueError(
                f"conversation_ID {conversation_id}: pair {pair!r} is not of the form ['5_surprise', '2']"
            )
        emotion = match.group(2).lower()
        if emotion not in CAUSAL_EMOTIONS:
            raise ValueError(
                f"conversation_ID {conversation_id}: pair {pair!r} has emotion {emotion!r}; pairs exist only for "
                f"{', '.join(CAUSAL_EMOTIONS)}"
            )
        pairs.add((conversation_id, int(match.group(1)), int(cause), emotion))
    return pairs


def _pairs_by_conversation(conversations: Iterable[Mapping[str, Any]], name: str) -> dict[int, set[Pair]]:
    """{conversation_ID: its pairs}; a repeated conversation would make the scoring ambiguous, so it is an error."""
    pairs = {}
    for conversation in conversations:
        conversation_id = int(conversation["conversation_ID"])
        if conversation_id in pairs:
            raise ValueError(f"{name}: conversation_ID {conversation_id} appears more than once")
        pairs[conversation_id] = _pairs_of(conversation)
    return pairs


def _precision_recall_f1(true_positives: int, predicted: int, gold: int) -> tuple[float, float, float]:
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / gold if gold else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def score_emotion_cause_pairs(
    predictions: Iterable[Mapping[str, Any]], references: Iterable[Mapping[str, Any]]
) -> dict[str, float]:
    """Official SemEval-2024 Task 3 subtask 2 score (see the module description).

    Args:
        predictions: submission-format conversations `{"conversation_ID": ..., "emotion-cause_pairs": [...]}`
            (other keys, such as `conversation`, are ignored, so a predictions file can be passed as loaded).
        references: the gold conversations, same shape.

    Returns:
        `weighted_f1`, `micro_precision`, `micro_recall`, `micro_f1` and, for each of the 6 emotions,
        `precision_<emotion>`, `recall_<emotion>`, `f1_<emotion>`.

    Raises:
        ValueError: a malformed pair, a pair with an emotion outside the 6, or a repeated conversation_ID.
    """
    gold_by_conversation = _pairs_by_conversation(references, "references")
    predicted_by_conversation = _pairs_by_conversation(predictions, "predictions")
    gold = set().union(*gold_by_conversation.values())
    # Only the conversations of the gold file are scored; a missing one contributes no predicted pairs.
    predicted = set()
    for conversation_id, pairs in predicted_by_conversation.items():
        if conversation_id in gold_by_conversation:
            predicted |= pairs

    # Matching whole tuples makes a right-utterances / wrong-emotion pair a false positive for the predicted
    # emotion and a false negative for the gold one.
    correct = gold & predicted
    gold_counts, predicted_counts, correct_counts = (
        Counter(pair[3] for pair in pairs) for pairs in (gold, predicted, correct)
    )
    results = {}
    weighted_f1 = 0.0
    for emotion in CAUSAL_EMOTIONS:
        precision, recall, f1 = _precision_recall_f1(
            correct_counts[emotion], predicted_counts[emotion], gold_counts[emotion]
        )
        results.update({f"precision_{emotion}": precision, f"recall_{emotion}": recall, f"f1_{emotion}": f1})
        if gold:
            weighted_f1 += f1 * gold_counts[emotion] / len(gold)
    precision, recall, f1 = _precision_recall_f1(len(correct), len(predicted), len(gold))
    return {
        "weighted_f1": weighted_f1,
        "micro_precision": precision,
        "micro_recall": recall,
        "micro_f1": f1,
        **results,
    }


_CONVERSATION_PAIRS = {
    "conversation_ID": datasets.Value("int64"),
    "emotion-cause_pairs": datasets.List(datasets.List(datasets.Value("string"))),
}


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EcpePairF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _CONVERSATION_PAIRS, "references": _CONVERSATION_PAIRS}),
            reference_urls=["https://nustm.github.io/SemEval-2024_ECAC/"],
        )

    def _compute(self, predictions, references):
        return score_emotion_cause_pairs(predictions, references)
