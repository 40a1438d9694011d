"""Settings of tenants (``AGENTQ_TENANTS__*``): several customers on one agentq, kept apart."""

from __future__ import annotations

import re

from pydantic import BaseModel, Field, field_validator

from app.constants import DEFAULT_TENANT, TENANT_PATTERN


class TenantSettings(BaseModel):
    """Tenants: a run, session and memory is a tenant's (the API key's, ``submit(tenant=)``'s
    or ``--tenant``'s; the default tenant otherwise), and no tenant reads another's."""

    labelled: list[str] = Field(
        default_factory=list,
        description="Tenants whose runs and tokens the metrics count under their own `tenant` "
        "label (JSON list); every other tenant is counted as `other`, so label sets stay "
        f"bounded. The default tenant ({DEFAULT_TENANT!r}) is always labelled.",
    )

    @field_validator("labelled")
    @classmethod
    def _tenant_ids(cls, value: list[str]) -> list[str]:
        bad = [t for t in value if re.fullmatch(TENANT_PATTERN, t) is None]
        if bad:
            raise ValueError(
                f"not tenant ids: {bad} (1-64 letters, digits, '.', '_' or '-', starting with "
                "a letter or digit)"
            )
        return value
