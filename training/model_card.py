# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""The model card of a training run: `model_card_template.md` filled in with the run's config, data and scores."""

import os
from dataclasses import dataclass, field
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import TrainingArguments

from configuration_mmemotion import MMEmotionConfig


TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model_card_template.md")
# The confusion matrix of the validation set, written to the output folder and shown on the model card.
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
# Entries of `Trainer.evaluate()` that describe the run rather than the model: left out of the model card.
RUN_STATISTICS = {"loss", "runtime", "samples", "samples_per_second", "steps_per_second", "epoch"}
# The task of each `--task`, as the card's `model-index` names it.
TASK_NAMES = {
    "emotion": "Emotion recognition in conversation",
    "joint": "Emotion-cause pair extraction in conversation",
}


@dataclass
class ModelCardInfo:
    """What the model card says about a run, filled in as the run goes."""

    text_model: str | None
    lora: str | None
    training_data: list[str]
    task: str = "emotion"
    # What the calibration after training did to the model, a line per setting (neutral-logit offset, pair threshold).
    calibration: list[str] = field(default_factory=list)
    # The settings the validation data chose, e.g. "the pair threshold" (its scores are then optimistic).
    tuned_on_validation: list[str] = field(default_factory=list)
    eval_metrics: dict[str, Any] | None = None


def render_model_card(config: MMEmotionConfig, training_args: TrainingArguments, info: ModelCardInfo) -> ModelCard:
    """The model card: what the model is, its labels, training data and validation scores (also as `model-index`
    metadata, which the Hub shows beside the card) with the confusion matrix, and how to use it."""
    base_model = info.text_model if info.text_model and not os.path.exists(info.text_model) else None
    repo = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    scores = {
        name: value
        for name, value in (info.eval_metrics or {}).items()
        if isinstance(value, float) and name not in RUN_STATISTICS
    }
    eval_results = [
        EvalResult(
            task_type="text-classification",
            task_name=TASK_NAMES[info.task],
            dataset_type="ecf",
            dataset_name="ECF 2.0 (SemEval-2024 Task 3)",
            dataset_split="validation",
            metric_type=name,
            metric_name=name,
            metric_value=round(value, 4),
        )
        for name, value in scores.items()
    ]
    card_data = ModelCardData(
        library_name="transformers",
        base_model=base_model,
        tags=["mmemotion", "emotion-recognition", "emotion-recognition-in-conversation", "multimodal", *config.modalities],
        model_name=repo.split("/")[-1] if eval_results else None,
        eval_results=eval_results or None,
    )
    # Scores on the data that chose the epoch or the threshold are optimistic: say so.
    chosen_on_validation = []
    if training_args.do_train and training_args.load_best_model_at_end:
        chosen_on_validation.append(f"the epoch (best validation {training_args.metric_for_best_model})")
    chosen_on_validation.extend(info.tuned_on_validation)
    encoders = ", ".join(
        f"{modality} ({'frozen' if getattr(config, f'freeze_{modality}_encoder') else 'trained'})"
        for modality in config.modalities
    )
    has_confusion_matrix = os.path.isfile(os.path.join(training_args.output_dir, CONFUSION_MATRIX_FILE))
    return ModelCard.from_template(
        card_data,
        template_path=TEMPLATE,
        task=info.task,
        name=repo.split("/")[-1],
        repo=repo,
        config=config,
        args=training_args,
        encoders=encoders,
        # A local folder's path means nothing to the card's readers.
        text_model_source=base_model or ("a local folder" if info.text_model else "the preset / checkpoint"),
        lora=info.lora,
        label_names=[config.id2label[index] for index in range(config.num_labels)],
        training_data=info.training_data,
        calibration=info.calibration,
        scores=scores,
        chosen_on_validation=chosen_on_validation,
        confusion_matrix=CONFUSION_MATRIX_FILE if has_confusion_matrix else None,
    )


def describe_lora(peft_model, merged: bool) -> str:
    """Model-card line on the LoRA adapter."""
    lora_config = peft_model.peft_config["default"]
    where = (
        "merged into the text encoder"
        if merged
        else "the adapter (`adapter_config.json`) sits beside the base weights and `AutoModel` applies it (needs peft)"
    )
    return (
        f"r={lora_config.r}, alpha={lora_config.lora_alpha}, dropout={lora_config.lora_dropout} on "
        f"`{lora_config.target_modules}`; {where}"
    )


def describe_splits(conversations: dict[str, list[dict]], data_args) -> list[str]:
    """Model-card lines on the training and validation data (`data_args`: train.py's `DataTrainingArguments`)."""
    sources = {"train": os.path.basename(data_args.train_file or "")}
    if data_args.validation_conversation_ids is not None:
        sources["validation"] = (
            f"the conversations of {sources['train']} listed in {os.path.basename(data_args.validation_conversation_ids)}"
        )
    else:
        sources["validation"] = os.path.basename(data_args.validation_file or "")
    return [
        f"{split}: {len(split_conversations)} conversations, "
        f"{sum(len(conversation['conversation']) for conversation in split_conversations)} utterances ({sources[split]})"
        for split, split_conversations in conversations.items()
        if split in sources
    ]
