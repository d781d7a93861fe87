"""The automation `prefect.yaml` cannot express: tell someone when a ragtune run fails.

Where the notice goes is a setting (``orchestration.failure_block`` or
``orchestration.failure_webhook_url``); with neither, the automation still fires and its firing is
the log (Prefect UI > Automations / Events), so a failure is never silent. The release chain
(ingestion → release-pipeline) is a deployment trigger in ``prefect.yaml`` instead, beside the
deployment it starts.
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from tasks.settings import Settings

FAILURE_AUTOMATION = "ragtune-run-failed"
WEBHOOK_BLOCK = "ragtune-failures"
PROJECT_TAG = "ragtune"  # every deployment in prefect.yaml carries it; runs inherit it

SUBJECT = "ragtune: {{ flow.name }} run {{ flow_run.name }} {{ flow_run.state.name }}"
BODY = ("Flow run {{ flow_run.name }} of {{ flow.name }} ended {{ flow_run.state.name }}: "
        "{{ flow_run.state.message }}\nParameters: {{ flow_run.parameters }}\n{{ flow_run|ui_url }}")


def failure_trigger() -> Any:
    """Every failed or crashed flow run tagged `ragtune`, one firing per run."""
    from prefect.events.schemas.automations import EventTrigger, Posture

    return EventTrigger(
        expect={"prefect.flow-run.Failed", "prefect.flow-run.Crashed"},
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "tag", "prefect.resource.id": f"prefect.tag.{PROJECT_TAG}"},
        for_each={"prefect.resource.id"}, posture=Posture.Reactive, threshold=1,
    )


async def notification_block_id(settings: Settings) -> UUID | None:
    """The configured block, or a Custom Webhook block saved from the URL, or None (log only)."""
    from prefect.blocks.core import Block
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    orchestration = settings.orchestration
    if orchestration.failure_block:
        block: Any = await Block.aload(orchestration.failure_block)
        return block._block_document_id  # set on every loaded block; Prefect has no public accessor
    url = orchestration.failure_webhook_url.get_secret_value()
    if not url:
        return None
    block = CustomWebhookNotificationBlock(
        name=WEBHOOK_BLOCK, url=url, json_data={"subject": "{{subject}}", "text": "{{body}}"})
    return await block.asave(WEBHOOK_BLOCK, overwrite=True)


async def ensure_failure_automation(settings: Settings) -> dict[str, Any]:
    """Create or replace the failure automation; returns its id and where notices go."""
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.events.actions import DoNothing, SendNotification

    block_id = await notification_block_id(settings)
    action = (SendNotification(block_document_id=block_id, subject=SUBJECT, body=BODY)
              if block_id else DoNothing())
    async with get_client() as client:
        for old in await client.read_automations_by_name(FAILURE_AUTOMATION):
            await client.delete_automation(old.id)
    automation = await Automation(
        name=FAILURE_AUTOMATION, description="Notify when any ragtune flow run fails or crashes.",
        trigger=failure_trigger(), actions=[action]).acreate()
    return {"id": str(automation.id), "notifies": action.type, "block_document_id": block_id}
