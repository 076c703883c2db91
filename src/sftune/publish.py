"""The end of a run: its model card (model_card.py), and with output.push_to_hub the run folder
uploaded to a Hugging Face Hub model repository through huggingface_hub.

The token is huggingface_hub's own: HF_TOKEN, or the one `hf auth login` stored; the endpoint is
HF_ENDPOINT (default huggingface.co). Both are checked before training starts, so a run never trains
for hours and then fails to upload for want of a token. checkpoints/ (optimizer states) stay local.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftune import model_card
from sftune.config import Config, ConfigError

LEFT_OUT = ["checkpoints/*", ".*"]  # optimizer states and partial files are not part of the published model


def check(cfg: Config) -> None:
    """Before training: a push_to_hub repository id that is well formed, and a token to push with."""
    repo = cfg.output.push_to_hub
    if repo is None:
        return
    from huggingface_hub import get_token
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo)
    except HFValidationError as err:
        raise ConfigError(f"output.push_to_hub={repo}: not a repository id ({err}); write ORG/NAME") from None
    if get_token() is None:
        raise ConfigError(f"output.push_to_hub={repo}: no Hugging Face token; set HF_TOKEN (a token with write "
                          "access, https://huggingface.co/settings/tokens) or run `hf auth login`, or remove "
                          "output.push_to_hub")


def finish(cfg: Config, run_dir: Path, console: Any = None) -> None:
    """Write the run's model card; then, with output.push_to_hub, upload the run folder."""
    model_card.write(run_dir)
    if cfg.output.push_to_hub:
        url = push(run_dir, cfg.output.push_to_hub, private=cfg.output.hub_private)
        if console is not None:
            console.print(f"Pushed {run_dir} to {url}")


def push(run_dir: str | Path, repo: str, *, private: bool = True) -> str:
    """Create the model repository if needed and upload the run folder (without checkpoints/) in one
    commit; returns the commit's address."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()
    try:
        api.create_repo(repo, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo, repo_type="model", folder_path=str(run_dir),
                                   ignore_patterns=LEFT_OUT, commit_message=f"sftune run {Path(run_dir).name}")
    except (HfHubHTTPError, OSError, ValueError) as err:  # ValueError: the Hub refused the card's metadata
        raise ConfigError(
            f"output.push_to_hub={repo}: the upload failed ({str(err).splitlines()[0][:300]}). The run is saved in "
            f"{run_dir}; upload it again with `hf upload {repo} {run_dir} --exclude 'checkpoints/*'`") from None
    return commit.commit_url
