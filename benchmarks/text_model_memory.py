"""
Peak resident memory of loading the text branch of an `input_embeddings` model (VideoLLaMA's LLaMA-2-13B token
embeddings) from a LLaMA checkpoint folder: `training.models.load_input_embeddings` (the embedding matrix alone, read from the
safetensors file) against `AutoModel.from_pretrained` of the whole text model (how train.py loaded it before).

    python benchmarks/text_model_memory.py --num_layers 2 --output benchmarks/results/text-model-memory.json

The folder is written first: a LlamaForCausalLM config at LLaMA-2-13B's widths with `--num_layers` layers (13B has 40)
and zero float16 weights (loading reads bytes; their values do not matter). Each load runs in a fresh process, whose
peak RSS (VmHWM) is reported next to that of a process that only imports the same modules.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Each fills a float32 embedding table of the text branch (as `MMEmotionTextEncoder` holds it) from the folder.
TABLE = "table = torch.nn.Embedding(32000, 5120)\n"
LOADS = {
    "imports only": "",
    "the empty float32 table": TABLE,
    "training.models.load_input_embeddings": TABLE
    + 'table.load_state_dict({"weight": load_input_embeddings(folder, AutoConfig.from_pretrained(folder), False)})',
    "AutoModel.from_pretrained, then its input embeddings (before)": TABLE
    + "table.load_state_dict(AutoModel.from_pretrained(folder).get_input_embeddings().state_dict())",
    "AutoModel.from_pretrained(dtype=float32), then its input embeddings": TABLE
    + "table.load_state_dict(AutoModel.from_pretrained(folder, dtype=torch.float32).get_input_embeddings().state_dict())",
}
# The child's high-water mark from /proc (`ru_maxrss` would include the parent's memory at the fork).
MEASURE = """
import sys
import torch
sys.path.insert(0, {root!r})
from transformers import AutoConfig, AutoModel
from training.models import load_input_embeddings
folder = {folder!r}
{load}
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024)
"""


def write_llama_folder(folder: str, num_layers: int) -> int:
    """A LLaMA-2-13B-wide checkpoint folder with `num_layers` layers of zero float16 weights; returns its bytes."""
    config = LlamaConfig(
        vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=num_layers,
        num_attention_heads=40, num_key_value_heads=40, dtype="float16",
    )
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    config.save_pretrained(folder)
    weights = {name: torch.zeros(tensor.shape, dtype=torch.float16) for name, tensor in model.state_dict().items()}
    save_file(weights, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return os.path.getsize(os.path.join(folder, "model.safetensors"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--output", default=os.path.join(ROOT, "benchmarks", "results", "text-model-memory.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmemotion-llama-") as folder:
        checkpoint_bytes = write_llama_folder(folder, args.num_layers)
        results = {"num_layers": args.num_layers, "checkpoint_gb": checkpoint_bytes / 1e9, "peak_rss_mb": {}}
        environment = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
        for name, load in LOADS.items():
            script = MEASURE.format(root=ROOT, folder=folder, load=load)
            output = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, env=environment)
            results["peak_rss_mb"][name] = float(output.stdout.strip().splitlines()[-1])
            print(name, results["peak_rss_mb"][name], flush=True)
    with open(args.output, "w") as file:
        json.dump(results, file, indent=1)


if __name__ == "__main__":
    main()
