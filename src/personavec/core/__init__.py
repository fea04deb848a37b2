"""Core: models, the layer convention, hooks, positions, capture, steering, vectors, projection."""
