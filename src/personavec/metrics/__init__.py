"""Side-effect metrics: multiple-choice capability, perplexity, and statistics."""
