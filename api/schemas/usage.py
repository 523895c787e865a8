"""What a tenant stores, against its quota."""

from pydantic import BaseModel, Field


class UsagePublic(BaseModel):
    stored_bytes: int = Field(description="Datasets, models' weights and jobs' folders together.")
    dataset_bytes: int
    model_bytes: int = Field(description="Start weights uploaded for models.")
    job_bytes: int = Field(
        description="Jobs' checkpoint files (.pt, .weights and others), as recorded when written."
    )
    max_bytes: int = Field(
        description="The quota, AETRAIN_MAX_TENANT_BYTES; uploads and "
        "generated datasets that would pass it are refused with 413."
    )
