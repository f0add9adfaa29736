"""Canary images (``verify_images``, issue 13) set through the chart's structured values: the
schema takes them, the rendered config.toml carries them to the syncer's validation, and a
reference on another host is refused by the syncer's own config check of the rendered file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from syncer.cli import main
from syncer.imageref import parse_image
from tests.test_chart import CHART, RELEASE, helm, template
from tests.test_deploy import config_text, env_of, settings_of, validate_objects, workload_of

HOST = "quay.example.com"
DIGEST = "sha256:" + "ab" * 32


def _values(tmp_path: Path, verify_images: Any) -> Path:
    path = tmp_path / "values-canary.yaml"
    path.write_text(yaml.safe_dump({"config": {"registries": [{
        "host": HOST, "path": "registries/quay", "username": "robot$ci", "verify_images": verify_images,
    }]}}))
    return path


def test_structured_verify_images_render_and_pass_the_syncers_validation(tmp_path: Path) -> None:
    images = ["team/app:v1", f"team/app@{DIGEST}", f"{HOST}/team/base:2"]
    objects = template("default", files=(str(_values(tmp_path, images)),))
    validate_objects(objects)
    [registry] = settings_of(objects).registries  # raises ConfigError naming every bad key
    assert registry.host == HOST
    assert registry.verify_images == tuple(parse_image(i, HOST) for i in images)


def test_schema_refuses_verify_images_that_is_not_a_list(tmp_path: Path) -> None:
    out = helm("template", RELEASE, str(CHART), "-f", str(_values(tmp_path, "team/app:v1")))
    assert out.returncode != 0, "a string for verify_images was accepted"
    assert "verify_images" in out.stderr and "schema" in out.stderr, out.stderr


def test_cross_host_canary_is_refused_by_the_config_check_of_the_rendered_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The schema cannot know the registry's host; the syncer refuses the rendered file, naming
    the key path: ``syncer check`` with a FAIL line, the pod's start-up with exit 2, no traceback."""
    objects = template("default", files=(str(_values(tmp_path, ["team/app:v1", "quay.io/team/app:v1"])),))
    rendered = tmp_path / "config.toml"
    rendered.write_text(config_text(objects))
    env = env_of(workload_of(objects))
    key = "registries[0].verify_images[1]"
    assert main(["check", "--config", str(rendered)], env=env) == 1
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines() if key in line] == ["FAIL"], out
    assert main(["--config", str(rendered), "--once"], env=env) == 2
    err = capsys.readouterr().err
    assert key in err and "quay.io" in err, err
    assert "registries[0].verify_images[0]" not in err + out and "Traceback" not in err, err
