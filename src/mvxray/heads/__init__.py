"""mvxray.heads."""
