"""The field's own models ("peers"), each in a virtual environment of its own: which exist, how to
set one up, and where its Python is.

A peer's dependencies pin what mtpert cannot share (CPA wants torch 2.0 on Python 3.10), so it
never runs in mtpert's process: :class:`~mtpert.models.external.ExternalModel` runs its runner
script (``mtpert/models/peers/<name>.py``) under the peer's own interpreter. ``mtpert peers setup
NAME`` creates that environment with the pins below; ``mtpert peers`` says which are ready.

Where a peer's environment is, in order: the ``python`` option of the model, the environment
variable ``MTPERT_PEER_<NAME>`` (its Python), else ``<peers dir>/<name>`` made by
:func:`setup_peer`, the peers dir being ``$MTPERT_PEERS_DIR`` or ``~/.local/share/mtpert/peers``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mtpert.errors import ConfigError, MissingDependencyError, UnknownNameError
from mtpert.lock import output_lock

if TYPE_CHECKING:
    import pandas as pd

RUNNERS = Path(__file__).parent / "peers"
"""The runner scripts, and ``mtpert_peer.py``, the protocol they share."""
MARKER = "mtpert-peer.json"
"""Written into an environment once its setup finished: what was installed, and when."""


@dataclass(frozen=True)
class Peer:
    """A peer model: its environment's recipe, its runner and what its design can predict."""

    name: str
    description: str
    python: str
    """The Python version its pins need, e.g. ``"3.10"``."""
    distribution: str
    """The package that makes it (its version is what ``mtpert peers`` shows)."""
    install: tuple[tuple[str, ...], ...]
    """``pip install`` arguments, one step each, in order."""
    predicts_unseen_combinations: bool = False

    @property
    def runner(self) -> Path:
        """Its runner script: ``run_<name>.py``, since ``<name>.py`` would shadow the package it imports."""
        return RUNNERS / f"run_{self.name}.py"

    @property
    def env_var(self) -> str:
        """The environment variable that may name this peer's Python."""
        return f"MTPERT_PEER_{self.name.upper()}"


_CPU_TORCH = ("torch==2.13.0",)  # first: on Python 3.11 any other torch request pulls a CUDA build

PEERS: dict[str, Peer] = {
    peer.name: peer
    for peer in (
        Peer(
            "pertpy_scgen",
            "scGen as pertpy 1.0.3 ships it (pt.tl.Scgen, scvi-tools 1.4.2): one latent shift per condition",
            "3.11",
            "pertpy",
            (_CPU_TORCH, ("pertpy==1.0.3", "scvi-tools==1.4.2", "statsmodels<0.15")),
        ),
        Peer(
            "cpa",
            "CPA (cpa-tools 0.8.8): compositional perturbation autoencoder, combinations and covariates",
            "3.10",
            "cpa-tools",
            (
                (
                    "torch==2.0.1",
                    "scvi-tools==0.20.3",
                    "lightning==2.2.*",
                    "jax==0.4.23",
                    "jaxlib==0.4.23",
                    "numpy<1.24",
                    "scipy==1.12.*",
                    "anndata==0.9.*",
                    "scanpy==1.9.8",
                    "pandas<2.1",
                    "pyarrow<15",
                    "ray[tune]==2.9.*",
                    "rdkit-pypi",
                ),
                ("--no-deps", "cpa-tools==0.8.8"),
                ("adjustText",),  # imported by cpa, not among its pins
            ),
            predicts_unseen_combinations=True,
        ),
        Peer(
            "state",
            "State's transition model (arc-state 0.11.1), trained from scratch on the fold's expression",
            "3.11",
            "arc-state",
            # torch is named again in each step, so that pip keeps the CPU build; transformers 5
            # refuses State's tutorial size (hidden 328 with 12 attention heads)
            (_CPU_TORCH, ("arc-state==0.11.1", *_CPU_TORCH), ("transformers<5", *_CPU_TORCH)),
        ),
        Peer(
            "cellflow",
            "CellFlow (cellflow-tools 0.0.9): flow matching in PCA space, conditioned on the perturbation",
            "3.11",
            "cellflow-tools",
            (("cellflow-tools==0.0.9", "requests"),),
            predicts_unseen_combinations=True,
        ),
    )
}
"""The peers mtpert can run, by name."""


def get_peer(name: str) -> Peer:
    """The peer called ``name``."""
    try:
        return PEERS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown peer '{name}'; mtpert runs: {', '.join(PEERS)}.") from None


def peers_dir() -> Path:
    """Where :func:`setup_peer` puts environments: ``$MTPERT_PEERS_DIR``, else
    ``$XDG_DATA_HOME/mtpert/peers`` (``~/.local/share/mtpert/peers``)."""
    if os.environ.get("MTPERT_PEERS_DIR"):
        return Path(os.environ["MTPERT_PEERS_DIR"]).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "mtpert" / "peers"


def setup_command(name: str) -> str:
    return f"mtpert peers setup {name}"


def peer_python(name: str, given: str | None = None) -> Path:
    """The Python that runs peer ``name``: ``given``, else ``$MTPERT_PEER_<NAME>``, else the one
    :func:`setup_peer` made. Raises :class:`MissingDependencyError` naming the setup command where
    there is none, or where its setup never finished."""
    peer = get_peer(name)
    chosen = given or os.environ.get(peer.env_var)
    if chosen:
        path = Path(chosen).expanduser()
        if not (path.is_file() and os.access(path, os.X_OK)):
            source = "the model's python option" if given else f"${peer.env_var}"
            raise MissingDependencyError(
                f"Peer '{name}': {source} names {path}, which is not an executable Python. "
                f"Point it at the peer environment's bin/python, or run `{setup_command(name)}`."
            )
        return path
    env = peers_dir() / name
    python = env / "bin" / "python"
    if not python.exists():
        raise MissingDependencyError(
            f"Peer '{name}' has no environment (looked in {env}). Create it with `{setup_command(name)}` "
            f"(a few minutes, needs PyPI), or set {peer.env_var} to the Python of one you made."
        )
    if not (env / MARKER).is_file():
        raise MissingDependencyError(
            f"Peer '{name}': the environment in {env} was never finished (its setup was interrupted or failed). "
            f"Run `{setup_command(name)}` to build it again."
        )
    return python


def installed_version(python: Path, distribution: str, *, timeout: float = 60) -> str | None:
    """The version of ``distribution`` installed for ``python`` (read from its metadata, without
    importing it), or None where it is not installed or ``python`` does not run."""
    code = f"import importlib.metadata as m; print(m.version({distribution!r}))"
    try:
        done = subprocess.run(
            [str(python), "-c", code], check=False, capture_output=True, text=True, timeout=timeout
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def peer_status() -> pd.DataFrame:
    """One row per peer: ``ready``, ``status`` (what to do if not ready), ``python`` and the
    peer package's ``version``."""
    import pandas as pd

    rows = []
    for peer in PEERS.values():
        row = {
            "peer": peer.name,
            "ready": False,
            "python": "",
            "version": "",
            "description": peer.description,
        }
        try:
            python = peer_python(peer.name)
        except MissingDependencyError as error:
            row["status"] = str(error)
        else:
            version = installed_version(python, peer.distribution)
            row |= {"python": str(python), "version": version or ""}
            row["ready"] = version is not None
            row["status"] = (
                "ready"
                if version
                else f"{peer.distribution} is not installed for {python}: run `{setup_command(peer.name)} --force`."
            )
        rows.append(row)
    return pd.DataFrame(rows).set_index("peer")


def setup_peer(
    name: str,
    folder: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    on_step: Callable[[str], None] = print,
) -> Path:
    """Create peer ``name``'s environment in ``folder/<name>`` (default :func:`peers_dir`) with
    its pins; returns its Python. ``on_step`` hears each step. Every pip command's output goes to
    ``<name>.setup.log`` beside it, whose end a failure shows.

    An environment whose setup finished is kept (pass ``force`` to rebuild it); one left
    unfinished is rebuilt. Two setups of one environment at once: the second is refused.
    """
    peer = get_peer(name)
    base = Path(folder).expanduser() if folder is not None else peers_dir()
    env = base / name
    interpreter = find_python(peer.python)
    if interpreter is None:
        raise MissingDependencyError(
            f"Peer '{name}' needs Python {peer.python} (its pins do not install on others), and no python{peer.python} "
            f"is on PATH. Install it (e.g. `pyenv install {peer.python}`, `uv python install {peer.python}` or your "
            f"system's python{peer.python} and python{peer.python}-venv packages), then run `{setup_command(name)}` again."
        )
    base.mkdir(parents=True, exist_ok=True)
    with output_lock(env, file=True):
        if (env / MARKER).is_file() and not force:
            on_step(f"{name}: already set up in {env} (pass --force to rebuild it)")
            return env / "bin" / "python"
        if env.exists():
            shutil.rmtree(env)
        log = base / f"{name}.setup.log"
        steps = [[interpreter, "-m", "venv", str(env)]]
        steps += [
            [
                str(env / "bin" / "python"),
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                *args,
            ]
            for args in peer.install
        ]
        started = time.perf_counter()
        with log.open("w") as out:
            for k, command in enumerate(steps, 1):
                on_step(
                    f"{name}: step {k}/{len(steps)}: {'pip install ' + ' '.join(command[5:]) if k > 1 else 'python -m venv ' + str(env)}"
                )
                out.write(f"$ {' '.join(command)}\n")
                out.flush()
                if subprocess.run(
                    command,
                    check=False,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                ).returncode:
                    raise ConfigError(
                        f"Setting up peer '{name}' failed at step {k} ({' '.join(command[5:] if k > 1 else command)}):\n"
                        f"{last_lines(log, 25)}\nFull log: {log}. The unfinished environment is rebuilt by the next `{setup_command(name)}`."
                    )
        python = env / "bin" / "python"
        record = {
            "peer": name,
            "python": peer.python,
            "install": [list(args) for args in peer.install],
            "version": installed_version(python, peer.distribution),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.perf_counter() - started, 1),
            "by": f"mtpert on Python {sys.version.split()[0]}",
        }
        (env / MARKER).write_text(json.dumps(record, indent=2))
        on_step(
            f"{name}: ready in {record['seconds']:.0f} s ({peer.distribution} {record['version']}); log in {log}"
        )
        return python


def find_python(version: str) -> str | None:
    """A Python ``version`` (``"3.10"``) interpreter that runs: ``python3.10`` on PATH, else one
    that pyenv installed but has not made global (its shim on PATH then fails)."""
    candidates = [shutil.which(f"python{version}")]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv") / "versions"
    candidates += sorted(str(p) for p in pyenv.glob(f"{version}.*/bin/python{version}"))[::-1]
    for candidate in filter(None, candidates):
        try:
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                check=False,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == str(
            tuple(int(v) for v in version.split("."))
        ):
            return candidate
    return None


def last_lines(path: Path, lines: int) -> str:
    """The last ``lines`` lines of text file ``path`` (empty where it cannot be read): the end of
    a setup's or a peer's log, for an error message."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""
