"""The Hugging Face hub as huggingface_hub is configured: whether to go online, and which commit
a repository's revision is.

Offline mode and the endpoint are huggingface_hub's own settings (HF_HUB_OFFLINE, HF_ENDPOINT);
nothing here opens a connection to find out. A hub model is known by its commit, not only its
id: online the hub resolves the revision, offline the commit recorded in the local cache
(`models--org--name/refs/main`) answers without any network.
"""

from __future__ import annotations

import os

from influence.errors import ModelError

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "INFLUENCE_OFFLINE")
TRUE_VALUES = ("1", "true", "yes", "on")


def offline() -> bool:
    """True when huggingface_hub is in offline mode, or an offline variable is set now (huggingface_hub
    reads HF_HUB_OFFLINE once, at import; datasets has its own HF_DATASETS_OFFLINE)."""
    # heavy: imported on use, not at start-up
    from huggingface_hub import constants

    if constants.is_offline_mode():
        return True
    return any(os.environ.get(v, "").strip().lower() in TRUE_VALUES for v in OFFLINE_VARIABLES)


def resolve_commit(repo_id: str, *, revision: str | None = None, repo_type: str = "model") -> str:
    """The commit hash that `revision` (default: the main branch) of a hub repository is.

    Online the hub answers (and the cache's refs learn it); offline, or when the hub cannot be
    reached, the cache's refs do, without a network attempt when offline.

    Raises:
        ModelError: the repository or revision does not exist, or it is neither resolvable nor cached.
    """
    # heavy: imported on use, not at start-up
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RevisionResolutionError

    where = f"{repo_type} {repo_id!r}" + (f" revision {revision!r}" if revision else "")
    try:
        resolved = HfApi().resolve_revision(repo_id, repo_type=repo_type, revision=revision,
                                            local_files_only=offline())
    except RevisionResolutionError:
        state = "offline (HF_HUB_OFFLINE)" if offline() else "the hub cannot be reached"
        raise ModelError(f"{where}: {state} and it is not in the local cache; download it once online, "
                         "or pass a local directory") from None
    except HfHubHTTPError as exc:
        raise ModelError(f"{where}: {str(exc).splitlines()[0]}; check the name") from None
    return resolved.resolved
