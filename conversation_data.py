# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Conversation-level data for the emotion-cause model (`MMEmotionForEmotionCauseExtraction`).

From conversation rows (`ecf.conversations_to_conversation_dataset`) and utterance-level model inputs (processor
outputs or cached encoder features, one row per utterance) to padded conversation batches, and from the model's
outputs to scored SemEval-2024 Task 3 subtask-2 pairs:

- `ConversationDataset`: gives each conversation row the rows of its utterances;
- `ConversationCollator`: pads utterances per conversation (and tokens, frames, clips inside them, or hands the
  utterances to an utterance-level collator) and turns the gold `cause_pairs` into the `cause_labels` matrix;
- `predict_conversations`: runs the model over a dataset and keeps its logits;
- `pairs_to_submission`, `pair_records`: decoded pairs and gold conversations in the `ecpe_pair_f1` metric's format;
- `tune_cause_threshold`: picks the pair threshold that maximises the official weighted pair F1 on those logits;
- `select_cause_threshold`: keeps a tuned threshold only if tuning also wins on conversations it did not see.
"""

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import datasets
import evaluate
import torch

from ecf import IGNORE_INDEX
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, _scatter_rows
from processing_mmemotion import pad_conversations


ECPE_PAIR_F1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), "metrics", "ecpe_pair_f1")


class ConversationDataset(torch.utils.data.Dataset):
    """Conversation rows, each given the rows of its utterances under `"utterances"`.

    Args:
        conversations (`datasets.Dataset`):
            One row per conversation, as `ecf.conversations_to_conversation_dataset` builds it (`conversation_id`,
            `utterance_ids`, `speaker_ids`, `labels`, `cause_pairs`, ...).
        utterances (`datasets.Dataset`, *optional*):
            One row per utterance in conversation then utterance order (the order of
            `ecf.conversations_to_utterance_dataset`), holding the model inputs: processor outputs (`input_ids`,
            `attention_mask`, ...), cached encoder outputs (`text_features`, `video_features`, ...), or what an
            utterance collator reads (`video_path`, ...). `row["utterances"]` is the slice of the conversation's
            utterances (a dict of columns), in the dataset's format: give large feature columns the `"torch"` or
            `"numpy"` format, since python lists of floats would dominate the training time. When it has a
            `conversation_id` column, the order is checked.
    """

    def __init__(self, conversations: datasets.Dataset, utterances: datasets.Dataset | None = None):
        self.conversations = conversations
        lengths = [len(utterance_ids) for utterance_ids in conversations["utterance_ids"]]
        self.offsets = [0]
        for length in lengths:
            self.offsets.append(self.offsets[-1] + length)
        if utterances is not None:
            if len(utterances) != self.offsets[-1]:
                raise ValueError(
                    f"{len(utterances)} utterance rows for {len(conversations)} conversations of {self.offsets[-1]} "
                    "utterances."
                )
            if "conversation_id" in utterances.column_names:
                expected = [cid for cid, length in zip(conversations["conversation_id"], lengths) for _ in range(length)]
                if [int(cid) for cid in utterances["conversation_id"]] != expected:
                    raise ValueError("`utterances` is not in the conversations' utterance order.")
        self.utterances = utterances

    def __len__(self) -> int:
        return len(self.conversations)

    def __getitem__(self, index: int) -> dict[str, Any]:
        row = dict(self.conversations[index])
        if self.utterances is not None:
            row["utterances"] = self.utterances[self.offsets[index] : self.offsets[index + 1]]
        return row


@dataclass
class ConversationCollator:
    """Pads conversation rows (`ConversationDataset`) into one `MMEmotionForEmotionCauseExtraction` batch.

    Each row needs `utterance_ids` (for its length) and, for the model inputs, `utterances`: the columns of its
    utterances (`ConversationDataset`). Without `utterance_collator`, the columns among the model's
    `utterance_input_names` (processor outputs or cached features) are padded to the longest conversation, and their
    inner dimensions (tokens, frames, clips) to the largest in the batch. The processor's masks (`attention_mask`,
    `video_frame_mask`, `audio_clip_mask`) must come with what they mask, so that the padding is ignored. With
    `utterance_collator`, every utterance of the batch goes through it as one flat batch (e.g. one that reads clips or
    pads tokens itself), and the model inputs it returns are scattered back to (C, U, ...).

    From the conversation row: `labels` (padded with -100) and `speaker_ids` (padded with 0) when present;
    `cause_pairs` (0-based `[emotion_index, cause_index]`) become `cause_labels` (C, U, U): 1 for gold pairs, 0 for the
    other pairs of real utterances, -100 at padding (the model itself keeps only pairs within `config.cause_window`
    whose emotion utterance is labelled non-neutral); `conversation_id` is kept as a (C,) tensor. The batch gets
    `utterance_mask` (C, U); other keys are dropped.

    Args:
        pad_token_id (`int`, *optional*, defaults to 0):
            Padding of `input_ids` (the tokenizer's).
        pad_to_utterances (`int`, *optional*):
            Pad every batch to this many utterances instead of to its longest conversation: fixed shapes, so that
            `Trainer` can concatenate the (C, U, U) pair logits of its evaluation batches.
        utterance_collator (`Callable`, *optional*):
            Batches a list of utterance rows (dicts of one utterance's columns) into `MMEmotionModel` inputs.
    """

    pad_token_id: int = 0
    pad_to_utterances: int | None = None
    utterance_collator: Callable[[list[dict[str, Any]]], Mapping[str, torch.Tensor]] | None = None

    def __call__(self, rows: list[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        lengths = [len(row["utterance_ids"]) for row in rows]
        num_utterances = max(lengths)
        if self.pad_to_utterances is not None:
            if self.pad_to_utterances < num_utterances:
                raise ValueError(f"A conversation has {num_utterances} utterances, more than `pad_to_utterances`.")
            num_utterances = self.pad_to_utterances
        positions = torch.arange(num_utterances)
        utterance_mask = positions[None, :] < torch.tensor(lengths)[:, None]
        batch = {"utterance_mask": utterance_mask.long()}
        if "utterances" in rows[0]:
            batch.update(self._model_inputs(rows, lengths, utterance_mask))
        for key, pad_value in (("labels", IGNORE_INDEX), ("speaker_ids", 0)):
            if key in rows[0]:
                batch[key] = pad_conversations([row[key] for row in rows], num_utterances, pad_value)
        if "cause_pairs" in rows[0]:
            batch["cause_labels"] = self._cause_labels(rows, lengths, num_utterances)
        if "conversation_id" in rows[0]:
            batch["conversation_id"] = torch.tensor([row["conversation_id"] for row in rows])
        return batch

    def _model_inputs(self, rows: Sequence[Mapping[str, Any]], lengths: list[int], utterance_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        names = MMEmotionForEmotionCauseExtraction.utterance_input_names
        if self.utterance_collator is None:
            return {
                key: pad_conversations(
                    [row["utterances"][key] for row in rows],
                    utterance_mask.shape[1],
                    self.pad_token_id if key == "input_ids" else 0,
                )
                for key in names
                if key in rows[0]["utterances"]
            }
        utterance_rows = [
            {key: column[index] for key, column in row["utterances"].items()}
            for row, length in zip(rows, lengths)
            for index in range(length)
        ]
        flat = self.utterance_collator(utterance_rows)
        return {key: _scatter_rows(flat[key], utterance_mask) for key in names if key in flat}

    @staticmethod
    def _cause_labels(rows: Sequence[Mapping[str, Any]], lengths: list[int], num_utterances: int) -> torch.Tensor:
        cause_labels = torch.full((len(rows), num_utterances, num_utterances), IGNORE_INDEX, dtype=torch.long)
        for index, (row, length) in enumerate(zip(rows, lengths)):
            cause_labels[index, :length, :length] = 0
            for emotion_index, cause_index in row["cause_pairs"]:
                cause_labels[index, emotion_index, cause_index] = 1
        return cause_labels


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


@torch.no_grad()
def predict_conversations(
    model: MMEmotionForEmotionCauseExtraction,
    dataset: torch.utils.data.Dataset,
    collator: ConversationCollator,
    batch_size: int = 8,
) -> ConversationPredictions:
    """Runs `model` (in eval mode, on its device) over `dataset`, whose rows need a `conversation_id`."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collator)
    conversation_ids, emotion_logits, cause_logits, utterance_masks = [], [], [], []
    for batch in loader:
        conversation_ids.extend(batch.pop("conversation_id").tolist())
        batch = {key: value.to(model.device) for key, value in batch.items() if key not in ("labels", "cause_labels")}
        outputs = model(**batch)
        emotion_logits.append(outputs.emotion_logits.float().cpu())
        cause_logits.append(outputs.cause_logits.float().cpu())
        utterance_masks.append(batch["utterance_mask"].cpu())
    num_utterances = max(mask.shape[1] for mask in utterance_masks)
    return ConversationPredictions(
        conversation_ids=conversation_ids,
        emotion_logits=_concatenate_padded(emotion_logits, num_utterances, 1, 0.0),
        cause_logits=_concatenate_padded(cause_logits, num_utterances, 2, torch.finfo(torch.float32).min),
        utterance_mask=_concatenate_padded(utterance_masks, num_utterances, 1, 0),
    )


def _concatenate_padded(batches: list[torch.Tensor], num_utterances: int, utterance_dims: int, value: float) -> torch.Tensor:
    """Pads dimensions 1 to `utterance_dims` of every batch to `num_utterances`, then concatenates the batches."""
    padded = []
    for tensor in batches:
        padding = []  # `pad` lists (before, after) pairs from the last dimension backwards
        for dim in reversed(range(tensor.ndim)):
            padding += [0, num_utterances - tensor.shape[dim] if 1 <= dim <= utterance_dims else 0]
        padded.append(torch.nn.functional.pad(tensor, padding, value=value))
    return torch.cat(padded)


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
                [f"{emotion_index + 1}_{id2label[emotions[row][emotion_index]]}", str(cause_index + 1)]
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
        predictions: `predict_conversations` on the validation set.
        references: the gold validation conversations (`ecf.load_conversations` records, or any
            `{"conversation_ID", "emotion-cause_pairs"}` dicts), the same conversations as `predictions`.
        thresholds: candidates; defaults to 0.05, 0.10, ..., 0.95.
        metric: the `metrics/ecpe_pair_f1` module; loaded from this repository when omitted.

    Returns:
        The best threshold (the lowest of equal scores) and the weighted pair F1 of every candidate. The caller stores
        the threshold in `model.config.cause_threshold`, which `decode_pairs` then uses by default.
    """
    thresholds = [round(0.05 * step, 2) for step in range(1, 20)] if thresholds is None else thresholds
    metric = evaluate.load(ECPE_PAIR_F1) if metric is None else metric
    references = pair_records(references)
    scores = {}
    for threshold in thresholds:
        pairs = model.decode_pairs(
            predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask, threshold=threshold
        )
        submission = pairs_to_submission(predictions, pairs, model.config.id2label)
        scores[threshold] = metric.compute(predictions=submission, references=references)["weighted_f1"]
    best = max(thresholds, key=lambda threshold: (scores[threshold], -threshold))
    return best, scores


@dataclass
class ThresholdSelection:
    """What `select_cause_threshold` found: the threshold to keep and the scores behind the choice."""

    threshold: float
    fixed_threshold: float
    tuned_threshold: float
    # Weighted pair F1 on all the conversations at the fixed threshold and at the tuned one (tuned on them all).
    fixed_f1: float
    tuned_f1: float
    # Each fold scored at the threshold tuned on the other folds, all folds pooled: what tuning gives on unseen data.
    cross_fitted_f1: float
    fold_thresholds: list[float] = field(default_factory=list)


def select_cause_threshold(
    model: MMEmotionForEmotionCauseExtraction,
    predictions: ConversationPredictions,
    references: Sequence[Mapping[str, Any]],
    num_folds: int = 5,
    thresholds: Sequence[float] | None = None,
    metric: evaluate.EvaluationModule | None = None,
) -> ThresholdSelection:
    """Tunes the pair threshold only where tuning holds up on conversations it was not tuned on.

    The conversations are dealt into `num_folds` folds; each fold is decoded at the threshold tuned on the others and
    the pooled folds are scored (the cross-fitted F1). The threshold tuned on all the conversations is kept if the
    cross-fitted F1 beats the model's current threshold (`config.cause_threshold`) on the same conversations;
    otherwise the current one stays. Too few conversations for the folds: the current threshold stays.
    """
    thresholds = [round(0.05 * step, 2) for step in range(1, 20)] if thresholds is None else list(thresholds)
    metric = evaluate.load(ECPE_PAIR_F1) if metric is None else metric
    references = pair_records(references)
    fixed = model.config.cause_threshold
    candidates = sorted({*thresholds, fixed})
    submissions = {
        threshold: pairs_to_submission(
            predictions,
            model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask, threshold=threshold),
            model.config.id2label,
        )
        for threshold in candidates
    }

    def score(threshold: float, rows: Sequence[int]) -> float:
        return metric.compute(
            predictions=[submissions[threshold][row] for row in rows], references=[references[row] for row in rows]
        )["weighted_f1"]

    def tune(rows: Sequence[int]) -> float:
        scores = {threshold: score(threshold, rows) for threshold in thresholds}
        return max(thresholds, key=lambda threshold: (scores[threshold], -threshold))

    every_row = list(range(len(references)))
    tuned = tune(every_row)
    selection = ThresholdSelection(
        threshold=fixed, fixed_threshold=fixed, tuned_threshold=tuned, fixed_f1=score(fixed, every_row),
        tuned_f1=score(tuned, every_row), cross_fitted_f1=float("nan"),
    )
    if len(references) < 2 * num_folds:
        return selection
    folds = [every_row[fold::num_folds] for fold in range(num_folds)]
    cross_fitted = []
    for fold, rows in enumerate(folds):
        threshold = tune([row for other, other_rows in enumerate(folds) if other != fold for row in other_rows])
        selection.fold_thresholds.append(threshold)
        cross_fitted.extend(submissions[threshold][row] for row in rows)
    pooled_references = [references[row] for rows in folds for row in rows]
    selection.cross_fitted_f1 = metric.compute(predictions=cross_fitted, references=pooled_references)["weighted_f1"]
    if selection.cross_fitted_f1 > selection.fixed_f1:
        selection.threshold = tuned
    return selection
