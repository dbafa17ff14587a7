"""The package Beam ships to remote workers (Dataflow, Flink, Spark) for the preprocessing job:

    python -m preprocessing.run ... --runner=DataflowRunner --setup_file ./setup.py

It holds `configs/` and `preprocessing/`, every module the job's transforms import, and none of
them imports TensorFlow (models/ and pipeline/ are the TensorFlow side: not shipped). Checked by
tests/test_worker_package.py.

install_requires: what those modules import, pinned as in requirements.txt. apache-beam is not
listed: the runner's SDK container provides it, at the launcher's version. `--input tfds:...`
reads through TFDS, which is TensorFlow: the extra `tfds` names what such workers need, which a
--setup_file install does not add (give them a container or a --requirements_file with it).
"""
import setuptools

setuptools.setup(
    name="autodim",
    version="0.1.0",
    packages=setuptools.find_packages(
        include=["configs", "configs.*", "preprocessing", "preprocessing.*"]),
    python_requires=">=3.11",
    install_requires=["google-crc32c==1.9.0", "isal==1.9.1", "numpy==2.1.3", "pyyaml==6.0.2"],
    extras_require={"tfds": ["tensorflow-datasets==4.9.9", "tensorflow-cpu==2.21.0"]},
)
