"""The online datasets the chat tasks read, in one list: SmolTalk, MMLU auxiliary-train and GSM8K. Each
task module names its Hugging Face repo and files (REPO, FILES); data/hub.py only fetches files.
`picochat data download-chat` fetches them; mid, SFT and RL then add what was downloaded.

    picochat data download-chat --datasets gsm8k
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from picochat.common import UserError, picochat_home
from picochat.config import build, option
from picochat.data.hub import download_dataset_file, hub_dir
from picochat.tasks import Task, gsm8k, mmlu_auxiliary, smoltalk
from picochat.tasks.gsm8k import GSM8K
from picochat.tasks.mmlu_auxiliary import MMLUAuxiliary
from picochat.tasks.smoltalk import SmolTalk

# name -> (module with REPO and FILES, maker of its task for (home, split)). GSM8K's test split is an eval
# (tasks/gsm8k.py) and never part of a mixture.
ONLINE_DATASETS = {"smoltalk": (smoltalk, lambda home, split: SmolTalk.from_hub(home, split)),
                   "mmlu_auxiliary": (mmlu_auxiliary, lambda home, split: MMLUAuxiliary.from_hub(home)),
                   "gsm8k": (gsm8k, lambda home, split: GSM8K.from_hub(home))}


def downloaded_tasks(home, split: str, names: tuple[str, ...] = ()) -> list[Task]:
    """The online datasets' tasks (only those `names`, if given) whose split was downloaded. Filtered
    before reading: SmolTalk alone is ~460k conversations."""
    return [make(home, split) for name, (module, make) in ONLINE_DATASETS.items()
            if (not names or name in names) and split in module.FILES
            and (hub_dir(home) / module.REPO / module.FILES[split]).exists()]


@dataclass
class ChatDownloadConfig:
    datasets: str = option(",".join(ONLINE_DATASETS), "comma-separated datasets to fetch")
    home: str = option("", "artifact root (default: $PICOCHAT_HOME or ~/.cache/picochat)")


def run(args) -> list[Path]:
    """`picochat data download-chat`: mid-training and SFT then add these datasets to their mixture."""
    config = build(ChatDownloadConfig, args)
    names = tuple(name.strip() for name in config.datasets.split(",") if name.strip())
    return download_chat_data(picochat_home(config.home or None), names)


def download_chat_data(home: str | Path, names: tuple[str, ...] = tuple(ONLINE_DATASETS),
                       log: Callable[[str], None] = print) -> list[Path]:
    """Fetch every file the chat tasks `names` read (SmolTalk, MMLU auxiliary-train, GSM8K train)."""
    unknown = [name for name in names if name not in ONLINE_DATASETS]
    if unknown:
        raise UserError(f"unknown chat dataset {unknown[0]!r}; choose from {', '.join(ONLINE_DATASETS)}")
    paths = []
    for name in names:
        module = ONLINE_DATASETS[name][0]
        for path in module.FILES.values():
            paths.append(download_dataset_file(module.REPO, path, hub_dir(home)))
            log(f"{name}: {module.REPO}/{path} ({paths[-1].stat().st_size / 1e6:.1f} MB) in {paths[-1]}")
    return paths
