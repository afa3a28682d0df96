"""mvxray.datasets."""
