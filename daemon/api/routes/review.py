"""The API under the review station (issue 13), in OpenAPI like the rest; the /ui/ app uses
exactly these routes, with its session cookie and CSRF token instead of a Bearer key.

- ``GET /frames/{frame_id}/image``: the frame as captured (JPEG, at most
  ``review.image_max_side``), watched-folder and pushed frames alike (``daemon.api.images``).
- ``GET /frames/{frame_id}/cells/{index}/crop`` and ``.../cam``: one cell (PNG), and the same
  crop with the classifier's class-activation map over it.
- ``PUT /specimens/{specimen_id}/cells/{frame_id}/{index}`` ``{"class": ...}``: a reviewer's
  class for a cell (role ``review``: reviewer or admin); the same class as the model's is an
  acceptance. Audited with before/after.
- ``POST /specimens/{specimen_id}/verify``: sign the complete specimen; with
  ``review.signatures`` signatures from distinct keys it is verified and its reports turn
  final with the reviewed counts. Audited with the counts before/after.
"""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from daemon.api import examples as ex
from daemon.api.auth import Caller, client_address, require
from daemon.api.images import FrameImages, NoImage, bounded, jpeg, png
from daemon.domain.classes import CELL_OUTCOMES
from daemon.domain.ids import NAME_RULE, valid_frame_id, valid_specimen_id
from daemon.domain.results import FrameResult
from daemon.domain.specimens import Specimen
from daemon.store import audit
from daemon.store.review import ReviewError, ReviewStore

router = APIRouter()

FrameId = Annotated[str, Path(description="a frame id (1-64 of [A-Za-z0-9_-])")]
CellIndex = Annotated[int, Path(ge=0, le=100_000, description="the cell's index in the result")]
NOT_FOUND = ex.error("no such frame or cell, or its original is not available",
                     "frame 3f9a1c2b7d4e5f60 has 1 cell(s)")
PNG = {200: ex.image("image/png", "PNG"), 400: ex.BAD_FRAME_ID, 404: NOT_FOUND}


class Reclassify(BaseModel):
    class_: str = Field(alias="class", description=f"one of {', '.join(CELL_OUTCOMES)}")

    model_config = {"populate_by_name": True,
                    "json_schema_extra": {"examples": [{"class": "benign"}]}}


class Reclassified(BaseModel):
    specimen_id: str
    frame_id: str
    index: int
    before: str = Field(description="the cell's class before this change")
    after: str
    model: str = Field(description="the models' call")


class Verification(BaseModel):
    outcome: str = Field(description="verified, or signed (more signatures needed)")
    specimen: Specimen


def review_store(request: Request) -> ReviewStore:
    state = request.app.state
    if getattr(state, "review", None) is None:
        state.review = ReviewStore(state.client)
    return state.review


def frame_images(request: Request) -> FrameImages:
    state = request.app.state
    if getattr(state, "images", None) is None:
        state.images = FrameImages(state.settings)
    return state.images


Reviews = Annotated[ReviewStore, Depends(review_store)]
Images = Annotated[FrameImages, Depends(frame_images)]


def get_result(request: Request, frame_id: str) -> FrameResult:
    if not valid_frame_id(frame_id):
        raise HTTPException(status_code=400, detail="frame_id must be 1-64 of [A-Za-z0-9_-]")
    result = request.app.state.store.get(frame_id)
    if result is None:
        raise HTTPException(status_code=404, detail=f"no result for frame {frame_id}")
    return result


def _cell(result: FrameResult, index: int) -> None:
    if index >= len(result.cells):
        raise HTTPException(status_code=404,
                            detail=f"frame {result.frame_id} has {len(result.cells)} cell(s)")


def _image(call) -> bytes:
    try:
        return call()
    except NoImage as exc:
        raise HTTPException(status_code=404, detail=str(exc)) from exc


@router.get("/frames/{frame_id}/image", tags=["review"], response_class=Response,
            responses={200: {**ex.image("image/jpeg", "JPEG"), "headers": {
                "X-Image-Width": {"description": "width as captured (cell boxes are in these "
                                  "pixels)", "schema": {"type": "integer"}},
                "X-Image-Height": {"description": "height as captured",
                                   "schema": {"type": "integer"}}}},
                       400: ex.BAD_FRAME_ID, 404: NOT_FOUND},
            dependencies=[Depends(require("read", "frame.image"))])
def frame_image(request: Request, images: Images, frame_id: FrameId) -> Response:
    result = get_result(request, frame_id)
    original = _image(lambda: images.original(result))
    body = _image(lambda: jpeg(bounded(original, request.app.state.settings.review.image_max_side)))
    height, width = original.shape[:2]
    # The size as captured: cell boxes are in these pixels even when the JPEG is smaller.
    return Response(body, media_type="image/jpeg",
                    headers={"Cache-Control": "private, max-age=3600",
                             "X-Image-Width": str(width), "X-Image-Height": str(height)})


@router.get("/frames/{frame_id}/cells/{index}/crop", tags=["review"], response_class=Response,
            responses=PNG, dependencies=[Depends(require("read"))])
def cell_crop(request: Request, images: Images, frame_id: FrameId, index: CellIndex) -> Response:
    result = get_result(request, frame_id)
    _cell(result, index)
    body = _image(lambda: png(images.crop(result, index)))
    return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/frames/{frame_id}/cells/{index}/cam", tags=["review"], response_class=Response,
            responses=PNG, dependencies=[Depends(require("read"))])
def cell_cam(
    request: Request, images: Images, frame_id: FrameId, index: CellIndex,
    class_: Annotated[str | None, Query(alias="class", description="class whose map to show "
                                        "(default: the models' call)")] = None,
) -> Response:
    result = get_result(request, frame_id)
    _cell(result, index)
    if class_ is not None and class_ not in CELL_OUTCOMES:
        raise HTTPException(status_code=400, detail=f"class must be one of {CELL_OUTCOMES}")
    body = _image(lambda: png(images.cam(result, index, class_)))
    return Response(body, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.put("/specimens/{specimen_id}/cells/{frame_id}/{index}", tags=["review"],
            response_model=Reclassified,
            responses={200: ex.ok({"specimen_id": "ACC-1001", "frame_id": "3f9a1c2b7d4e5f60",
                                   "index": 0, "before": "pre_b", "after": "benign",
                                   "model": "pre_b"}),
                       400: ex.BAD_SPECIMEN_ID,
                       404: ex.error("no such specimen, frame or cell",
                                     "frame 3f9a1c2b7d4e5f60 is not in specimen ACC-1002"),
                       409: ex.error("the specimen is verified: no more changes",
                                     "the specimen is verified")})
def reclassify(
    request: Request, reviews: Reviews, specimen_id: str, frame_id: FrameId, index: CellIndex,
    body: Reclassify, caller: Annotated[Caller, Depends(require("review"))],
) -> Reclassified:
    if not valid_specimen_id(specimen_id):
        raise HTTPException(status_code=400, detail=f"specimen_id must be {NAME_RULE}")
    if body.class_ not in CELL_OUTCOMES:
        raise HTTPException(status_code=422,
                            detail=f"class must be one of {', '.join(CELL_OUTCOMES)}")
    result = get_result(request, frame_id)
    if result.specimen_id != specimen_id:
        raise HTTPException(status_code=404,
                            detail=f"frame {frame_id} is not in specimen {specimen_id}")
    _cell(result, index)
    model = result.cells[index].class_
    try:
        before = reviews.reclassify(specimen_id, frame_id, index, body.class_, model, caller.name)
    except ReviewError as exc:
        if exc.code == "verified":
            raise HTTPException(status_code=409, detail="the specimen is verified") from exc
        raise HTTPException(status_code=404, detail=f"no specimen {specimen_id}") from exc
    audit.record(request.app.state.client, caller.name, caller.role,
                 "cell.accept" if body.class_ == before else "cell.reclassify",
                 specimen_id=specimen_id, frame_id=frame_id,
                 detail=json.dumps({"cell": index, "before": before, "after": body.class_,
                                    "model": model}),
                 address=client_address(request))
    return Reclassified(specimen_id=specimen_id, frame_id=frame_id, index=index,
                        before=before, after=body.class_, model=model)


def _counts(specimen: Specimen) -> str:
    cells = ",".join(f"{c}:{n}" for c, n in specimen.cells.items())
    return f"{specimen.result_status}{{{cells},unidentified:{specimen.unidentified_cells}}}"


@router.post("/specimens/{specimen_id}/verify", tags=["review"], response_model=Verification,
             responses={200: ex.ok({"outcome": "verified", "specimen": {
                 **ex.SPECIMEN, "result_status": "final", "review_status": "verified",
                 "verified_by": "dr-lee", "verified_at": ex.AT + 900,
                 "signatures": [{"by": "dr-lee", "role": "reviewer", "at": ex.AT + 900}]}}),
                        400: ex.BAD_SPECIMEN_ID,
                        404: ex.error("no such specimen", "no specimen ACC-1001"),
                        409: ex.error("not complete yet, already verified, or this key signed "
                                      "already", "the specimen is not complete yet: complete "
                                      "it first")})
def verify(
    request: Request, reviews: Reviews, specimen_id: str,
    caller: Annotated[Caller, Depends(require("review"))],
) -> Verification:
    from daemon.api.routes.specimens import get_specimens

    if not valid_specimen_id(specimen_id):
        raise HTTPException(status_code=400, detail=f"specimen_id must be {NAME_RULE}")
    specimens = get_specimens(request)
    before = specimens.get(specimen_id)
    if before is None:
        raise HTTPException(status_code=404, detail=f"no specimen {specimen_id}")
    settings = request.app.state.settings
    try:
        outcome = reviews.sign(specimen_id, caller.name, caller.role, settings.review.signatures,
                               settings.lis.mllp is not None)
    except ReviewError as exc:
        detail = {"open": "the specimen is not complete yet: complete it first",
                  "already": "the specimen is verified already",
                  "stale": "cells kept changing while signing: sign again",
                  "same_signer": f"{caller.name!r} has signed already: a second person must "
                                 "sign", "missing": f"no specimen {specimen_id}"}[exc.code]
        raise HTTPException(status_code=404 if exc.code == "missing" else 409,
                            detail=detail) from exc
    after = specimens.get(specimen_id)
    audit.record(request.app.state.client, caller.name, caller.role,
                 "specimen.verify" if outcome == "verified" else "specimen.sign",
                 specimen_id=specimen_id,
                 detail=f"before={_counts(before)} after={_counts(after)}",
                 address=client_address(request))
    return Verification(outcome=outcome, specimen=after)
