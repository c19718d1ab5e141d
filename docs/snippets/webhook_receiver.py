"""How a receiver checks an airflow-hitl webhook: the Standard Webhooks library."""

from __future__ import annotations

from standardwebhooks.webhooks import Webhook, WebhookVerificationError  # pip install standardwebhooks

webhook = Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")  # a plain secret: Webhook(b"my-secret")


def receive(body: bytes, headers: dict[str, str]) -> dict:
    """The webhook's JSON payload, once its signature is checked; refuse anything else."""
    try:
        return webhook.verify(body, headers)  # checks the signature and a 5-minute timestamp window
    except WebhookVerificationError:
        raise PermissionError("not from airflow-hitl") from None
