"""FDE-32 training throughput side by side with pytorch-fm (the paper's base library).

    python -m benchmarks.pytorch_fm --data_root DATA_ROOT [--torch_python PATH]
        [--data_dir DIR] [--models fm,wide_deep,deepfm] [--batch 2000] [--threads 2]
        [--steps 30] [--rounds 9] [--warmup 2] [--batches 40]

Ours: the real retraining of `python -m pipeline.retrain --dims fde:32` with the dataset's preset
(`pipeline.retrain_task.RetrainTask`: the model, Adam for the dense weights, LazyAdam for the
tables, the compiled `StepRunner.train` call of `retrain.steps_per_call` steps), one host read of
the loss per call as the controller does. pytorch-fm 0.7.0: `FactorizationMachineModel`,
`WideAndDeepModel` and `DeepFactorizationMachineModel` with embed_dim 32, the MLP sizes and
dropout of our backbones' defaults (128-128, 0.2), `torch.optim.Adam` (lr 1e-3 and weight decay
1e-6 as pytorch-fm's main.py), BCELoss and its main.py's step (`zero_grad`, `backward`, `step`,
`loss.item()`), on tensors built before timing (no DataLoader: pytorch-fm's best case).

Both sides train on the same MovieLens-100k rows, encoded by our Beam job (`python -m
preprocessing.run --dataset movielens-100k`, into a temp dir; `--data_dir` names an already
preprocessed dir instead): `--batches` training batches taken from our training stream are
written to a .npz in a temp dir (removed at exit) and cycled through by both sides. Each side runs
with `--threads` threads (TensorFlow intra- and inter-op, torch intra- and inter-op).

Our rows, per model:
- `fm`, `wide_deep`, `deepfm` (the ratios of the last line): the same architecture as pytorch-fm's
  model (`--set retrain.unify=zero_pad`: FDE-32 embeddings used as they are), fed the same
  batches from memory: the training step against the training step.
- `... +input`: the same model fed by its real training stream, which reads, decompresses and
  parses the TFRecords on the same cores while it trains (what a retraining pays end to end).
- `... unify=linear` (FM, DeepFM; `--no_linear` leaves them out): `pipeline.retrain`'s default
  `retrain.unify=linear`, which projects every field by its own 32x32 matrix before the
  interaction (the function class of the searched model; pytorch-fm has no such projection).

pytorch-fm runs in its own Python environment, never this project's: a venv with
`torch==2.13.0 torchfm==0.7.0 numpy`, named by `--torch_python` or the environment variable
`AUTODIM_TORCH_PYTHON`, started as a subprocess (this file with `--worker`) that times blocks of
steps on request. The benchmark prints why and exits 0 without measuring when that Python is not
given, does not exist or cannot import torch and torchfm, or when DATA_ROOT has no
`movielens-100k/`.

The torch side is two worker processes, one with OpenMP's default wait policy (its threads spin
at barriers: fastest on an idle machine) and one with `OMP_WAIT_POLICY=PASSIVE` (they sleep: on a
machine loaded by other processes the spinning was measured up to 20x slower); pytorch-fm's
figure in a round is the faster of the two, i.e. its best case. A worker slower than half the
other on every model in the warm-up is left out of the timed rounds (said in the output).

Timing: after `--warmup` untimed blocks per side and model, `--rounds` rounds; in each round every
model runs one block of `--steps` steps on ours and on each torch worker, back to back (the order
rotates between rounds), so load from other processes hits both alike. Per model: the median over
rounds of examples/s on each side, and the median of the per-round ratios (ours over
pytorch-fm); beside it the ratio of the two sides' fastest blocks and of their CPU time per step
(process CPU time of all threads), which load from other processes disturbs less.

Last line: `fm_ratio=X wd_ratio=Y deepfm_ratio=Z` (ours over pytorch-fm, examples/s).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TORCH_PYTHON_ENV = "AUTODIM_TORCH_PYTHON"
MODELS = ("fm", "wide_deep", "deepfm")
SHORT = {"fm": "fm", "wide_deep": "wd", "deepfm": "deepfm"}
FDE_DIM = 32
# pytorch-fm's main.py: torch.optim.Adam(lr=learning_rate, weight_decay=weight_decay) with the
# defaults learning_rate=0.001, weight_decay=1e-6
TORCH_LR = 1e-3
TORCH_WEIGHT_DECAY = 1e-6
# two pytorch-fm workers, OpenMP's default wait policy (threads spin at barriers) and PASSIVE
# (they sleep); each round keeps the faster: on a loaded machine the spinning loses up to 20x
WAIT_POLICIES = (None, "PASSIVE")


# ------------------------------------------------------------------------ the pytorch-fm side
def torch_worker(argv) -> int:
    """Runs under the pytorch-fm venv's Python (stdlib, numpy, torch and torchfm only). Reads
    `run MODEL STEPS` lines on stdin and answers each with one JSON line: the block's wall and
    process CPU seconds and its last loss. The first line it prints is {"ready": ...}."""
    import argparse

    parser = argparse.ArgumentParser(prog="pytorch_fm.py --worker")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--batches", required=True)
    parser.add_argument("--field_dims", required=True)
    parser.add_argument("--models", required=True)
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--embed_dim", type=int, required=True)
    parser.add_argument("--mlp_dims", required=True)
    parser.add_argument("--dropout", type=float, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import importlib.metadata

    import numpy as np
    import torch
    from torchfm.model.dfm import DeepFactorizationMachineModel
    from torchfm.model.fm import FactorizationMachineModel
    from torchfm.model.wd import WideAndDeepModel

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    torch.manual_seed(args.seed)
    field_dims = [int(v) for v in args.field_dims.split(",")]
    mlp_dims = tuple(int(v) for v in args.mlp_dims.split(","))
    with np.load(args.batches) as data:
        # pytorch-fm's datasets yield int64 ids; converted once, before any timing
        ids = [torch.from_numpy(x) for x in data["ids"].astype(np.int64)]
        labels = [torch.from_numpy(y) for y in data["labels"].astype(np.float32)]
    builders = {
        "fm": lambda: FactorizationMachineModel(field_dims, args.embed_dim),
        "wide_deep": lambda: WideAndDeepModel(field_dims, args.embed_dim, mlp_dims, args.dropout),
        "deepfm": lambda: DeepFactorizationMachineModel(field_dims, args.embed_dim, mlp_dims,
                                                        args.dropout),
    }
    runs = {}
    for name in args.models.split(","):
        model = builders[name]()
        model.train()
        optimizer = torch.optim.Adam(model.parameters(), lr=TORCH_LR,
                                     weight_decay=TORCH_WEIGHT_DECAY)
        runs[name] = [model, optimizer, 0]
    criterion = torch.nn.BCELoss()

    def block(name: str, steps: int) -> dict:
        model, optimizer, position = runs[name]
        loss_value = float("nan")
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(steps):
            i = position % len(ids)
            position += 1
            y = model(ids[i])  # pytorch-fm's main.py train()
            loss = criterion(y, labels[i])
            model.zero_grad()
            loss.backward()
            optimizer.step()
            loss_value = loss.item()
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        runs[name][2] = position
        return {"seconds": seconds, "cpu": cpu, "loss": loss_value}

    print(json.dumps({"ready": True, "torch": torch.__version__,
                      "torchfm": importlib.metadata.version("torchfm"),
                      "threads": torch.get_num_threads()}), flush=True)
    for line in sys.stdin:
        parts = line.split()
        if parts[:1] != ["run"] or len(parts) != 3 or parts[1] not in runs:
            print(json.dumps({"error": f"bad request {line.strip()!r}"}), flush=True)
            return 2
        print(json.dumps(block(parts[1], int(parts[2]))), flush=True)
    return 0


def torch_python_problem(python: str | None) -> str | None:
    """Why `python` cannot run the pytorch-fm side (None if it can)."""
    if not python:
        return (f"no pytorch-fm Python: pass --torch_python PATH or set {TORCH_PYTHON_ENV} "
                f"(a venv with torch==2.13.0 torchfm==0.7.0 numpy)")
    if not Path(python).is_file():
        return f"--torch_python {python} does not exist"
    try:
        proc = subprocess.run([python, "-c", "import numpy, torch, torchfm"], capture_output=True,
                              text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{python} could not be run: {exc}"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        return f"{python} cannot import numpy, torch and torchfm: {last}"
    return None


class TorchSide:
    """The pytorch-fm worker process; `block(model, steps)` times one block of steps there."""

    def __init__(self, python: str, batches: Path, field_dims, models, threads: int,
                 mlp_dims, dropout: float, log: Path, wait_policy: str | None = None):
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        env.pop("OMP_WAIT_POLICY", None)
        if wait_policy:
            env["OMP_WAIT_POLICY"] = wait_policy
        self.wait_policy = wait_policy or "default"
        cmd = [python, str(Path(__file__).resolve()), "--worker", "--batches", str(batches),
               "--field_dims", ",".join(str(v) for v in field_dims), "--models", ",".join(models),
               "--threads", str(threads), "--embed_dim", str(FDE_DIM),
               "--mlp_dims", ",".join(str(u) for u in mlp_dims), "--dropout", str(dropout)]
        self.log = log
        self._stderr = open(log, "w", encoding="utf-8")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._stderr, text=True, bufsize=1, cwd=str(REPO),
                                     env=env)
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"pytorch-fm worker did not start: {self.info}")

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._stderr.flush()
            tail = self.log.read_text(encoding="utf-8")[-2000:]
            raise RuntimeError(f"pytorch-fm worker exited ({self.proc.returncode}):\n{tail}")
        return json.loads(line)

    def block(self, model: str, steps: int) -> dict:
        self.proc.stdin.write(f"run {model} {steps}\n")
        self.proc.stdin.flush()
        out = self._read()
        if "error" in out:
            raise RuntimeError(f"pytorch-fm worker: {out['error']}")
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._stderr.close()


# ------------------------------------------------------------------------------ our side
def retrain_config(schema, backbone: str, batch: int, unify: str):
    """The config `pipeline.retrain` resolves for this data (its preset), with `backbone` and
    `retrain.unify`."""
    from configs.experiment import preset_for_dataset, resolve

    return resolve(preset_for_dataset(schema.dataset), None,
                   [f"model.backbone={backbone}", f"retrain.batch_size={batch}",
                    f"retrain.unify={unify}"])


def has_projection(backbone: str, unify: str) -> bool:
    """Whether `pipeline.retrain`'s FDE model of `backbone` projects its embeddings (unify=linear;
    W&D with the default raw MLP input never does: models.factory.build_retrain_model)."""
    return unify == "linear" and backbone != "wide_deep"


class OursSide:
    """`pipeline.retrain --dims fde:32` of one backbone: the real task and its compiled training
    call; `block(steps)` runs whole calls of `retrain.steps_per_call` steps and reads the loss
    once per call, as the controller does. Fed by the task's own training stream (reading and
    parsing the TFRecords as it trains), or with `batches` (an `export_batches` file) by those
    batches from memory, cycled: what the torch side is fed."""

    def __init__(self, strategy, data_dir, schema, backbone: str, batch: int,
                 unify: str = "zero_pad", batches: Path | None = None):
        from pipeline.dims import load_dims
        from pipeline.retrain_task import RetrainTask

        cfg = retrain_config(schema, backbone, batch, unify)
        dims = load_dims(f"fde:{FDE_DIM}", schema, cfg.model.candidate_dims)
        self.task = RetrainTask(strategy, str(data_dir), schema, dims, cfg)
        self.task.start(0)
        if batches is not None:
            self.task.train_it = iter(memory_stream(strategy, batches))
        self.steps_per_call = cfg.retrain.steps_per_call
        self.mlp_units, self.dropout = tuple(cfg.model.mlp_units), cfg.model.dropout
        self.step = 0

    def block(self, steps: int) -> dict:
        from pipeline.trainer import check_finite

        calls = max(1, -(-steps // self.steps_per_call))
        loss = float("nan")
        cpu, start = time.process_time(), time.perf_counter()
        for _ in range(calls):
            call = self.task.train(self.step, self.steps_per_call)
            loss = check_finite(call.loss_sum, self.step, "(benchmark)") / call.steps
            self.step += call.steps
        return {"seconds": time.perf_counter() - start, "cpu": time.process_time() - cpu,
                "loss": loss, "steps": calls * self.steps_per_call}


def memory_stream(strategy, batches: Path):
    """The global batches of an `export_batches` file, from memory, endlessly, distributed."""
    import numpy as np
    import tensorflow as tf

    with np.load(batches) as b:
        ids, labels = b["ids"], b["labels"]
    ds = tf.data.Dataset.from_tensor_slices((ids, labels)).repeat().prefetch(2)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return strategy.experimental_distribute_dataset(ds.with_options(options))


def export_batches(strategy, data_dir, schema, batch: int, count: int, path: Path) -> int:
    """`count` training batches of our own stream (ids int32 [count, batch, M], labels) -> .npz;
    returns the number written (fewer if the split is smaller)."""
    import numpy as np

    from pipeline import runtime

    count = max(1, min(count, schema.splits["train"] // batch))
    it = iter(runtime.distributed_stream(strategy, data_dir, schema, "train", batch, seed=0))
    ids, labels = zip(*((x.numpy(), y.numpy()) for x, y in (next(it) for _ in range(count))))
    np.savez(path, ids=np.stack(ids), labels=np.stack(labels))
    return count


def set_threads(threads: int) -> None:
    """TensorFlow's intra- and inter-op pools (before any TensorFlow op runs)."""
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError:  # already initialised (e.g. inside a test session): keep its pools
        pass


def median(values) -> float:
    import numpy as np

    return float(np.median(values))


def run_rounds(ours: dict, torch_sides: list, steps: int, rounds: int, warmup: int,
               batch: int) -> dict:
    """`ours`: {(model, ...): OursSide}. Warm-up, then `rounds` rounds of one block per side and
    model, back to back (the order of the sides rotates between rounds). pytorch-fm's rate in a
    round is that of its fastest worker. Returns per key of `ours` the examples/s and CPU ms per
    step of every timed block on each side, and the per-round ratios."""
    models = list(dict.fromkeys(key[0] for key in ours))
    for side in ours.values():
        for _ in range(warmup):
            side.block(steps)
    warm = [{} for _ in torch_sides]
    for name in models:
        for i, side in enumerate(torch_sides):
            for _ in range(warmup):
                warm[i][name] = steps * batch / side.block(name, steps)["seconds"]
    if warmup:
        # a worker slower than half the fastest on every model in its last warm-up block is
        # left out of the rounds (on a loaded machine, spinning OpenMP threads lose up to 20x)
        best = {name: max(w[name] for w in warm) for name in models}
        keep = [i for i, w in enumerate(warm) if any(w[n] >= 0.5 * best[n] for n in models)]
        for i, side in enumerate(torch_sides):
            if i not in keep:
                rates = ", ".join(f"{n} {warm[i][n]:,.0f}/{best[n]:,.0f}" for n in models)
                print(f"pytorch-fm worker with OpenMP wait policy {side.wait_policy} left out: "
                      f"examples/s in warm-up against the fastest worker's: {rates}", flush=True)
                side.close()
        torch_sides = [torch_sides[i] for i in keep]
    out = {key: {"ours": [], "torch": [], "ratio": [], "ours_cpu": [], "torch_cpu": [],
                 "policy": []} for key in ours}
    for r in range(rounds):
        for name in models:
            sides = [key for key in ours if key[0] == name] + list(range(len(torch_sides)))
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            rates, cpus = {}, {}
            for side in order:
                if isinstance(side, tuple):
                    res = ours[side].block(steps)
                    n = res["steps"]
                else:
                    res = torch_sides[side].block(name, steps)
                    n = steps
                rates[side] = n * batch / res["seconds"]
                cpus[side] = 1e3 * res["cpu"] / n
            best = max(range(len(torch_sides)), key=lambda i: rates[i])
            for key in ours:
                if key[0] != name:
                    continue
                row = out[key]
                row["ours"].append(rates[key])
                row["ours_cpu"].append(cpus[key])
                row["torch"].append(rates[best])
                row["torch_cpu"].append(cpus[best])
                row["policy"].append(torch_sides[best].wait_policy)
                row["ratio"].append(rates[key] / rates[best])
    return out


def main(argv=None) -> int:
    from configs.cli import StrictArgumentParser

    parser = StrictArgumentParser(prog="python -m benchmarks.pytorch_fm",
                                  description=__doc__.splitlines()[0])
    parser.add_argument("--data_root", help="directory holding movielens-100k/ (raw)")
    parser.add_argument("--data_dir", help="an already preprocessed MovieLens-100k dir (instead "
                        "of preprocessing DATA_ROOT/movielens-100k)")
    parser.add_argument("--torch_python", default=None,
                        help=f"the Python of a venv with torch and torchfm (default: "
                        f"${TORCH_PYTHON_ENV})")
    parser.add_argument("--models", default=",".join(MODELS),
                        help="comma-separated, of " + ", ".join(MODELS))
    parser.add_argument("--batch", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2, help="threads per side")
    parser.add_argument("--steps", type=int, default=30, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2, help="untimed blocks per side and model")
    parser.add_argument("--batches", type=int, default=40,
                        help="training batches given to the torch side (cycled)")
    parser.add_argument("--no_linear", action="store_true",
                        help="skip the rows of the default retrain.unify=linear (FM, DeepFM)")
    args = parser.parse_args(argv)
    models = [m for m in args.models.split(",") if m]
    if not models or any(m not in MODELS for m in models) or len(set(models)) != len(models):
        parser.error(f"--models: a comma-separated subset of {','.join(MODELS)}, "
                     f"got {args.models!r}")
    if min(args.batch, args.threads, args.steps, args.rounds, args.batches) < 1 or args.warmup < 0:
        parser.error("--batch, --threads, --steps, --rounds and --batches must be >= 1, "
                     "--warmup >= 0")

    if args.data_dir:
        data_dir, raw = Path(args.data_dir), None
        if not (data_dir / "schema.json").is_file():
            print(f"pytorch_fm: skipped: {data_dir} is not a preprocessed data dir (no "
                  f"schema.json)")
            return 0
    else:
        if not args.data_root:
            print("pytorch_fm: skipped: no --data_root (the directory holding movielens-100k/)")
            return 0
        raw = Path(args.data_root) / "movielens-100k"
        if not raw.is_dir():
            print(f"pytorch_fm: skipped: {raw} not found")
            return 0
    python = args.torch_python or os.environ.get(TORCH_PYTHON_ENV)
    problem = torch_python_problem(python)
    if problem:
        print(f"pytorch_fm: skipped: {problem}")
        return 0

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    set_threads(args.threads)
    import tensorflow as tf

    from benchmarks.search_step import preprocess_movielens
    from configs.features import DataSchema
    from pipeline.strategy import make_strategy

    tmp = Path(tempfile.mkdtemp(prefix="pytorch_fm_"))
    torch_sides = []
    try:
        if raw is not None:
            data_dir = tmp / "ml100k"
            t0 = time.perf_counter()
            preprocess_movielens(raw, data_dir)
            print(f"preprocessed {raw} in {time.perf_counter() - t0:.0f} s", flush=True)
        schema = DataSchema.load(data_dir)
        if schema.splits["train"] < args.batch:
            parser.error(f"{data_dir} has {schema.splits['train']} training rows, fewer than "
                         f"--batch {args.batch}")
        strategy = make_strategy(0)
        vocab = [f.vocab_size for f in schema.fields]
        batches = tmp / "batches.npz"
        n_batches = export_batches(strategy, data_dir, schema, args.batch, args.batches, batches)
        variants = [("zero_pad", "memory"), ("zero_pad", "stream")]
        if not args.no_linear:
            variants.append(("linear", "memory"))
        ours = {(m, u, i): OursSide(strategy, data_dir, schema, m, args.batch, u,
                                    batches if i == "memory" else None)
                for m in models for u, i in variants if u == "zero_pad" or has_projection(m, u)}
        first = ours[(models[0], "zero_pad", "memory")]
        for policy in WAIT_POLICIES:
            torch_sides.append(TorchSide(python, batches, vocab, models, args.threads,
                                         first.mlp_units, first.dropout,
                                         tmp / f"worker_{policy or 'default'}.log", policy))
        info = torch_sides[0].info
        print(f"data: {schema.dataset}, {schema.splits['train']:,} training rows, "
              f"{len(vocab)} fields (vocab sum {sum(vocab):,}); FDE-{FDE_DIM}, batch {args.batch}, "
              f"{args.threads} threads per side; tf {tf.__version__}, torch {info['torch']}, "
              f"torchfm {info['torchfm']}; pytorch-fm fed {n_batches} of our batches", flush=True)
        res = run_rounds(ours, torch_sides, args.steps, args.rounds, args.warmup, args.batch)
    finally:
        for side in torch_sides:
            side.close()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'model':<24}{'ours ex/s':>11}{'pytorch-fm':>12}{'ratio':>7}{'min':>7}{'max':>7}"
          f"{'best':>7}{'ours cpu ms':>13}{'torch cpu ms':>14}{'cpu ratio':>11}  "
          f"torch faster with")
    ratios = {}
    for key, r in res.items():
        ratios[key] = median(r["ratio"])
        cpu_ratio = median([t / o for t, o in zip(r["torch_cpu"], r["ours_cpu"])])
        print(f"{row_label(*key):<24}{median(r['ours']):>11,.0f}{median(r['torch']):>12,.0f}"
              # a space before each ratio: a ratio of 1000 or more still splits from its neighbour
              f" {ratios[key]:>6.2f} {min(r['ratio']):>6.2f} {max(r['ratio']):>6.2f}"
              f" {max(r['ours']) / max(r['torch']):>6.2f}"
              f"{median(r['ours_cpu']):>13.1f}{median(r['torch_cpu']):>14.1f}{cpu_ratio:>11.2f}  "
              + ", ".join(f"{p} {r['policy'].count(p)}/{len(r['policy'])}"
                          for p in sorted(set(r["policy"]))))
    print(f"({args.rounds} rounds of one {args.steps}-step block per side and model, after "
          f"{args.warmup} warm-up blocks; medians over rounds; pytorch-fm = the faster of its "
          f"workers (OpenMP wait policy default / PASSIVE) in each round; ratio = ours / "
          f"pytorch-fm examples/s, per round; best = ours' fastest block over pytorch-fm's "
          f"fastest; cpu ms = process CPU time per step, all threads; cpu ratio = pytorch-fm's "
          f"cpu ms / ours, per round)")
    print("(rows without a note: the same architecture as pytorch-fm's, both sides fed the same "
          "batches from memory; +input: ours fed by its real TFRecord stream, read and parsed "
          "while it trains; unify=linear: `pipeline.retrain`'s default, a per-field 32x32 "
          "projection that pytorch-fm's models do not have)")
    print(" ".join(f"{SHORT[m]}_ratio={ratios[(m, 'zero_pad', 'memory')]:.3f}" for m in models),
          flush=True)
    return 0


def row_label(model: str, unify: str, source: str) -> str:
    return model + (" unify=linear" if unify == "linear" else "") + (
        " +input" if source == "stream" else "")


if __name__ == "__main__":
    if "--worker" in sys.argv[1:]:
        sys.exit(torch_worker(sys.argv[1:]))
    sys.exit(main())
