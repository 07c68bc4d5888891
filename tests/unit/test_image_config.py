"""Hostile image configs and labels give one clear line naming the image, never a traceback."""

from __future__ import annotations

from typing import Any

import pytest

from linuxkit_py.cache.image import Image
from linuxkit_py.errors import UserError
from linuxkit_py.registry.client import parse_mirrors

REF = "docker.io/evil/image:1"


def image(config: Any) -> Image:
    return Image(ref=REF, digest="sha256:" + "0" * 64, manifest={"layers": []}, config={"config": config})


@pytest.mark.parametrize(("config", "message"), [
    ([1], f"{REF}: the image config's `config` is not an object"),
    ({"Labels": ["x"]}, f"{REF}: the image config's Labels is not an object"),
    ({"Labels": {"org.mobyproject.config": 5}}, f"{REF}: label org.mobyproject.config is not a string"),
    ({"Labels": {"org.mobyproject.config": "[1]"}}, f"{REF}: label org.mobyproject.config is not a JSON object"),
])
def test_bad_label_or_config_is_one_line(config: Any, message: str) -> None:
    with pytest.raises(UserError) as info:
        image(config).moby_config_label()
    assert str(info.value) == message


def test_label_that_is_not_json_names_the_image() -> None:
    with pytest.raises(UserError, match=rf"^{REF}: label org.mobyproject.config is not valid JSON: "):
        image({"Labels": {"org.mobyproject.config": "{pid: host"}}).moby_config_label()


def test_good_label_and_no_label() -> None:
    assert image({"Labels": {"org.mobyproject.config": '{"pid": "host"}'}}).moby_config_label() == {"pid": "host"}
    assert image({}).moby_config_label() is None


def test_mirror_url_with_credentials_is_refused_without_echoing_them() -> None:
    with pytest.raises(UserError) as info:
        parse_mirrors(["docker.io=http://user:s3cret@127.0.0.1:5000"], None)
    assert "s3cret" not in str(info.value)
    assert str(info.value).startswith("mirror for docker.io: credentials in the URL are not supported")
