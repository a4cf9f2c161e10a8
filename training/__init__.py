"""Training-side modules of train.py (not shipped with a checkpoint: the remote-code files never import them)."""
