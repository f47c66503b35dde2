"""Response schemas of the worklist API."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class StudyPublic(BaseModel):
    study_id: str
    priority: float = Field(description="Model priority in [0, 1]; higher is read first")
    probabilities: dict[str, float] = Field(description="The 14 CheXpert findings, in label order")
    model_name: str
    model_version: str
    received_at: datetime
    scored_at: datetime


class WorklistPublic(BaseModel):
    items: list[StudyPublic]
    total: int = Field(description="Studies on the worklist in all")
    limit: int
    offset: int


class HealthPublic(BaseModel):
    status: str
    redis: str


class ErrorPublic(BaseModel):
    detail: str
