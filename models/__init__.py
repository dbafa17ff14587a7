"""Pure Keras layers and models for embedding-dimension search and retraining (no I/O)."""
