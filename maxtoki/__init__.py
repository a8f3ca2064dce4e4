"""MaxToki-style temporal single-cell foundation model."""
