# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""LoRA adapters on the text encoder: adding them for training, and merging the adapter of a LoRA run's folder."""

import logging
import re

import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from transformers import PreTrainedModel


logger = logging.getLogger(__name__)


def merge_loaded_adapter(model: PreTrainedModel) -> int:
    """Merges the LoRA adapter that transformers attaches by itself when loading a LoRA run's folder (base weights +
    `adapter_config.json`) into the base layers; returns the number of layers merged.

    peft's `merge_and_unload()` needs the `PeftModel` that such a load does not make, hence these steps, which are
    those of `merge_and_unload()` on each LoRA layer.
    """
    lora_layers = [(name, module) for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]
    for name, module in lora_layers:
        module.merge()
        parent_name, _, child_name = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child_name, module.get_base_layer())
    if lora_layers:
        # Forget the adapter, or `save_pretrained` would save only the adapter, and the key renamings transformers
        # recorded for it, or saving would prefix every key with `base_model.model.`.
        model.__dict__.pop("peft_config", None)
        model._hf_peft_config_loaded = False
        model._weight_conversions = None
    return len(lora_layers)


def lora_target_regex(model: PreTrainedModel, target_modules: list[str] | None) -> str:
    """A regex over module names that matches the chosen modules inside the text encoder only: plain names such as
    `query` would also hit the attention layers of the video and audio Q-Formers.

    By default every linear layer of the text encoder (attention and feed-forward: better than `query` and `value`
    only on ECF, docs/results.md), or the token embeddings when the branch is only the embedding table
    (`text_embedding="input_embeddings"`).
    """
    if target_modules is None:
        text_encoder = model.base_model.text_encoder
        target_modules = sorted(
            {name.rpartition(".")[2] for name, module in text_encoder.named_modules() if isinstance(module, torch.nn.Linear)}
        ) or ["embed_tokens"]
    names = "|".join(re.escape(name) for name in target_modules)
    return rf"{re.escape(model.base_model_prefix)}\.text_encoder\.(.*\.)?({names})"


def add_lora(model: PreTrainedModel, model_args):
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


def unload_lora(peft_model, merge: bool) -> None:
    """Takes the adapters of `add_lora` out of the model it trained, in place: merged into the text encoder if `merge`,
    else dropped (the adapter is saved on its own, beside the base weights)."""
    if merge:
        peft_model.merge_and_unload()
    else:
        peft_model.unload()
