"""``covid-imaging predict IN_DIR OUT_DIR``: the inference pipeline on a folder of images (not named
``cli.py``: Kedro reserves that module name for project commands).

The same run as ``kedro run --pipeline=inference --params=inference.source=IN_DIR,
inference.output=OUT_DIR``: the outputs land in ``OUT_DIR/<timestamp>/``, whose path
is printed last.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import yaml


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="covid-imaging predict",
        description="Apply the trained models to every image under IN_DIR; write masks, overlays, "
        "predictions.csv and report.html to OUT_DIR/<timestamp>/.",
    )
    parser.add_argument("in_dir", help="folder (or container prefix) of images; searched recursively by default")
    parser.add_argument("out_dir", help="folder that receives the run folder")
    parser.add_argument("--layout", default=None, help="an ingestion layout instead of a plain folder (e.g. paired_folders)")
    parser.add_argument("--classifiers", default=None, help="comma-separated registered classifiers ('' for none)")
    parser.add_argument("--env", default=None, help="Kedro environment the models were trained in (e.g. shared_data)")
    parser.add_argument("--project", default=".", help="the covid-imaging project folder (default: the current one)")
    parser.add_argument("--params", default=None, help="more parameters, as kedro run's --params (key=value,...)")
    return parser


def _runtime_params(arguments: argparse.Namespace) -> dict[str, Any]:
    inference: dict[str, Any] = {"source": arguments.in_dir, "output": arguments.out_dir}
    if arguments.layout:
        inference["layout"] = arguments.layout
    if arguments.classifiers is not None:
        inference["classifiers"] = [name for name in arguments.classifiers.split(",") if name]
    nested: dict[str, Any] = {"inference": inference}
    for item in filter(None, (arguments.params or "").split(",")):
        key, separator, value = item.partition("=")
        if not separator:
            raise SystemExit(f"--params: {item!r} is not key=value")
        *parents, leaf = key.strip().split(".")
        target = nested
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = yaml.safe_load(value)  # numbers, booleans, lists as kedro run reads them
    return nested


def _run_folders(out_dir: Path) -> set[Path]:
    return {p for p in out_dir.iterdir() if p.is_dir() and not p.name.startswith(".")} if out_dir.is_dir() else set()


def _from_here(path: str, must_exist: bool) -> str:
    """A relative local path taken from the current folder, not the project's (the run
    starts in the project folder). A relative IN_DIR that is not a folder here is left
    as given: a container prefix under ``--env=azure``, or a path in the project."""
    if "://" in path or Path(path).is_absolute() or (must_exist and not Path(path).is_dir()):
        return path
    return str(Path(path).resolve())


def predict(argv: list[str] | None = None) -> Path:
    """Run the inference pipeline as the command line asks; returns the run folder it wrote."""
    from kedro.framework.project import configure_project  # noqa: PLC0415
    from kedro.framework.session import KedroSession  # noqa: PLC0415
    from kedro.framework.startup import bootstrap_project  # noqa: PLC0415

    arguments = _parser().parse_args(argv)
    arguments.in_dir = _from_here(arguments.in_dir, must_exist=True)
    arguments.out_dir = _from_here(arguments.out_dir, must_exist=False)
    project = Path(arguments.project).resolve()
    if not (project / "pyproject.toml").is_file() or not (project / "conf").is_dir():
        raise SystemExit(f"{project} is not the covid-imaging project folder (no pyproject.toml and conf/); use --project")
    out_dir = Path(arguments.out_dir)
    before = _run_folders(out_dir)
    configure_project("covid_imaging")
    bootstrap_project(project)
    with KedroSession.create(project_path=project, env=arguments.env, runtime_params=_runtime_params(arguments)) as session:
        session.run(pipeline_names=["inference"])
    new = sorted(_run_folders(out_dir) - before)  # this run's folder, not an older or foreign one
    if len(new) != 1:
        raise SystemExit(f"expected one new run folder under {out_dir}, found {[p.name for p in new]}")
    print(new[0])
    return new[0]
