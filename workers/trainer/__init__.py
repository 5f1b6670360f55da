"""The lean trainer: VLM-3R's fusion block, projector, pooling/newline layout and LoRA language model, trained
from the packed shards."""
