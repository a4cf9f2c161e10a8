# Copyright 2026 The mmemotion authors.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
"""train.py's `Trainer` (samplers that keep the data order for predictions, the run's model card) and the output folder
it writes."""

import os

import torch
from transformers import Trainer
from transformers.trainer_pt_utils import LengthGroupedSampler

from training.lora import unload_lora
from training.model_card import ModelCardInfo, render_model_card


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

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        """Trainer's AdamW, with the text encoder's trained weights in groups of their own at
        `args.text_encoder_learning_rate` (the scheduler then warms up and decays every group alike)."""
        optimizer = super().create_optimizer(model)
        encoder_learning_rate = getattr(self.args, "text_encoder_learning_rate", None)
        if encoder_learning_rate is None:
            return optimizer
        encoder_parameters = trained_text_encoder_parameters(self.model if model is None else model)
        groups, optimizer.param_groups = optimizer.param_groups, []
        for group in groups:
            for in_encoder in (False, True):
                params = [p for p in group["params"] if (p in encoder_parameters) == in_encoder]
                if params:
                    optimizer.add_param_group({**group, "params": params, "lr": encoder_learning_rate if in_encoder else group["lr"]})
        return optimizer

    def create_model_card(self, **kwargs):
        if self.is_world_process_zero():
            card = render_model_card(self.model.config, self.args, self.model_card_info)
            card.save(os.path.join(self.args.output_dir, "README.md"))


def trained_text_encoder_parameters(model: torch.nn.Module) -> set[torch.nn.Parameter]:
    """The text encoder's trainable weights (all of them, or its LoRA adapters), which `--text_encoder_learning_rate`
    sets the rate of; an error if there are none, so that the flag never does nothing."""
    base_model = model.base_model
    parameters = (
        {parameter for parameter in base_model.text_encoder.parameters() if parameter.requires_grad}
        if "text" in base_model.config.modalities
        else set()
    )
    if not parameters:
        raise ValueError(
            "--text_encoder_learning_rate sets the rate of the text encoder's trained weights, but nothing in the "
            "text encoder trains: add --lora_r, or --config_overrides freeze_text_encoder=false."
        )
    return parameters


def save_final_model(trainer: Trainer, peft_model, merge_lora: bool) -> None:
    """Writes the output folder: the weights (plain, or base weights + LoRA adapter), the code files, the processor and
    the model card."""
    output_dir = trainer.args.output_dir
    if peft_model is not None:
        if not merge_lora:
            # transformers loads the base weights from a local folder that has a config.json, and from the Hub follows
            # this name: the repository the folder is pushed to.
            peft_model.peft_config["default"].base_model_name_or_path = trainer.hub_model_id or output_dir
            # The base weights sit in the same folder: no copy of the embedding matrices in the adapter.
            peft_model.save_pretrained(output_dir, save_embedding_layers=False, is_main_process=trainer.args.should_save)
        unload_lora(peft_model, merge=merge_lora)
    trainer.save_model()
    trainer.create_model_card()
