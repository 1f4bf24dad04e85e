"""Shared test set-up: everything offline, on CPU."""

import os

import pytest

# huggingface_hub reads this once, at import: set it before anything imports open_clip.
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory):
    """A small synthetic benchmark (5 domains x 12 images at 128 px), made once per session."""
    from clipgap_cli.data.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, seed=0, images_per_domain=12, size=128)
    return out


@pytest.fixture
def tiny_run(tmp_path):
    """A run directory with text embeddings of the 15 default prompts from the tiny random CLIP."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.stages.encode_prompts import encode_prompts

    run = tmp_path / "run"
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-tiny", pretrained=None)
    return run


@pytest.fixture
def synth_run(tmp_path):
    """A run directory with text embeddings of the 15 default prompts and the default class
    template from RN-synth, clipgap's pretrained CLIP: for the end-to-end runs."""
    from clipgap_cli.clip.prompts import DEFAULT_PROMPTS_FILE, read_prompts
    from clipgap_cli.stages.encode_prompts import encode_prompts

    run = tmp_path / "run"
    encode_prompts(run, read_prompts(DEFAULT_PROMPTS_FILE), clip="RN-synth", pretrained="synth")
    return run
