"""mvxray.lifting."""
