"""Speed, memory and quality benchmarks that print their figures (never run by the tests)."""
