"""mvxray.detectors2d."""
