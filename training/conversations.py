# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Conversation rows for the emotion-cause model (`MMEmotionForEmotionCauseExtraction`): from conversation rows
(`ecf.conversations_to_conversation_dataset`) and utterance-level model inputs (processor outputs or cached encoder
features, one row per utterance) to padded conversation batches.

- `ConversationDataset`: gives each conversation row the rows of its utterances;
- `ConversationCollator`: pads utterances per conversation (and tokens, frames, clips inside them, or hands the
  utterances to an utterance-level collator) and turns the gold `cause_pairs` into the `cause_labels` matrix.
"""

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import datasets
import torch

import ecf
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction
from processing_mmemotion import pad_conversations


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
        for key, pad_value in (("labels", ecf.IGNORE_INDEX), ("speaker_ids", 0)):
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
        return {
            key: pad_conversations(flat[key].split(lengths), utterance_mask.shape[1]) for key in names if key in flat
        }

    @staticmethod
    def _cause_labels(rows: Sequence[Mapping[str, Any]], lengths: list[int], num_utterances: int) -> torch.Tensor:
        cause_labels = torch.full((len(rows), num_utterances, num_utterances), ecf.IGNORE_INDEX, dtype=torch.long)
        for index, (row, length) in enumerate(zip(rows, lengths)):
            cause_labels[index, :length, :length] = 0
            for emotion_index, cause_index in row["cause_pairs"]:
                cause_labels[index, emotion_index, cause_index] = 1
        return cause_labels


def conversation_dataset(conversations: list[dict], utterances: datasets.Dataset) -> ConversationDataset:
    """One row per conversation (speaker ids, emotion labels, gold pairs) holding the rows of its utterances."""
    rows = ecf.conversations_to_conversation_dataset(conversations)
    if all(label == ecf.IGNORE_INDEX for labels in rows["labels"] for label in labels):
        rows = rows.remove_columns(["labels", "cause_pairs"])  # an unlabelled test file: predict without a loss
    return ConversationDataset(rows, utterances)
