"""The worker package (setup.py): what Beam ships to Dataflow, Flink and Spark workers with
`--setup_file`. Built as Beam's stager builds it, from a copy of the sources in a temporary
directory (setuptools writes *.egg-info beside setup.py: the repository is left as it is). It must
hold every module the job imports, none of which imports TensorFlow, and require what they import,
pinned as in requirements.txt.

The modules the job imports are found from the source (an `ast` walk over the project's imports
from ENTRY, function-level imports included), so a new import is covered without editing a list.
"""
from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The launcher: it imports the job (preprocessing.job), whose transforms and DoFns are what the
# workers unpickle, so its closure holds every module a worker imports (and the launcher's few).
ENTRY = "preprocessing.run"
PROJECT = {p.name for p in REPO.iterdir() if (p / "__init__.py").is_file()}
# Module names that are TensorFlow or load it (tensorflow_* by prefix).
TENSORFLOW = ("tensorflow", "keras", "tf_keras", "tensorboard")
# `--input tfds:...` reads through TFDS, which is TensorFlow: only these functions import it,
# lazily, and only for such inputs (setup.py's extra `tfds` names what those workers need).
TFDS_ONLY = {("preprocessing.reading", "_ReadTfdsFn._examples"),
             ("preprocessing.parsing", "TfdsParse.setup")}
# Provided by the runner's SDK container at the launcher's version; not a package requirement.
CONTAINER = {"apache_beam"}


def _is_tensorflow(module: str) -> bool:
    top = module.split(".")[0]
    return top in TENSORFLOW or top.startswith("tensorflow")


def _file(module: str) -> Path | None:
    base = REPO.joinpath(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(module: str) -> list[tuple[str, str | None]]:
    """(imported module, qualified name of the function importing it, or None when the import
    runs with the module) for every import statement of project module `module`."""
    path = _file(module)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []

    def visit(node, names: tuple[str, ...], in_function: bool):
        for child in ast.iter_child_nodes(node):
            scope = ".".join(names) if in_function else None
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child, names + (child.name,), True)
            elif isinstance(child, ast.ClassDef):
                visit(child, names + (child.name,), in_function)
            elif isinstance(child, ast.Import):
                found.extend((alias.name, scope) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:  # relative: from the package `level - 1` levels up
                    parts = package.split(".")[:len(package.split(".")) - child.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                found.append((base, scope))
                found.extend((f"{base}.{a.name}", scope) for a in child.names
                             if _file(f"{base}.{a.name}"))  # `from package import module`
            else:
                visit(child, names, in_function)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), (), False)
    return found


def closure(entry: str = ENTRY) -> dict[str, list[tuple[str, str | None]]]:
    """Every project module `entry` imports, directly or not (with its parent packages): its
    imports by module."""
    seen: dict[str, list[tuple[str, str | None]]] = {}
    todo = [entry]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen[module] = _imports(module)
        parents = [module.rsplit(".", i)[0] for i in range(1, module.count(".") + 1)]
        for name in [n for n, _ in seen[module]] + parents:
            if name.split(".")[0] in PROJECT and name not in seen:
                assert _file(name), f"{module} imports {name}, which is not in the repository"
                todo.append(name)
    return seen


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _specs(lines) -> dict[str, str]:
    """name -> version specifier ("==1.2", or "" when none) of requirement lines `name[extras]
    SPEC` (comments and blank lines skipped)."""
    specs = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if line:
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?\s*(.*)", line)
            specs[_canon(match.group(1))] = match.group(2).replace(" ", "")
    return specs


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """(the sdist Beam would stage, its modules, its requirements by extra ("" for
    install_requires)). Built from a copy of setup.py and every top-level package of the
    repository, so setup.py picks from what it would find in the repository."""
    from apache_beam.runners.portability.stager import Stager

    src = tmp_path_factory.mktemp("src")
    shutil.copy2(REPO / "setup.py", src)
    for name in PROJECT:
        shutil.copytree(REPO / name, src / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    before = sorted(os.listdir(REPO))
    dist = tmp_path_factory.mktemp("dist")
    # Beam's own build step for --setup_file (`python -m build --sdist` when `build` is
    # installed, else `python setup.py sdist`), run in the copy.
    tarball = Path(Stager._build_setup_package(str(src / "setup.py"), str(dist)))
    assert sorted(os.listdir(REPO)) == before
    with tarfile.open(tarball) as tar:
        names = tar.getnames()
        root = names[0].split("/")[0]
        modules = {n[len(root) + 1:-3].replace("/", ".").removesuffix(".__init__")
                   for n in names if n.endswith(".py") and n != f"{root}/setup.py"}
        egg_info = next(n for n in names if n.endswith(".egg-info/requires.txt"))
        text = tar.extractfile(egg_info).read().decode()
    requires: dict[str, list[str]] = {"": []}
    extra = ""
    for line in text.splitlines():
        if line.startswith("["):
            extra = line.strip("[]")
            requires[extra] = []
        elif line.strip():
            requires[extra].append(line.strip())
    return tarball, modules, {k: _specs(v) for k, v in requires.items()}


def test_worker_package_holds_every_module_the_job_imports_and_no_other_package(package):
    _, shipped, _ = package
    needed = set(closure())
    assert {"preprocessing.job", "preprocessing.encoding", "configs.features"} <= needed
    assert sorted(needed - shipped) == [], "modules the job imports but setup.py does not ship"
    # Only the packages the job uses: models/ and pipeline/ are TensorFlow, not for workers.
    assert {m.split(".")[0] for m in shipped} == {m.split(".")[0] for m in needed}


def test_worker_package_modules_import_no_tensorflow():
    tensorflow = sorted((module, scope, name) for module, imports in closure().items()
                        for name, scope in imports if _is_tensorflow(name))
    where = {(module, scope) for module, scope, _ in tensorflow}
    assert where == TFDS_ONLY, f"TensorFlow imported by the job's modules: {tensorflow}"
    assert {name for _, _, name in tensorflow} == {"tensorflow_datasets"}


def test_worker_package_requires_what_its_modules_import_pinned_as_requirements_txt(package):
    _, _, requires = package
    pinned = _specs((REPO / "requirements.txt").read_text(encoding="utf-8").splitlines())
    assert all(spec.startswith("==") for spec in pinned.values()), pinned
    where: dict[str, set] = {}
    for module, imports in closure().items():
        for name, scope in imports:
            top = name.split(".")[0]
            if top not in PROJECT and top not in sys.stdlib_module_names:
                where.setdefault(top, set()).add((module, scope))
    assert CONTAINER <= set(where)
    dists = importlib.metadata.packages_distributions()
    needed = {_canon(d) for top, places in where.items()
              if top not in CONTAINER and not places <= TFDS_ONLY for d in dists[top]}
    assert requires[""] == {name: pinned[name] for name in needed}
    # tfds inputs: TFDS and the TensorFlow it runs on (TFDS does not declare it)
    tfds = {_canon(d) for top, places in where.items() if places <= TFDS_ONLY
            for d in dists[top]}
    tensorflow = [name for name in pinned if re.fullmatch(r"tensorflow(-cpu)?", name)]
    assert requires["tfds"] == {name: pinned[name] for name in tfds | set(tensorflow)}


# A fresh process with only the installed package (not the repository) on its path: first the
# launcher builds the job's graph, then a worker unpickles every DoFn and CombineFn of it and
# calls their setup(); each prints the project modules and TensorFlow modules it has loaded.
_LAUNCHER = """
import json, shutil, sys
from preprocessing import run
plan = run.make_plan(["--dataset", "criteo", "--input", sys.argv[1], "--data_dir", sys.argv[2],
                      "--runner=DirectRunner"])
pipeline = plan.pipeline(sys.argv[2])
open(sys.argv[3], "wb").write(pipeline.to_runner_api().SerializeToString())
shutil.rmtree(pipeline.local_tempdir, ignore_errors=True)  # Beam's, removed only by run()
print(json.dumps({m: getattr(sys.modules[m], "__file__", None) for m in list(sys.modules)}))
"""
_WORKER = """
import json, sys
from apache_beam.internal import pickler
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2 as pb
proto = pb.Pipeline.FromString(open(sys.argv[1], "rb").read())
combines = {common_urns.composites.COMBINE_PER_KEY.urn, common_urns.composites.COMBINE_GLOBALLY.urn,
            common_urns.combine_components.COMBINE_GROUPED_VALUES.urn}
fns = 0
for t in proto.components.transforms.values():
    if t.spec.urn == common_urns.primitives.PAR_DO.urn:
        fn = pb.ParDoPayload.FromString(t.spec.payload).do_fn
    elif t.spec.urn in combines:
        fn = pb.CombinePayload.FromString(t.spec.payload).combine_fn
    else:
        continue
    if fn.urn not in (python_urns.PICKLED_DOFN_INFO, python_urns.PICKLED_COMBINE_FN):
        continue  # one of Beam's built-in functions (e.g. python_key_with_none)
    obj = pickler.loads(fn.payload)
    obj = obj[0] if isinstance(obj, tuple) else obj
    getattr(obj, "setup", lambda: None)()
    fns += 1
assert fns > 10, fns
print(json.dumps({m: getattr(sys.modules[m], "__file__", None) for m in list(sys.modules)}))
"""


def test_worker_package_installed_alone_runs_launcher_and_worker_code_without_tensorflow(
        package, tmp_path):
    tarball, _, _ = package
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index",
                    "--no-build-isolation", "--target", str(site), str(tarball)],
                   check=True, capture_output=True, cwd=tmp_path)
    raw = tmp_path / "day0.txt"
    raw.write_text("1\t5" + "\t" * 12 + "a" + "\t" * 26 + "\n")
    env = dict(os.environ, PYTHONPATH=str(site))
    graph = tmp_path / "pipeline.pb"
    loaded = {}
    for role, code, args in (("launcher", _LAUNCHER, [raw, tmp_path / "out", graph]),
                             ("worker", _WORKER, [graph])):
        proc = subprocess.run([sys.executable, "-P", "-c", code, *map(str, args)], env=env,
                              cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-3000:]
        loaded[role] = json.loads(proc.stdout.strip().splitlines()[-1])
    needed = set(closure())
    for role, modules in loaded.items():
        assert sorted(m for m in modules if _is_tensorflow(m)) == [], role
        project = {m: f for m, f in modules.items() if m.split(".")[0] in PROJECT}
        assert project and all(f.startswith(str(site)) for f in project.values()), (role, project)
        # the static closure misses nothing these processes import
        assert sorted(set(project) - needed) == [], role
    assert {"preprocessing.encoding", "preprocessing.writing"} <= set(loaded["worker"])
