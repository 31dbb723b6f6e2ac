"""Shared test fixtures: repository paths, the shared real NeMo Gym rollouts, a tiny local model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
# CI lays shared/ beside the clone; a session has it at ../shared too.
SHARED = Path(os.environ.get("GYMVERL_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nemo_gym_rollouts"
FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))


@pytest.fixture(scope="session")
def fixture_files() -> list[Path]:
    """The real rollout files written by NeMo Gym (shared/, never copied into the repo)."""
    assert FIXTURE_FILES, f"shared NeMo Gym rollout fixtures not found under {FIXTURES}"
    return FIXTURE_FILES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 + BPE tokenizer with a chat template, built locally once per session."""
    from gymverl.tiny import build_tiny_model

    texts = [line for p in [SAMPLE_DATA / "rollouts.jsonl"] for line in p.read_text().splitlines()]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), texts)
