"""covid-imaging file for ensuring the package is executable
as `covid-imaging` and `python -m covid_imaging`

``covid-imaging predict IN_DIR OUT_DIR`` runs the inference pipeline on a folder (the
habit of lungmask and similar tools); anything else is ``kedro run``'s command line.
"""
import sys
from pathlib import Path
from typing import Any

from kedro.framework.cli.utils import find_run_command
from kedro.framework.project import configure_project


def main(*args, **kwargs) -> Any:
    package_name = Path(__file__).parent.name
    if sys.argv[1:2] == ["predict"] and not args:
        from covid_imaging.predict import predict  # noqa: PLC0415 - only this subcommand needs it

        predict(sys.argv[2:])  # raises SystemExit when no run folder was written
        return 0  # the console script exits with main()'s value: 0 is success
    configure_project(package_name)

    interactive = hasattr(sys, 'ps1')
    kwargs["standalone_mode"] = not interactive

    run = find_run_command(package_name)
    return run(*args, **kwargs)


if __name__ == "__main__":
    main()
