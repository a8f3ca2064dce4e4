"""Models: named LLaMA sizes, the Composer wrappers of both training stages, losses and metrics."""
