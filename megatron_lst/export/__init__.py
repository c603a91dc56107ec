"""Exported model folders: the baseline as a Hugging Face ``LlamaForCausalLM``, LST in this project's own
safetensors + JSON layout, each with the joint tokenizer (``tools/convert_checkpoint.py to-hf``)."""
