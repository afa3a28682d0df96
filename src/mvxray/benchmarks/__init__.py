"""mvxray.benchmarks."""
