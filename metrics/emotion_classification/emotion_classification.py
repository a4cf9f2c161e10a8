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
"""Utterance-level emotion classification scores: accuracy, weighted / macro F1, per-class F1, confusion matrix."""

from collections.abc import Sequence

import datasets
import evaluate
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score


# The 7 ECF / MELD labels, in label-id order (the same tuple as `ecf.EMOTIONS`; repeated here because evaluate
# copies this script into its module cache, from where the repository's modules cannot be imported).
DEFAULT_LABEL_NAMES = ("neutral", "anger", "disgust", "fear", "joy", "sadness", "surprise")

_DESCRIPTION = """
Scores for utterance-level emotion recognition in conversation (ERC). Weighted F1 (per-class F1 weighted by the
number of gold utterances of the class) is the figure usually reported on ECF / MELD; macro F1 shows how the rare
emotions fare.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted label ids.
    references (`list` of `int`): gold label ids.
    label_names (`list` of `str`, *optional*): the name of each label id; defaults to the value given to
        `evaluate.load(..., label_names=...)`, else the 7 ECF emotions.
Returns:
    accuracy (`float`): fraction of correct predictions.
    weighted_f1 (`float`): per-class F1 weighted by gold support.
    macro_f1 (`float`): unweighted mean of the per-class F1 over the classes present in references or predictions.
    f1_<label> (`float`): F1 of each label (0.0 for a label neither predicted nor in the references).
    confusion_matrix (`list` of `list` of `int`): rows = gold label id, columns = predicted label id.
Examples:
    >>> metric = evaluate.load("metrics/emotion_classification")
    >>> results = metric.compute(predictions=[0, 4, 4], references=[0, 4, 6])
    >>> round(results["accuracy"], 4)
    0.6667
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EmotionClassification(evaluate.Metric):
    def __init__(self, label_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.label_names = tuple(label_names) if label_names is not None else DEFAULT_LABEL_NAMES

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
            reference_urls=["https://scikit-learn.org/stable/modules/model_evaluation.html#classification-metrics"],
        )

    def _compute(self, predictions, references, label_names: Sequence[str] | None = None):
        label_names = tuple(label_names) if label_names is not None else self.label_names
        label_ids = list(range(len(label_names)))
        for name, values in (("predictions", predictions), ("references", references)):
            outside = sorted({value for value in values if not 0 <= value < len(label_names)})
            if outside:
                raise ValueError(f"{name} hold label ids {outside} outside 0-{len(label_names) - 1}")

        # `labels=label_ids` keeps one entry per label name even when a class is absent from a small sample.
        per_class_f1 = f1_score(references, predictions, labels=label_ids, average=None, zero_division=0)
        results = {
            "accuracy": float(accuracy_score(references, predictions)),
            "weighted_f1": float(f1_score(references, predictions, average="weighted", zero_division=0)),
            # sklearn's default label set (those seen in references or predictions): a class that is in neither
            # has no F1 to average, and counting it as 0 would only penalise small evaluation sets.
            "macro_f1": float(f1_score(references, predictions, average="macro", zero_division=0)),
        }
        results.update({f"f1_{name}": float(score) for name, score in zip(label_names, per_class_f1)})
        results["confusion_matrix"] = confusion_matrix(references, predictions, labels=label_ids).tolist()
        return results
