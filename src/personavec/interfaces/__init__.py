"""Interactive interfaces on top of the library: the chat session."""
