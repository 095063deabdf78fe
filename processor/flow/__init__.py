"""The flow of a batch: requests gathered (batcher), the active programs (registry), and
the path of one batch from replay check to commit and cache refresh (pipeline)."""
