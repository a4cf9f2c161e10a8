# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""Checks made before any work, so that a wrong setting fails in seconds instead of after hours (or not at all):
the launch, the Hub, `--video_dir`, encoders that would run with random weights, and frozen weights that a checkpoint
does not hold (docs/bad-input.md)."""

import logging
import os

import torch
from huggingface_hub import HfApi
from transformers import TrainingArguments

import ecf
from configuration_mmemotion import MMEmotionConfig
from modeling_mmemotion import MMEmotionModel


logger = logging.getLogger(__name__)

# An encoder larger than this (parameters) built without pretrained weights is an error unless --allow_random_encoders:
# the tiny preset's random encoders (2M parameters at most) are meant for tests, the seed presets' (VideoLLaMA sizes:
# 110M to 1.1B) are a mistake.
RANDOM_ENCODER_LIMIT = 10_000_000
# The clips missing from --video_dir, one name a line, written to the output folder.
MISSING_CLIPS_FILE = "missing_clips.txt"


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


def random_encoder_modalities(config: MMEmotionConfig, model_args) -> list[str]:
    """The modalities whose encoder `load_model` builds without pretrained weights: all of a new model's but the text
    branch of `--text_model_name_or_path`, and those that a checkpoint does not have."""
    pretrained = set()
    if model_args.model_name_or_path is not None:
        pretrained.update(MMEmotionConfig.get_config_dict(model_args.model_name_or_path)[0].get("modalities", []))
    if model_args.text_model_name_or_path is not None:
        pretrained.add("text")
    return [modality for modality in config.modalities if modality not in pretrained]


def check_encoder_weights(config: MMEmotionConfig, model_args) -> None:
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


def check_frozen_utterance_model(model_args, joint: bool) -> None:
    """`--freeze_utterance_model` keeps a checkpoint's trained utterance model (and, for `utterance_embeds`, its emotion
    head) as they are; anything it would freeze freshly initialised would train the pairs on random features or
    emotions. So: a joint run from `--model_name_or_path` alone (no new text model, no LoRA), and, for
    `emotion_head_input=utterance_embeds`, a checkpoint that has that head: an emotion classifier's, or a joint model's
    that reads the same vectors."""
    if not joint or model_args.lora_r > 0 or model_args.model_name_or_path is None or model_args.text_model_name_or_path:
        raise ValueError(
            "--freeze_utterance_model keeps the utterance model of a joint model's checkpoint as loaded: it needs "
            "--task joint and --model_name_or_path, without --text_model_name_or_path or --lora_r."
        )
    saved = MMEmotionConfig.get_config_dict(model_args.model_name_or_path)[0]
    # The config `build_config` will make: the overrides win over the checkpoint's.
    head_input = (model_args.config_overrides or {}).get(
        "emotion_head_input", saved.get("emotion_head_input", MMEmotionConfig.emotion_head_input)
    )
    if head_input != "utterance_embeds":
        return
    if saved.get("architectures") != ["MMEmotionForEmotionClassification"] and saved.get("emotion_head_input") != "utterance_embeds":
        raise ValueError(
            f"--freeze_utterance_model with emotion_head_input=utterance_embeds keeps the emotion head `classifier` of "
            f"{model_args.model_name_or_path}, which has none (its emotion head reads the conversation states): start "
            "from an emotion classification checkpoint, or keep emotion_head_input=utterance_states."
        )
