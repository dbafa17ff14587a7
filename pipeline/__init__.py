"""The TensorFlow runtime: input, the training controller and its tasks, export, serving, CLIs."""
