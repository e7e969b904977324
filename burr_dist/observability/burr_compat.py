"""Burr trackers (``ApplicationBuilder.with_tracker(...)``) in apps the worker builds.

Burr 0.43 marks every app it *loaded* state for as forked and passes
``ParentPointer(app_id=None)`` to ``post_application_create``, fork or not. ``LocalTrackingClient``
turns that into a pydantic ``PointerModel``, which requires an app id: the build fails with a
``ValidationError`` whenever the app's tracking directory has no ``graph.json`` yet, which is every
resume on another machine (or with another ``storage_dir``). The worker builds from a load on
every claim after the first, so it passes no parent pointer when the pointer names no app (a resume
is not a fork); a real fork's pointer is passed as Burr made it.

What a local tracker then records: each machine's ``~/.burr/{project}/{app_id}/`` holds the steps
that ran there (several workers on one host share it). The fleet-wide record is Redis (``history``).
"""

from __future__ import annotations

from typing import Any

_PATCHED = "_burr_dist_resume_pointer"


def resume_without_parent(builder: Any) -> None:
    """Make the builder's tracker accept a resume (see the module doc); idempotent."""
    tracker = getattr(builder, "tracker", None)
    original = getattr(tracker, "post_application_create", None)
    if tracker is None or original is None or getattr(tracker, _PATCHED, False):
        return

    def post_application_create(*, parent_pointer: Any = None, **kwargs: Any) -> Any:
        if parent_pointer is not None and getattr(parent_pointer, "app_id", None) is None:
            parent_pointer = None
        return original(parent_pointer=parent_pointer, **kwargs)

    # An instance attribute: Burr's hook dispatch (isinstance on the hook classes) is unchanged.
    tracker.post_application_create = post_application_create
    setattr(tracker, _PATCHED, True)
