"""A local stand-in for the Hub API the Trainer calls, so pushes can be tested offline and inspected."""

from __future__ import annotations

import shutil
from concurrent.futures import Future
from pathlib import Path

from huggingface_hub import RepoUrl
from huggingface_hub.utils import filter_repo_objects


class LocalHub:
    """Stands in for the Hub API the Trainer calls (create_repo, upload_folder): files land in a folder."""

    def __init__(self, root: Path):
        self.root, self.commits = root, []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kwargs):
        (self.root / repo_id).mkdir(parents=True, exist_ok=True)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, repo_id, folder_path, commit_message=None, run_as_future=False, ignore_patterns=None,
                      allow_patterns=None, path_in_repo=None, **kwargs):  # fmt: skip
        files = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        target = self.root / repo_id / (path_in_repo or "")
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder_path) / name, target / name)
        self.commits.append(commit_message)
        if run_as_future:
            done = Future()
            done.set_result(None)
            return done
        return None
