"""Packages the project's Python code for remote Beam workers (Dataflow, Flink, Spark):

    python -m preprocessing.run ... --runner=DataflowRunner --setup_file ./setup.py

Dependencies are those of requirements.txt (the workers' container must provide apache-beam,
tensorflow and tensorflow-datasets at the pinned versions).
"""
import setuptools

setuptools.setup(
    name="autodim",
    version="0.1.0",
    packages=setuptools.find_packages(include=["configs", "preprocessing", "models", "pipeline"]),
    python_requires=">=3.11",
    install_requires=["pyyaml", "google-crc32c", "isal"],
)
