# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""From the model's outputs to scores and predictions: `compute_metrics` of both tasks (the `metrics/` modules), the
pair threshold tuned on validation predictions with the official weighted pair F1 (`tune_cause_threshold`), the
decoding settings set after training (the neutral-logit offset and the pair threshold), each kept only if tuning also
wins on conversations it did not see (`calibrate_on_validation`), and the predictions files."""

import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
from sklearn.metrics import f1_score
from transformers import EvalPrediction, PreTrainedModel, Trainer
from transformers.trainer_utils import PredictionOutput

import ecf
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction
from training.conversations import ConversationDataset


logger = logging.getLogger(__name__)

METRICS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "metrics")
EMOTION_METRIC = os.path.join(METRICS_DIR, "emotion_classification")
ECPE_PAIR_F1 = os.path.join(METRICS_DIR, "ecpe_pair_f1")


@dataclass
class ConversationPredictions:
    r"""
    The model's outputs over a dataset, padded to its longest conversation.

    conversation_ids (`list[int]`):
        The `conversation_id` of each row.
    emotion_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, num_labels)`)
    cause_logits (`torch.FloatTensor` of shape `(num_conversations, max_utterances, max_utterances)`):
        Lowest value of the dtype outside the candidate pairs and at padding.
    utterance_mask (`torch.LongTensor` of shape `(num_conversations, max_utterances)`)
    """

    conversation_ids: list[int]
    emotion_logits: torch.Tensor
    cause_logits: torch.Tensor
    utterance_mask: torch.Tensor

    def emotion_predictions(self) -> list[int]:
        """Predicted emotion ids of the real utterances, in conversation then utterance order (what
        `ecf.write_predictions` takes)."""
        return self.emotion_logits.argmax(dim=-1)[self.utterance_mask.bool()].tolist()


def pairs_to_submission(
    predictions: ConversationPredictions, pairs: Sequence[Iterable[tuple[int, int]]], id2label: Mapping[int, str]
) -> list[dict[str, Any]]:
    """Decoded pairs (`model.decode_pairs`) -> submission-format conversations for the `ecpe_pair_f1` metric:
    `{"conversation_ID": 1375, "emotion-cause_pairs": [["1_disgust", "1"], ...]}` (1-based ids, the predicted emotion of
    the first utterance)."""
    emotions = predictions.emotion_logits.argmax(dim=-1).tolist()
    return [
        {
            "conversation_ID": conversation_id,
            "emotion-cause_pairs": [
                [ecf.pair_emotion(emotion_index + 1, id2label[emotions[row][emotion_index]]), str(cause_index + 1)]
                for emotion_index, cause_index in conversation_pairs
            ],
        }
        for row, (conversation_id, conversation_pairs) in enumerate(zip(predictions.conversation_ids, pairs))
    ]


def pair_records(conversations: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Only the `conversation_ID` and `emotion-cause_pairs` of each conversation: the `ecpe_pair_f1` module's features
    (it rejects other keys, such as the `conversation` of `ecf.load_conversations` records or predictions files)."""
    return [
        {"conversation_ID": conversation["conversation_ID"], "emotion-cause_pairs": conversation["emotion-cause_pairs"]}
        for conversation in conversations
    ]


# The pair thresholds scanned by default: 0.05, 0.10, ..., 0.95.
CAUSE_THRESHOLDS = [round(0.05 * step, 2) for step in range(1, 20)]


def best_threshold(scores: Mapping[float, float]) -> float:
    """The threshold with the best score; the lowest of equal scores."""
    return max(scores, key=lambda threshold: (scores[threshold], -threshold))


def tune_cause_threshold(
    model: MMEmotionForEmotionCauseExtraction,
    predictions: ConversationPredictions,
    references: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float] | None = None,
    metric: evaluate.EvaluationModule | None = None,
) -> tuple[float, dict[float, float]]:
    """Scans pair thresholds on validation predictions with the official weighted pair F1.

    Args:
        model: decodes the pairs (`model.decode_pairs`, same emotion predictions for every threshold).
        predictions: the model's outputs on the validation set (`conversation_predictions`).
        references: the gold validation conversations (`ecf.load_conversations` records, or any
            `{"conversation_ID", "emotion-cause_pairs"}` dicts), the same conversations as `predictions`.
        thresholds: candidates; defaults to 0.05, 0.10, ..., 0.95.
        metric: the `metrics/ecpe_pair_f1` module; loaded from this repository when omitted.

    Returns:
        The best threshold (the lowest of equal scores) and the weighted pair F1 of every candidate. The caller stores
        the threshold in `model.config.cause_threshold`, which `decode_pairs` then uses by default.
    """
    thresholds = CAUSE_THRESHOLDS if thresholds is None else thresholds
    metric = evaluate.load(ECPE_PAIR_F1) if metric is None else metric
    references = pair_records(references)
    scores = {}
    for threshold in thresholds:
        pairs = model.decode_pairs(
            predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask, threshold=threshold
        )
        submission = pairs_to_submission(predictions, pairs, model.config.id2label)
        scores[threshold] = metric.compute(predictions=submission, references=references)["weighted_f1"]
    return best_threshold(scores), scores


@dataclass
class CrossFittedSelection:
    """What `select_by_cross_fitting` found: the value to keep and the scores behind the choice."""

    value: float
    fixed_value: float
    tuned_value: float
    # The score of all the rows at the fixed value and at the tuned one (tuned on them all).
    fixed_score: float
    tuned_score: float
    # Each fold scored at the value tuned on the other folds, all folds pooled: what tuning gives on unseen data.
    cross_fitted_score: float
    fold_values: list[float] = field(default_factory=list)


def select_by_cross_fitting(
    candidates: Sequence[float],
    fixed: float,
    num_rows: int,
    score: Callable[[Mapping[int, float], Sequence[int]], float],
    num_folds: int = 5,
) -> CrossFittedSelection:
    """Tunes a decoding setting only where tuning holds up on rows (conversations) it was not tuned on.

    `score(values, rows)` is the metric of `rows` decoded each with its `values[row]`. The rows are dealt into
    `num_folds` folds; each fold is decoded at the candidate tuned on the other folds and the pooled folds are scored
    (the cross-fitted score). The candidate tuned on all the rows is kept if the cross-fitted score beats `fixed` on
    the same rows; otherwise `fixed` stays, as it does when there are too few rows for the folds. Of candidates with
    equal scores, the first one wins.
    """

    def score_at(value: float, rows: Sequence[int]) -> float:
        return score(dict.fromkeys(rows, value), rows)

    def tune(rows: Sequence[int]) -> float:
        scores = [score_at(candidate, rows) for candidate in candidates]
        return candidates[scores.index(max(scores))]

    every_row = list(range(num_rows))
    tuned = tune(every_row)
    selection = CrossFittedSelection(
        value=fixed, fixed_value=fixed, tuned_value=tuned, fixed_score=score_at(fixed, every_row),
        tuned_score=score_at(tuned, every_row), cross_fitted_score=float("nan"),
    )
    if num_rows < 2 * num_folds:
        return selection
    folds = [every_row[fold::num_folds] for fold in range(num_folds)]
    values = {}
    for fold, rows in enumerate(folds):
        value = tune([row for other, other_rows in enumerate(folds) if other != fold for row in other_rows])
        selection.fold_values.append(value)
        values.update(dict.fromkeys(rows, value))
    selection.cross_fitted_score = score(values, every_row)
    if selection.cross_fitted_score > selection.fixed_score:
        selection.value = tuned
    return selection


def select_cause_threshold(
    model: MMEmotionForEmotionCauseExtraction,
    predictions: ConversationPredictions,
    references: Sequence[Mapping[str, Any]],
    num_folds: int = 5,
    thresholds: Sequence[float] | None = None,
    metric: evaluate.EvaluationModule | None = None,
) -> CrossFittedSelection:
    """The pair threshold (weighted pair F1) by `select_by_cross_fitting` over the conversations, against the model's
    current `config.cause_threshold`; of equal scores the lowest threshold wins."""
    thresholds = CAUSE_THRESHOLDS if thresholds is None else sorted(thresholds)
    metric = evaluate.load(ECPE_PAIR_F1) if metric is None else metric
    references = pair_records(references)
    fixed = model.config.cause_threshold
    submissions = {
        threshold: pairs_to_submission(
            predictions,
            model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask, threshold=threshold),
            model.config.id2label,
        )
        for threshold in sorted({*thresholds, fixed})
    }

    def score(values: Mapping[int, float], rows: Sequence[int]) -> float:
        return metric.compute(
            predictions=[submissions[values[row]][row] for row in rows], references=[references[row] for row in rows]
        )["weighted_f1"]

    return select_by_cross_fitting(thresholds, fixed, len(references), score, num_folds)


# The neutral-logit offsets scanned: -1.5, ..., 1.0 in steps of 0.05, nearest to 0 first (of equal scores, the
# smallest change wins).
NEUTRAL_LOGIT_OFFSETS = sorted((round(0.05 * step, 2) for step in range(-30, 21)), key=abs)


def select_neutral_logit_offset(
    config,
    emotion_logits: torch.Tensor,
    labels: Sequence[int],
    conversation_ids: Sequence[int],
    num_folds: int = 5,
    offsets: Sequence[float] | None = None,
) -> CrossFittedSelection:
    """`config.neutral_logit_offset` by `select_by_cross_fitting` over the conversations (emotion weighted F1 of their
    utterances), against the current offset.

    Args:
        config: the model's `MMEmotionConfig` (labels, current offset).
        emotion_logits: `(num_utterances, num_labels)` logits of the validation utterances, computed with the
            current offset.
        labels: each utterance's gold emotion id; `ecf.IGNORE_INDEX` (unlabelled) utterances are left out.
        conversation_ids: each utterance's conversation: folds hold whole conversations.
    """
    offsets = NEUTRAL_LOGIT_OFFSETS if offsets is None else list(offsets)
    labels = np.asarray(labels)
    labelled = labels != ecf.IGNORE_INDEX
    neutral = config.neutral_label_id
    # Logits without any offset, and the neutral column apart: decoding at an offset is one comparison.
    logits = emotion_logits.float().numpy()[labelled]
    neutral_logits = logits[:, neutral] - config.neutral_logit_offset
    best_other = np.delete(logits, neutral, axis=1)
    best_other_id = np.delete(np.arange(logits.shape[1]), neutral)[best_other.argmax(axis=1)]
    best_other = best_other.max(axis=1)
    labels = labels[labelled]
    _, conversation_rows = np.unique(np.asarray(conversation_ids)[labelled], return_inverse=True)
    num_conversations = int(conversation_rows.max()) + 1

    def score(values: Mapping[int, float], rows: Sequence[int]) -> float:
        offset_of_conversation = np.full(num_conversations, np.nan)
        offset_of_conversation[list(values)] = list(values.values())
        offset = offset_of_conversation[conversation_rows]
        scored = ~np.isnan(offset)
        predictions = np.where(neutral_logits + offset >= best_other, neutral, best_other_id)
        return float(f1_score(labels[scored], predictions[scored], average="weighted", zero_division=0))

    return select_by_cross_fitting(offsets, config.neutral_logit_offset, num_conversations, score, num_folds)


def emotion_metrics(model: PreTrainedModel) -> Callable[[EvalPrediction], dict[str, Any]]:
    """Emotion scores of the utterances with a label; `predictions` and `label_ids` may have any leading shape."""
    label_names = [model.config.id2label[index] for index in range(model.config.num_labels)]
    metric = evaluate.load(EMOTION_METRIC, keep_in_memory=True, label_names=label_names)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, Any]:
        labelled = prediction.label_ids != ecf.IGNORE_INDEX
        predictions = prediction.predictions.argmax(-1)
        return metric.compute(predictions=predictions[labelled], references=prediction.label_ids[labelled])

    return compute_metrics


def emotion_logits(outputs, labels):
    """Keeps the emotion logits of the model's outputs (logits, pooler_output, modality_mask) for metrics."""
    return outputs[0] if isinstance(outputs, tuple) else outputs


def write_emotion_predictions(path: str, conversations: list[dict], output: PredictionOutput, model: PreTrainedModel) -> None:
    probabilities = torch.softmax(torch.from_numpy(output.predictions).float(), dim=-1).numpy()
    emotions = [model.config.id2label[label_id] for label_id in probabilities.argmax(-1).tolist()]
    ecf.write_predictions(path, conversations, emotions, probabilities=probabilities.tolist())


def joint_logits(outputs, labels):
    """Keeps the emotion and pair logits of the model's outputs for metrics and predictions."""
    return outputs[0], outputs[1]


def conversation_predictions(dataset: ConversationDataset, output: PredictionOutput) -> ConversationPredictions:
    """`trainer.predict(dataset)` (with `joint_logits`) -> what `decode_pairs` and `tune_cause_threshold` read."""
    emotion_logits, cause_logits = (torch.from_numpy(logits) for logits in output.predictions)
    lengths = torch.from_numpy(np.diff(dataset.offsets))
    utterance_mask = torch.arange(emotion_logits.shape[1])[None, :] < lengths[:, None]
    return ConversationPredictions(
        conversation_ids=list(dataset.conversations["conversation_id"]),
        emotion_logits=emotion_logits,
        cause_logits=cause_logits,
        utterance_mask=utterance_mask.long(),
    )


# What `Trainer` hands `compute_metrics` as `label_ids` in the joint task: the gold emotions and pairs, and which
# utterances are real (the collator's `utterance_mask`).
JOINT_LABEL_NAMES = ["labels", "cause_labels", "utterance_mask"]


def joint_metrics(model: MMEmotionForEmotionCauseExtraction) -> Callable[[EvalPrediction], dict[str, Any]]:
    """The emotion task's scores of the utterances, and the official pair score (`pair_` + the `ecpe_pair_f1` names) of
    the pairs that `model.decode_pairs` gives at the model's current `cause_threshold`."""
    compute_emotion_metrics = emotion_metrics(model)
    pair_metric = evaluate.load(ECPE_PAIR_F1, keep_in_memory=True)
    id2label = model.config.id2label

    def compute_metrics(prediction: EvalPrediction) -> dict[str, Any]:
        emotion_logits, cause_logits = prediction.predictions
        labels, cause_labels, utterance_mask = prediction.label_ids  # `JOINT_LABEL_NAMES`
        metrics = compute_emotion_metrics(EvalPrediction(predictions=emotion_logits, label_ids=labels))
        # Conversations are numbered by row; the gold pairs are the 1s of `cause_labels`.
        predictions = ConversationPredictions(
            conversation_ids=list(range(len(labels))),
            emotion_logits=torch.from_numpy(emotion_logits),
            cause_logits=torch.from_numpy(cause_logits),
            utterance_mask=torch.from_numpy(utterance_mask).long(),
        )
        pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
        references = [
            {
                "conversation_ID": row,
                "emotion-cause_pairs": [
                    [ecf.pair_emotion(emotion_index + 1, id2label[labels[row, emotion_index]]), str(cause_index + 1)]
                    for emotion_index, cause_index in zip(*np.nonzero(cause_labels[row] == 1))
                ],
            }
            for row in range(len(labels))
        ]
        pair_scores = pair_metric.compute(predictions=pairs_to_submission(predictions, pairs, id2label), references=references)
        return {**metrics, **{f"pair_{name}": value for name, value in pair_scores.items()}}

    return compute_metrics


def describe_selection(name: str, selection: CrossFittedSelection, score_name: str, num_conversations: int) -> str:
    """The model-card line on what `select_by_cross_fitting` kept and why."""
    if selection.fold_values:
        check = (
            f"tuned on 4 of 5 folds and scored on the fifth, {score_name} {selection.cross_fitted_score:.4f} "
            f"(fold values {', '.join(map(str, selection.fold_values))}), against {selection.fixed_score:.4f} at "
            f"{selection.fixed_value}"
        )
    else:
        check = "too few for 5 folds to check a tuned value on"
    kept = "tuned" if selection.value != selection.fixed_value else "unchanged"
    return (
        f"{name} {selection.value} ({kept}) on the {num_conversations} validation conversations: {check}; "
        f"tuned on all of them: {selection.tuned_value} ({score_name} {selection.tuned_score:.4f})."
    )


def calibrate_on_validation(
    trainer: Trainer, dataset: ConversationDataset | datasets.Dataset, conversations: list[dict]
) -> list[str]:
    """After training: sets the neutral-logit offset (emotion weighted F1) and, for an emotion-cause model, then the pair
    threshold (weighted pair F1 of the emotions that offset gives), each to the value tuned on the validation
    conversations if tuning also wins on the folds it did not see (`select_by_cross_fitting`). Returns the model-card
    line of each setting."""
    config = trainer.model.config
    output = trainer.predict(dataset, metric_key_prefix="tuning")
    joint = isinstance(dataset, ConversationDataset)
    if joint:
        predictions = conversation_predictions(dataset, output)
        logits = predictions.emotion_logits[predictions.utterance_mask.bool()]
        labels = [label for labels in dataset.conversations["labels"] for label in labels]
        conversation_ids = np.repeat(dataset.conversations["conversation_id"], np.diff(dataset.offsets))
    else:
        logits = torch.from_numpy(output.predictions)
        labels, conversation_ids = dataset["label"], dataset["conversation_id"]
    offset = select_neutral_logit_offset(config, logits, labels, conversation_ids)
    config.neutral_logit_offset = offset.value
    chosen = {"the neutral-logit offset": offset}
    lines = [describe_selection("Neutral-logit offset", offset, "emotion weighted F1", len(conversations))]
    if joint:
        # The pair logits do not depend on the offset: only the emotions move, and with them the pairs decoded.
        predictions.emotion_logits[..., config.neutral_label_id] += offset.value - offset.fixed_value
        threshold = select_cause_threshold(trainer.model, predictions, conversations)
        config.cause_threshold = threshold.value
        chosen["the pair threshold"] = threshold
        lines.append(describe_selection("Pair threshold", threshold, "weighted pair F1", len(conversations)))
    trainer.model_card_info.tuned_on_validation.extend(
        name for name, selection in chosen.items() if selection.value != selection.fixed_value
    )
    return lines


def write_joint_predictions(
    path: str, conversations: list[dict], dataset: ConversationDataset, output: PredictionOutput, model: PreTrainedModel
) -> None:
    predictions = conversation_predictions(dataset, output)
    pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
    probabilities = predictions.emotion_logits.softmax(dim=-1)[predictions.utterance_mask.bool()]
    ecf.write_predictions(
        path, conversations, predictions.emotion_predictions(), pair_predictions=pairs, probabilities=probabilities.tolist()
    )
