"""A re-save never destroys the previous unit or the user's files: the new unit is staged and swapped in.

The one writer (`units.save_interventions`) writes the new unit complete (layer files, metadata,
resume states, manifest) into a staging directory beside the target, `.<name>.staging-<pid>`,
and only then swaps it in:

- Linux: one `renameat2(RENAME_EXCHANGE)` exchanges the staging directory with the target, so at
  every instant the target path is either the old complete unit or the new one. The user's
  other files in the target (a README, a notes file) are hard-linked into the staging directory
  first, so they are in both; the lock file too.
- elsewhere (or a file system without the exchange, or a target holding a sub-directory of the
  user's): the old unit's files are hard-linked into `.<name>.previous-<pid>` (a complete,
  loadable copy), then the new files are renamed in one by one and the manifest last. A crash in
  that window leaves a target that is refused (its manifest's SHA-256 no longer match) and the
  old unit whole in `.<name>.previous-<pid>`.

Only files this package wrote may be replaced: the files the previous complete manifest lists
(layer files, metadata, resume states), the manifest and the lock. Any other file under a name
the new unit uses or a loader reads (`layer_<L>.pt`, `train_state_layer_<L>.json`,
`metadata.json`, `manifest.json`) makes the save refuse, naming it, unless it holds exactly the
bytes the save would write. Other files are left alone. See docs/storage.md.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterable, Optional


logger = logging.getLogger(__name__)

RESERVED_NAME = re.compile(r"^(layer_.*\.pt|train_state_layer_.*\.json|metadata\.json|manifest\.json)$")
"""Names a loader reads: a file under one of them that the package did not write is never replaced."""

_PACKAGE_DOT_FILE = re.compile(r"^(\.easyedit_split\.lock|\..*\.tmp)$")
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV, errno.EPERM}


def staging_dir(directory: Path, kind: str = "staging", pid: Optional[int] = None) -> Path:
    """`.<name>.<kind>-<pid>` beside `directory` (same file system, so renames are atomic)."""
    return directory.parent / f".{directory.name}.{kind}-{os.getpid() if pid is None else pid}"


def exchange(a: Path, b: Path) -> None:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); OSError where unsupported."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOSYS, "RENAME_EXCHANGE needs Linux")
    libc = ctypes.CDLL(None, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 not in this C library")
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a))


def replace(source: Path, target: Path) -> None:
    """`os.replace`, one name per call (the tests interrupt a swap between two of them)."""
    os.replace(source, target)


def foreign_reserved(directory: Path, ours: Iterable[str]) -> list[str]:
    """Files in `directory` under a name the unit uses or a loader reads, that the package did not write."""
    ours = set(ours)
    if not directory.is_dir():
        return []
    return sorted(path.name for path in directory.iterdir()
                  if RESERVED_NAME.match(path.name) and path.name not in ours and not path.name.startswith("."))


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samestat(os.lstat(a), os.lstat(b))
    except OSError:
        return False


def remove_unit_copy(copy: Path, directory: Path, ours: Iterable[str]) -> None:
    """Delete a staging/previous directory: only the package's files and links of files still in `directory`.

    Anything else (a file the user created in the target during the swap) stays, and the copy is
    kept with a warning naming it.
    """
    ours = set(ours)
    kept = []
    for path in copy.iterdir():
        if path.name in ours or RESERVED_NAME.match(path.name) or _PACKAGE_DOT_FILE.match(path.name) \
                or _same_file(path, directory / path.name):
            if path.is_dir() and not path.is_symlink():
                kept.append(path.name)
                continue
            path.unlink(missing_ok=True)
        else:
            kept.append(path.name)
    if kept:
        logger.warning("%s: kept, it holds files that are not the package's and not in %s: %s; move them back "
                       "or delete it", copy, directory, kept)
        return
    copy.rmdir()


def remove_stale_copies(directory: Path, alive: Callable[[int], bool]) -> None:
    """Staging/previous directories beside `directory` left by writers that no longer run."""
    pattern = re.compile(rf"^\.{re.escape(directory.name)}\.(staging|previous)-(\d+)$")
    if not directory.parent.is_dir():
        return
    for path in directory.parent.iterdir():
        match = pattern.match(path.name)
        if match and path.is_dir() and not alive(int(match.group(2))):
            logger.info("%s: removing what an interrupted save left", path)
            remove_unit_copy(path, directory, ())


def link_into(source: Path, target: Path) -> None:
    """Hard-link `source` at `target` (a copy where links are not possible)."""
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def swap_in(directory: Path, stage: Path, old_ours: Iterable[str], new_names: Iterable[str]) -> None:
    """Make the complete unit in `stage` the content of `directory`; the user's other files stay in `directory`.

    `old_ours`: the package's files in `directory` now (replaced or dropped); `new_names`: the
    files of the new unit in `stage` (the manifest among them).
    """
    old_ours, new_names = set(old_ours), set(new_names)
    others = [path for path in directory.iterdir() if path.name not in old_ours]
    if all(path.is_file() or path.is_symlink() for path in others):
        from .units import LOCK_FILE

        lock = [directory / LOCK_FILE] if (directory / LOCK_FILE).exists() else []
        for path in others + lock:
            if not (stage / path.name).exists():
                link_into(path, stage / path.name)
        try:
            exchange(stage, directory)
        except OSError as error:
            if error.errno not in _NO_EXCHANGE:
                raise
            logger.info("%s: the atomic directory exchange is not available (%s); swapping file by file", directory, error)
            for path in others:
                if _same_file(path, stage / path.name):
                    (stage / path.name).unlink()
        else:
            remove_unit_copy(stage, directory, old_ours | new_names)  # now the old unit
            return
    _swap_file_by_file(directory, stage, old_ours, new_names)


def _swap_file_by_file(directory: Path, stage: Path, old_ours: set, new_names: set) -> None:
    """The portable swap: the old unit kept whole in `.<name>.previous-<pid>`, new files in, the manifest last."""
    from .units import LOCK_FILE, MANIFEST_FILE

    previous = staging_dir(directory, "previous")
    previous.mkdir(exist_ok=True)
    for name in old_ours - {LOCK_FILE}:
        if (directory / name).exists():
            link_into(directory / name, previous / name)
    for name in sorted(new_names - {MANIFEST_FILE}):
        replace(stage / name, directory / name)
    for name in sorted(old_ours - new_names - {LOCK_FILE, MANIFEST_FILE}):
        (directory / name).unlink(missing_ok=True)
    replace(stage / MANIFEST_FILE, directory / MANIFEST_FILE)
    remove_unit_copy(previous, directory, old_ours)
    remove_unit_copy(stage, directory, new_names)


def no_space(error: BaseException, staging: Path) -> bool:
    """Whether a failed write ran out of disk: ENOSPC/EDQUOT, or torch's bare writer error on a full disk."""
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if isinstance(error, RuntimeError) and ("write" in str(error) or "No space" in str(error)):
        if "No space" in str(error):
            return True
        try:
            return shutil.disk_usage(staging.parent).free < (1 << 20)
        except OSError:
            return False
    return False
