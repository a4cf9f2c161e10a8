# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Where an emotion-cause checkpoint's pair errors come from, and pair-decoding rules beside train.py's single
threshold, each tuned and scored the way train.py keeps its threshold (tuned on 4 of 5 folds of the conversations,
scored on the fifth, the folds pooled: the cross-fitted score).

    python benchmarks/pair_decoding.py --model_name_or_path runs/joint --input_file dev.json \
        --output_file runs/joint/pair_decoding.json

The input must be labelled (emotions and pairs). Every score is the official pair weighted F1. Rows:

- `as saved`: the checkpoint's emotions and its pairs at its threshold (what predict.py writes);
- `gold causes` / `gold emotions`: the same with the gold causes of each utterance it predicts non-neutral (those
  within its cause window), or with the gold emotions and its own pair decoding: how much each half of the task loses;
- `itself and the previous utterance`: that rule on the checkpoint's emotions;
- `by offset`: over the utterances whose emotion it predicts right, its gold causes found and missed and the causes
  it adds that are not gold, by the cause's position relative to the utterance (-3: three or more before it, 2: two
  or more after it);
- the decoding rules, each with its value tuned on all the conversations and its cross-fitted score: one threshold
  (train.py's), one threshold for the utterance itself, one for the previous utterance and one for the others, one
  threshold and at most k causes per emotion utterance, one threshold with the utterance itself always a cause. Every
  rule keeps each emotion utterance's most probable cause, as `decode_pairs` does.
"""

import argparse
import dataclasses
import itertools
import json
import os
import sys

import torch


sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ecf  # noqa: E402
from configuration_mmemotion import MMEmotionConfig  # noqa: E402
from metrics.ecpe_pair_f1.ecpe_pair_f1 import score_emotion_cause_pairs  # noqa: E402
from modeling_mmemotion import _candidate_pairs  # noqa: E402
from predict import PredictArguments, predict  # noqa: E402
from training.evaluation import CAUSE_THRESHOLDS, pair_records, pairs_to_submission, select_by_cross_fitting  # noqa: E402


def gold_matrices(conversations: list[dict], num_utterances: int, label2id: dict[str, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(C, U) gold emotion ids (0 at padding) and (C, U, U) gold pairs, 0-based."""
    emotions = torch.zeros(len(conversations), num_utterances, dtype=torch.long)
    pairs = torch.zeros(len(conversations), num_utterances, num_utterances, dtype=torch.bool)
    for row, conversation in enumerate(conversations):
        for index, utterance in enumerate(conversation["conversation"]):
            emotions[row, index] = label2id[utterance["emotion"]]
        for emotion_index, cause_index in ecf._cause_pair_indexes(conversation):
            pairs[row, emotion_index, cause_index] = True
    return emotions, pairs


class PairDecoder:
    """Pairs from the checkpoint's predictions, by a rule over (emotion utterance i, candidate cause j)."""

    def __init__(self, predictions, model):
        self.predictions, self.model = predictions, model
        # Read with this repository's code: a checkpoint saved with older code has no `config.neutral_label_id`.
        self.neutral_label_id = MMEmotionConfig.neutral_label_id.fget(model.config)
        if self.neutral_label_id is None or not hasattr(model, "decode_pairs"):
            raise ValueError(f"{model.name_or_path} is not an emotion-cause checkpoint with a 'neutral' label.")
        mask = predictions.utterance_mask.bool()
        self.candidates = _candidate_pairs(mask, model.config.cause_window)
        self.probabilities = torch.sigmoid(predictions.cause_logits.float()).masked_fill(~self.candidates, 0.0)
        self.most_probable = torch.nn.functional.one_hot(self.probabilities.argmax(dim=-1), mask.shape[1]).bool()
        self.rank = self.probabilities.argsort(dim=-1, descending=True).argsort(dim=-1)  # 0 for the most probable
        positions = torch.arange(mask.shape[1])
        self.offset = positions[None, :] - positions[:, None]  # j - i

    def emotion_utterances(self, emotion_logits: torch.Tensor) -> torch.Tensor:
        mask = self.predictions.utterance_mask.bool()
        return mask & (emotion_logits.argmax(dim=-1) != self.neutral_label_id)

    def submission(self, selected: torch.Tensor, emotion_logits: torch.Tensor | None = None) -> list[dict]:
        """The pairs `selected` (C, U, U) keeps among the candidates of the utterances predicted non-neutral."""
        emotion_logits = self.predictions.emotion_logits if emotion_logits is None else emotion_logits
        selected = selected & self.candidates & self.emotion_utterances(emotion_logits)[:, :, None]
        pairs = [[] for _ in range(selected.shape[0])]
        for row, emotion_index, cause_index in selected.nonzero().tolist():
            pairs[row].append((emotion_index, cause_index))
        predictions = dataclasses.replace(self.predictions, emotion_logits=emotion_logits)
        return pairs_to_submission(predictions, pairs, self.model.config.id2label)

    def threshold(self, threshold: float) -> torch.Tensor:
        return (self.probabilities >= threshold) | self.most_probable

    def per_offset(self, itself: float, previous: float, others: float) -> torch.Tensor:
        thresholds = torch.full(self.offset.shape, others)
        thresholds[self.offset == 0], thresholds[self.offset == -1] = itself, previous
        return (self.probabilities >= thresholds) | self.most_probable

    def capped(self, threshold: float, max_causes: int) -> torch.Tensor:
        return self.threshold(threshold) & (self.rank < max_causes)

    def with_itself(self, threshold: float) -> torch.Tensor:
        return self.threshold(threshold) | (self.offset == 0)


def errors_by_offset(decoder: PairDecoder, selected: torch.Tensor, gold_emotions: torch.Tensor, gold_pairs: torch.Tensor) -> dict:
    """Found / missed / added pairs of the utterances whose emotion is predicted right, by clipped cause offset."""
    emotion_logits = decoder.predictions.emotion_logits
    right = decoder.emotion_utterances(emotion_logits) & (emotion_logits.argmax(dim=-1) == gold_emotions)
    selected = selected & decoder.candidates & right[:, :, None]
    gold = gold_pairs & right[:, :, None]
    offset = decoder.offset.clamp(-3, 2)
    return {
        str(value): {
            "found": int((selected & gold & (offset == value)).sum()),
            "missed": int((gold & ~selected & (offset == value)).sum()),
            "added": int((selected & ~gold & (offset == value)).sum()),
        }
        for value in range(-3, 3)
    }


def cross_fitted(decoder: PairDecoder, references: list[dict], rule, candidates: list[tuple]) -> dict:
    """`rule(*candidate)` tuned on all the conversations and cross-fitted over 5 folds of them."""
    submissions = {candidate: decoder.submission(rule(*candidate)) for candidate in candidates}

    def score(values, rows):
        predicted = [submissions[values[row]][row] for row in rows]
        return score_emotion_cause_pairs(predicted, [references[row] for row in rows])["weighted_f1"]

    selection = select_by_cross_fitting(candidates, candidates[0], len(references), score)
    return {
        "tuned on all": list(selection.tuned_value),
        "score tuned on all": round(selection.tuned_score, 4),
        "cross-fitted": round(selection.cross_fitted_score, 4),
        "fold values": [list(value) for value in selection.fold_values],
    }


def analyse(model_name_or_path: str, input_file: str) -> dict:
    conversations = ecf.load_conversations(input_file)
    arguments = PredictArguments(model_name_or_path=[model_name_or_path], input_file=input_file, output_file=os.devnull)
    predictions, model = predict(arguments, conversations)
    references = pair_records(conversations)
    decoder = PairDecoder(predictions, model)
    gold_emotions, gold_pairs = gold_matrices(conversations, predictions.utterance_mask.shape[1], model.config.label2id)
    gold_emotion_logits = torch.nn.functional.one_hot(gold_emotions, model.config.num_labels).float()

    def official(submission):
        return round(score_emotion_cause_pairs(submission, references)["weighted_f1"], 4)

    threshold = model.config.cause_threshold
    high = [value for value in CAUSE_THRESHOLDS if value >= 0.5]
    return {
        "model": model_name_or_path,
        "input": input_file,
        "conversations": len(conversations),
        "threshold": threshold,
        "as saved": official(decoder.submission(decoder.threshold(threshold))),
        "gold causes": official(decoder.submission(gold_pairs)),
        "gold emotions": official(decoder.submission(decoder.threshold(threshold), gold_emotion_logits)),
        "itself and the previous utterance": official(decoder.submission((decoder.offset == 0) | (decoder.offset == -1))),
        "by offset": errors_by_offset(decoder, decoder.threshold(threshold), gold_emotions, gold_pairs),
        "one threshold": cross_fitted(decoder, references, decoder.threshold, [(value,) for value in CAUSE_THRESHOLDS]),
        "itself / previous / others": cross_fitted(decoder, references, decoder.per_offset, list(itertools.product(high, repeat=3))),
        "threshold, at most k causes": cross_fitted(
            decoder, references, decoder.capped, [(value, k) for value in CAUSE_THRESHOLDS for k in (1, 2, 3, 4)]
        ),
        "threshold, itself always": cross_fitted(decoder, references, decoder.with_itself, [(value,) for value in CAUSE_THRESHOLDS]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model_name_or_path", required=True, help="An emotion-cause checkpoint (train.py --task joint).")
    parser.add_argument("--input_file", required=True, help="Labelled ECF / SemEval-2024 Task 3 conversations.")
    parser.add_argument("--output_file", help="Where to write the report (JSON); printed in any case.")
    args = parser.parse_args(argv)
    report = analyse(args.model_name_or_path, args.input_file)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output_file:
        with open(args.output_file, "w", encoding="utf-8") as file:
            file.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
