"""Using a trained model, in plain torch (no Lightning import): safe checkpoint loading, the
inference model with its test-time augmentation, batched top-k prediction, export."""
