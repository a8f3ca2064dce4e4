"""Inference on trained models: loading checkpoints and sharing them as Hugging Face directories."""
