"""Checkpoints on the Hugging Face Hub: ``meet.load("org/name[@revision]")`` and the CLI.

    python -m meet.hub push RUN org/name [--revision BRANCH] [--private] [--message TEXT]
    python -m meet.hub download org/name[@revision] --out DIR

Downloads go through ``huggingface_hub.snapshot_download`` into the library's normal cache
(``HF_HUB_CACHE``, else ``$HF_HOME/hub``), so a second load, or any tool sharing the cache,
reuses the files. Only safetensors, JSON and text files are fetched, never a pickle
(``*.bin``, ``*.pt``, ``*.pth``, ...): unpickling runs code, and MEET never needs it.

``HF_ENDPOINT``, ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` are read from the environment on
every call. huggingface_hub reads them once, at its import, which is often before a
notebook or a test sets them (transformers imports it early); reading them again here
means that setting them at any time takes effect for MEET's downloads. Offline mode is on
when the variable says so now or said so at the library's import (the library then
refuses every request anyway).

A local path that exists always wins over a repo id; see
:func:`meet.checkpoint.resolve_checkpoint`, which sends a missing path that looks like a
repo id here. Pushing uploads one checkpoint (a run folder: its best one) without its
training state, plus the run's ``metrics.jsonl`` and a generated model card
(:mod:`meet.model_card`), in one commit.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meet.cli import atomic_folder, output_folder, run
from meet.checkpoint import (PICKLE_PATTERNS, POINTER, SAFE_PATTERNS, TRAINING_STATE, is_meet_checkpoint,
                             matches, resolve_checkpoint)
from meet.errors import CheckpointError, ConfigError, HubError
from meet.model_card import upload_plan

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"^{_NAME}/{_NAME}$")


@dataclass(frozen=True)
class RepoSpec:
    """``org/name`` and an optional revision (branch, tag or commit id)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")


def parse_spec(spec: Any) -> RepoSpec | None:
    """``"org/name"`` or ``"org/name@revision"`` -> :class:`RepoSpec`; None for anything
    else (a bare name, an absolute or dotted path, a Windows path, a non-string). The
    revision may hold slashes (``refs/pr/1``) but no whitespace."""
    if isinstance(spec, Path):
        spec = spec.as_posix()
    if not isinstance(spec, str):
        return None
    repo_id, _, revision = spec.partition("@")
    if not _REPO_ID.match(repo_id) or ".." in repo_id or "--" in repo_id or repo_id.endswith(".git"):
        return None
    if "@" in spec and (not revision or any(c.isspace() for c in revision)):
        return None
    return RepoSpec(repo_id, revision or None)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def endpoint() -> str:
    """The Hub's URL: ``$HF_ENDPOINT`` now, else huggingface_hub's (https://huggingface.co)."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def offline_mode() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) set now, or at the library's import."""
    from huggingface_hub import constants

    return _env_flag("HF_HUB_OFFLINE") or _env_flag("TRANSFORMERS_OFFLINE") or bool(constants.HF_HUB_OFFLINE)


def cache_dir() -> Path:
    """The library's cache: ``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else its default."""
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    return Path(constants.HF_HUB_CACHE)


def _is_network_error(exc: BaseException) -> bool:
    """A connection or timeout failure of the library's HTTP client (requests, httpx or
    httpx2 depending on its version, so matched by class name, not imported)."""
    names = {klass.__name__ for klass in type(exc).__mro__}
    return isinstance(exc, (ConnectionError, TimeoutError)) or bool(
        names & {"TransportError", "ConnectionError", "Timeout", "TimeoutException"})


def snapshot(repo_id: str, revision: str | None = None, allow_patterns: Iterable[str] = SAFE_PATTERNS,
             ignore_patterns: Iterable[str] = (), token: str | bool | None = None) -> Path:
    """The local folder of ``repo_id`` at ``revision`` holding the files that match
    ``allow_patterns`` and none of ``ignore_patterns`` (pickles are always ignored),
    downloaded into the cache or, offline, found there. Any failure is a
    :class:`CheckpointError` saying what to do."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    spec, url, offline, cache = str(RepoSpec(repo_id, revision)), endpoint(), offline_mode(), cache_dir()
    try:
        folder = snapshot_download(repo_id, revision=revision, cache_dir=cache, endpoint=url, token=token,
                                   local_files_only=offline, allow_patterns=list(allow_patterns),
                                   ignore_patterns=[*PICKLE_PATTERNS, *ignore_patterns])
    except RevisionNotFoundError as exc:
        raise CheckpointError(f"the Hub repo {repo_id} has no revision {revision!r}",
                              fix="check the branch, tag or commit id after the @") from exc
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise CheckpointError(f"checkpoint not found: {spec} is not a local folder, and {url} has no "
                              f"model repo {repo_id} (or it is private or gated, and the current token "
                              "cannot read it)",
                              fix="check the path or the repo id (org/name); for a private or gated repo "
                                  "log in (hf auth login) or set HF_TOKEN") from exc
    except LocalEntryNotFoundError as exc:
        if offline:
            raise CheckpointError(f"checkpoint not found: {spec} is not a local folder, and as a Hub repo it "
                                  f"is not (completely) in the Hugging Face cache {cache} while offline mode "
                                  "(HF_HUB_OFFLINE) is on",
                                  fix="download it once with the network (python -m meet.hub download "
                                      f"{spec} --out DIR, or unset HF_HUB_OFFLINE), or pass a local "
                                      "checkpoint folder") from exc
        raise CheckpointError(f"checkpoint not found: {spec} is not a local folder, and the Hub at {url} "
                              f"cannot be reached to download it (nor is it in the Hugging Face cache {cache})",
                              fix="check the network, proxy and HF_ENDPOINT, or download it once where the "
                                  "Hub is reachable") from exc
    except HfHubHTTPError as exc:
        status = getattr(getattr(exc, "response", None), "status_code", "an error")
        raise CheckpointError(f"the Hub at {url} answered {status} for {spec}: {str(exc).splitlines()[0]}",
                              fix="try again later; for 401/403 check HF_TOKEN and your access to the repo") \
            from exc
    except OSError as exc:
        raise CheckpointError(f"cannot write the Hugging Face cache {cache}: {exc}",
                              fix="free disk space, or set HF_HUB_CACHE to a writable folder") from exc
    except Exception as exc:
        if not _is_network_error(exc):
            raise
        raise CheckpointError(f"the connection to the Hub at {url} failed while downloading {spec}: {exc}",
                              fix="check the network and try again; finished files stay in the cache") from exc
    return Path(folder)


def _remote_files(spec: RepoSpec, commit: str, token: str | bool | None) -> list[str] | None:
    """Every file of the repo at ``commit`` (None offline or when the listing fails):
    what the Hub holds, not only what the patterns let through."""
    if offline_mode():
        return None
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint(), token=token).list_repo_files(spec.repo_id, revision=commit)
    except Exception:  # noqa: BLE001 - only used to word an error better
        return None


def _not_a_checkpoint(spec: RepoSpec, folder: Path, token: str | bool | None) -> CheckpointError:
    """Why the downloaded repo is no MEET checkpoint, in its terms."""
    local = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()) \
        if folder.is_dir() else []
    files = _remote_files(spec, folder.name, token) or local
    pickles = [f for f in files if matches(f, PICKLE_PATTERNS)]
    meet_fix = ("pass a MEET checkpoint repo (config.json with MEET's sections, model.safetensors, "
                "codebooks.safetensors), e.g. one made by python -m meet.hub push RUN org/name")
    if pickles and not any(f.endswith(".safetensors") for f in files):
        return CheckpointError(f"the Hub repo {spec} holds only pickle weights ({', '.join(pickles[:3])}), "
                               "which MEET never loads (unpickling can run code)",
                               fix="convert the weights to safetensors; " + meet_fix)
    try:
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        model_type = None
    if model_type:
        return CheckpointError(f"the Hub repo {spec} is a transformers {model_type!r} model, not a MEET "
                               "checkpoint", fix=meet_fix)
    missing = [name for name in ("config.json", "model.safetensors", "codebooks.safetensors")
               if name not in local]
    what = f"it has no {', '.join(missing)}" if missing else "its config.json has no MEET sections"
    return CheckpointError(f"the Hub repo {spec} is not a MEET checkpoint: {what}", fix=meet_fix)


def resolve(spec: str | RepoSpec, token: str | bool | None = None) -> Path:
    """The local checkpoint folder of a Hub repo ``org/name[@revision]``: downloaded into
    the cache (safe files only, no training state) or found there offline. A repo that
    is a whole training run resolves to its best checkpoint."""
    parsed = spec if isinstance(spec, RepoSpec) else parse_spec(spec)
    if parsed is None:
        raise CheckpointError(f"checkpoint not found: {spec}",
                              fix="pass a checkpoint folder, a training run folder, or a Hub repo id "
                                  "org/name[@revision]")
    folder = snapshot(parsed.repo_id, parsed.revision, ignore_patterns=TRAINING_STATE, token=token)
    if is_meet_checkpoint(folder):
        return folder
    if (folder / POINTER).is_file():
        best = resolve_checkpoint(folder)
        if is_meet_checkpoint(best):
            return best
    raise _not_a_checkpoint(parsed, folder, token)


def download(spec: str, out: str | Path) -> Path:
    """Copy the checkpoint of ``spec`` out of the cache into the new or empty folder
    ``out`` (real files, no cache symlinks), all at once or not at all
    (:func:`meet.cli.output_folder`, :func:`meet.cli.atomic_folder`)."""
    with output_folder(out) as out:
        folder = resolve(spec)
        try:
            with atomic_folder(out) as tmp:
                shutil.copytree(folder, tmp, dirs_exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot write {out}: {exc}", fix="choose a writable folder with free space") from exc
    return out


def push(run: str | Path, repo: str, revision: str | None = None, private: bool = False,
         message: str | None = None, token: str | None = None) -> Any:
    """Upload the checkpoint of ``run`` (a checkpoint folder, or a run folder: its best
    checkpoint) to the Hub repo ``repo`` (created if needed, ``private`` then), on branch
    ``revision`` (created from main if needed), in one commit; returns its CommitInfo."""
    spec = parse_spec(repo)
    if spec is None:
        raise ConfigError(f"{repo!r} is not a Hub repo id", fix="use org/name (your user name or an organisation)")
    if spec.revision and revision and spec.revision != revision:
        raise ConfigError(f"{repo} and --revision {revision} name two branches", fix="give the branch once")
    revision = revision or spec.revision
    if not Path(run).exists():
        raise CheckpointError(f"checkpoint not found: {run}", fix="pass a checkpoint folder or a training run folder")
    files, card = upload_plan(Path(run), spec.repo_id)
    if offline_mode():
        raise ConfigError("offline mode (HF_HUB_OFFLINE) is on; pushing needs the Hub",
                          fix="unset HF_HUB_OFFLINE (and TRANSFORMERS_OFFLINE)")
    from huggingface_hub import CommitOperationAdd, HfApi, get_token

    if not (token or get_token()):
        raise ConfigError("pushing needs a Hugging Face token with write access",
                          fix="log in with hf auth login, or set HF_TOKEN")
    api = HfApi(endpoint=endpoint(), token=token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(path)) for name, path in files.items()]
    operations.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=card.encode("utf-8")))
    try:
        # private=None, not False: a new repo then gets the namespace's default visibility
        api.create_repo(spec.repo_id, private=True if private else None, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(spec.repo_id, branch=revision, exist_ok=True)
        return api.create_commit(spec.repo_id, operations=operations, revision=revision,
                                 commit_message=message or f"Upload MEET checkpoint ({len(operations)} files)")
    except Exception as exc:
        raise _push_error(exc, spec.repo_id) from exc


def _push_error(exc: Exception, repo_id: str) -> Exception:
    """The Hub's refusal or a network failure as one clear :class:`HubError`; anything
    else (a bug) unchanged."""
    from huggingface_hub.errors import HfHubHTTPError

    url = endpoint()
    if isinstance(exc, HfHubHTTPError):
        status = getattr(getattr(exc, "response", None), "status_code", None)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if status == 401:
            return HubError(f"the Hub at {url} did not accept the token ({reason})",
                            fix="log in again (hf auth login) or set HF_TOKEN to a valid write token")
        if status == 403:
            return HubError(f"the token may not write to {repo_id} ({reason})",
                            fix="use a token with write access to that namespace, or push to your own")
        return HubError(f"the Hub at {url} refused the push to {repo_id}: {status} {reason}",
                        fix="check the repo id and branch, then try again")
    if _is_network_error(exc):
        return HubError(f"cannot reach the Hub at {url}: {exc}",
                        fix="check the network, proxy and HF_ENDPOINT, then push again (the commit is all or nothing)")
    return exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m meet.hub", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    push_cmd = commands.add_parser("push", help="upload a checkpoint with a generated model card")
    push_cmd.add_argument("run", type=Path, help="checkpoint folder, or training run folder (its best checkpoint)")
    push_cmd.add_argument("repo", help="Hub repo id org/name (created if missing)")
    push_cmd.add_argument("--revision", default=None, help="branch to commit to (default main; created if missing)")
    push_cmd.add_argument("--private", action="store_true", help="create the repo private")
    push_cmd.add_argument("--message", default=None, help="commit message")
    get_cmd = commands.add_parser("download", help="copy a Hub checkpoint into a folder")
    get_cmd.add_argument("repo", help="org/name or org/name@revision")
    get_cmd.add_argument("--out", type=Path, required=True, help="new or empty folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> None:
        if args.command == "push":
            info = push(args.run, args.repo, revision=args.revision, private=args.private, message=args.message)
            print(f"pushed {args.run} to {args.repo}: {info.commit_url}")
        else:
            print(f"downloaded {args.repo} -> {download(args.repo, args.out)}")
    return run(body)


if __name__ == "__main__":
    sys.exit(main())
