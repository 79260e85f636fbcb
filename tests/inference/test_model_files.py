"""A saved model file loads in a process that imported nothing but the inference loader."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import covid_imaging
from covid_imaging.segmentation.models import build_unet

PACKAGE = Path(covid_imaging.__file__).parent

# In a fresh interpreter: the project's modules that register Keras objects are imported
# by the loader alone, and a two-head U-Net file loads with its heads.
FRESH_PROCESS_CHECK = """
import sys
from pathlib import Path
from covid_imaging.inference.models import load_keras_file

package, model_file = Path(sys.argv[1]), sys.argv[2]
model = load_keras_file(model_file)
from covid_imaging.segmentation.conventions import model_conventions
print("heads", ",".join(model_conventions(model)))
registering = sorted(
    ".".join(("covid_imaging", *path.relative_to(package).with_suffix("").parts))
    for path in package.rglob("*.py") if "register_keras_serializable" in path.read_text()
)
print("not imported by the loader", [name for name in registering if name not in sys.modules])
"""


def test_a_two_head_segmentation_model_loads_with_only_the_loader_imported(tmp_path):
    model_file = tmp_path / "unet.keras"
    build_unet(input_size=32, base_filters=2, mask_conventions=("v7", "nlm")).save(model_file)
    result = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS_CHECK, str(PACKAGE), str(model_file)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "heads v7,nlm" in result.stdout
    assert "not imported by the loader []" in result.stdout
