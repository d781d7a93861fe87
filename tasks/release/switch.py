"""The switch of a promotion as Prefect tasks with rollback hooks: manifest, pointer flip, alias move.

Run inside ``prefect.transactions.transaction()``: when any of them fails, the hooks of the ones that
completed run in reverse (the alias goes back, the previous pointer is put back, the new manifest is
removed), so production is never left half switched. Each task records what its hook needs only
after its own write succeeded, so a hook never undoes another run's work.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.transactions import Transaction, get_transaction

from tasks.release import promotion as steps
from tasks.release.cache import forget
from tasks.release.manifest import ReleaseManifest, flip_pointer, manifest_key, restore_pointer, write_manifest
from tasks.settings import Settings


@task(name="write-release", cache_policy=NO_CACHE)
def write_release(settings: Settings, manifest: ReleaseManifest) -> str:
    digest = write_manifest(steps.store_for(settings), manifest)
    if txn := get_transaction():
        txn.set("settings", settings)
        txn.set("release_id", manifest.release_id)
    return digest


@write_release.on_rollback
def _remove_manifest(txn: Transaction) -> None:
    if (release_id := txn.get("release_id", None)) is not None:
        steps.store_for(txn.get("settings")).delete([manifest_key(release_id)])


@task(name="switch-production", cache_policy=NO_CACHE)
def switch_production(settings: Settings, manifest: ReleaseManifest, digest: str, current: steps.Production) -> None:
    """The one write that switches serving; refused if another run moved production meanwhile."""
    expected = current.pointer.release_id if current.pointer else None
    flip_pointer(steps.store_for(settings), manifest.release_id, digest, "promote", expected=expected)
    forget()
    if txn := get_transaction():
        txn.set("settings", settings)
        txn.set("previous", current)


@switch_production.on_rollback
def _restore_pointer(txn: Transaction) -> None:
    if (previous := txn.get("previous", None)) is not None:
        restore_pointer(steps.store_for(txn.get("settings")), previous.pointer)
        forget()


@task(name="switch-alias", cache_policy=NO_CACHE)
def switch_alias(settings: Settings, manifest: ReleaseManifest) -> None:
    previous = steps.move_alias(settings, manifest)
    if (txn := get_transaction()) and manifest.index:
        txn.set("settings", settings)
        txn.set("alias", manifest.index.alias)
        txn.set("previous_target", previous)


@switch_alias.on_rollback
def _restore_alias(txn: Transaction) -> None:
    steps.restore_alias(txn.get("settings", None), txn.get("alias", None), txn.get("previous_target", None))
