"""Safety screens: prompts before generation (text), images after it (image)."""
