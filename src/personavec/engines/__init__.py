"""Generation engines behind one protocol (transformers today) and steered answering."""
