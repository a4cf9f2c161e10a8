# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""The model and processor that train.py's `ModelArguments` ask for: a preset or checkpoint, with a pretrained text
model's tokenizer and weights in the text branch."""

import json
import logging
import os

import torch
from transformers import AutoModel, AutoTokenizer, PreTrainedModel
from transformers.utils import SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, cached_file
from safetensors import safe_open

from configuration_mmemotion import MMEmotionConfig
from processing_mmemotion import MMEmotionProcessor
from training.lora import merge_loaded_adapter


logger = logging.getLogger(__name__)

PRESETS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "presets")


def resolve_config_source(config_name: str) -> str:
    """A preset name (`tiny`, `exp1`) -> its folder or JSON file in `presets/`; anything else is a path or Hub id."""
    for candidate in (os.path.join(PRESETS_DIR, config_name), os.path.join(PRESETS_DIR, f"{config_name}.json")):
        if os.path.exists(candidate):
            return candidate
    return config_name


def load_processor(model_args) -> MMEmotionProcessor:
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
        )
    if processor is None:
        raise ValueError(
            f"The preset {model_args.config_name!r} has no processor (no tokenizer for its text branch): pass "
            "--text_model_name_or_path (the text model whose tokenizer and weights the text branch uses)."
        )
    return processor


def load_model(model_class: type[PreTrainedModel], config: MMEmotionConfig, model_args) -> PreTrainedModel:
    if model_args.model_name_or_path is not None:
        model = model_class.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            # A new text model changes the text branch and projection shapes; they are replaced just below.
            ignore_mismatched_sizes=model_args.text_model_name_or_path is not None,
            # The encoders load straight in their dtype; the few trained weights are cast to float32 below.
            dtype=getattr(torch, model_args.encoder_dtype),
        )
        if merge_loaded_adapter(model):
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


def freeze_utterance_model(model: PreTrainedModel) -> None:
    """Keeps an emotion-cause model's utterance model (encoders and fusion) and, when it reads the fused utterance
    vectors, its emotion head as loaded: the utterance emotions stay those of the checkpoint."""
    model.mmemotion.requires_grad_(False)
    if model.config.emotion_head_input == "utterance_embeds":
        model.classifier.requires_grad_(False)


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
