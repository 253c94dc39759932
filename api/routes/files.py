"""/v1/files: upload images and manifests (deduplicated by content), look them up."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Path, Query, Response, UploadFile
from fastapi import Response as FastAPIResponse

from api.deps import DatabaseUrl, Owner, SettingsDep, StorageDep
from api.downloads import object_response
from api.errors import HttpError, Responses, error_responses
from api.metrics import MetricsDep
from api.schemas import Deleted, FilePublic, FilesPublic
from api.views import file_public
from janus_batch import files

router = APIRouter(prefix="/v1/files", tags=["files"])

ERRORS = error_responses(401, 404, 413, 422, 503)
QUOTA = error_responses(429)
DUPLICATE: Responses = {
    200: {"model": FilePublic, "description": "These bytes were uploaded before: that file."}
}


@router.post(
    "",
    status_code=201,
    response_model=FilePublic,
    responses={**DUPLICATE, **ERRORS, **QUOTA},
    response_description="The new file.",
)
def upload_file(
    file: UploadFile,
    purpose: Annotated[Literal["image", "manifest", "dataset"], Form()],
    response: Response,
    settings: SettingsDep,
    owner: Owner,
    storage: StorageDep,
    metrics: MetricsDep,
) -> FilePublic:
    """Upload an image, a JSONL manifest or a dataset file (a CSV, a WebDataset shard)
    (multipart: `file`, `purpose`). The same bytes uploaded again return the existing file
    (200). A manifest is checked line by line. Over the key's upload bytes per day: 429 with
    Retry-After."""
    try:
        row, created = files.save_upload(
            settings.resolved_database_url(),
            storage,
            owner=owner,
            stream=file.file,
            filename=file.filename,
            purpose=purpose,
            max_bytes=settings.max_upload_bytes,
            settings=settings,
        )
    finally:
        file.file.close()
    if not created:
        response.status_code = 200
    if metrics is not None:
        metrics.uploads.labels(purpose, "created" if created else "duplicate").inc()
        metrics.upload_bytes.labels(purpose).inc(row.bytes)
    return file_public(row)


@router.get("", response_model=FilesPublic, responses=ERRORS)
def list_files(
    db: DatabaseUrl,
    owner: Owner,
    sha256: Annotated[str, Query(pattern=r"^[0-9a-f]{64}$", description="Hex SHA-256.")],
    purpose: Literal["image", "manifest", "dataset"] | None = None,
) -> FilesPublic:
    """Your uploaded files with these bytes (check before uploading; empty if none)."""
    return FilesPublic(
        data=[file_public(r) for r in files.find_by_sha256(db, owner, sha256, purpose)]
    )


@router.get("/{file_id}", response_model=FilePublic, responses=ERRORS)
def get_file(
    file_id: Annotated[str, Path(max_length=64)], db: DatabaseUrl, owner: Owner
) -> FilePublic:
    """One uploaded file."""
    row = files.get_file(db, owner, file_id)
    if row is None:
        raise HttpError(404, f"no file {file_id!r}", "file_id")
    return file_public(row)


@router.delete("/{file_id}", response_model=Deleted, responses=ERRORS)
def delete_file(
    file_id: Annotated[str, Path(max_length=64)], db: DatabaseUrl, owner: Owner, storage: StorageDep
) -> Deleted:
    """Delete one of your uploads (its bytes too, unless another of your uploads holds the
    same bytes). Items that still name it fail when a worker fetches them."""
    removed = files.delete_file(db, storage, owner, file_id)
    if removed is None:
        raise HttpError(404, f"no file {file_id!r}", "file_id")
    return Deleted(id=file_id, object="file.deleted", objects_removed=removed)


@router.get("/{file_id}/content", responses={200: {"content": {"*/*": {}}}, **ERRORS})
def get_file_content(
    file_id: Annotated[str, Path(max_length=64)], db: DatabaseUrl, owner: Owner, storage: StorageDep
) -> FastAPIResponse:
    """The bytes of one of your uploaded files (e.g. to pair captions with their images)."""
    row = files.get_file(db, owner, file_id)
    if row is None:
        raise HttpError(404, f"no file {file_id!r}", "file_id")
    return object_response(
        storage,
        row.storage_key,
        missing=f"file {file_id!r} is gone from storage",
        field="file_id",
        media_type=row.content_type,
        filename=row.filename,
        written_here=False,  # the uploader's bytes, never decoded here: a download
    )
