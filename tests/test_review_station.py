"""The review station's API and sessions (issue 13), over real HTTP against a real Redis:
every new route refuses no credentials, a wrong key, a read key changing anything, and a
session without (or with the wrong) CSRF token; reclassification and sign-off reach the audit
trail, FHIR and HL7; images come from the archive for watched-folder and pushed frames."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import redis
from fhir.resources.R4B.diagnosticreport import DiagnosticReport

from daemon.api.app import create_app
from daemon.api.auth import hash_key
from daemon.lis.hl7 import parse
from daemon.store.specimens import SpecimenStore
from tests.conftest import serve_http, synthetic_jpeg
from tests.review_data import synthetic_specimen

KEYS = {
    "adm": ("admin", "lks_admin-key-for-tests-000000000000000000000"),
    "rev": ("reviewer", "lks_reviewer-key-for-tests-0000000000000000000"),
    "rev2": ("reviewer", "lks_second-reviewer-key-for-tests-000000000000"),
    "reader": ("read", "lks_read-key-for-tests-00000000000000000000000"),
    "rig": ("ingest", "lks_ingest-key-for-tests-000000000000000000000"),
}
WRONG = "lks_not-a-configured-key-00000000000000000000000"


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][1]}"}


@pytest.fixture
def settings(make_settings):
    keys = [{"name": n, "role": r, "sha256": hash_key(k)} for n, (r, k) in KEYS.items()]
    return make_settings(auth={"keys": keys})


def login(api, name: str) -> str:
    """Sign in at /ui/login like a browser; returns the CSRF token of the session."""
    response = api.post("/ui/login", data={"api_key": KEYS[name][1]})
    assert response.status_code == 303, response.text
    cookie = response.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert "Max-Age=" in cookie and "Path=/" in cookie
    page = api.get("/ui/specimens")
    assert page.status_code == 200
    token = page.text.split('name="csrf-token" content="')[1].split('"')[0]
    return token


def test_every_new_route_refuses_missing_wrong_and_insufficient_credentials(
    settings, redis_client: redis.Redis
) -> None:
    frames = synthetic_specimen(redis_client, settings, "AUTH-1", frames=1, complete=True)
    frame = frames[0].frame_id
    reads = [f"/frames/{frame}/image", f"/frames/{frame}/cells/0/crop",
             f"/frames/{frame}/cells/0/cam"]
    changes = [("PUT", f"/specimens/AUTH-1/cells/{frame}/0", {"class": "pro_b"}),
               ("POST", "/specimens/AUTH-1/verify", None)]
    pages = ["/ui/specimens", "/ui/specimens/AUTH-1", f"/ui/frames/{frame}", "/ui/rigs"]
    with serve_http(create_app(settings, redis_client)) as api:
        for url in reads:
            assert api.get(url).status_code == 401, url
            assert api.get(url, headers={"Authorization": f"Bearer {WRONG}"}).status_code == 401
            assert api.get(url, headers=bearer("rig")).status_code == 403, url  # ingest
            assert api.get(url, headers=bearer("reader")).status_code == 200, url
        for method, url, body in changes:
            assert api.request(method, url, json=body).status_code == 401, url
            wrong = {"Authorization": f"Bearer {WRONG}"}
            assert api.request(method, url, json=body, headers=wrong).status_code == 401
            for name in ("reader", "rig"):
                response = api.request(method, url, json=body, headers=bearer(name))
                assert response.status_code == 403, (url, name)
        for url in pages:
            response = api.get(url)
            assert response.status_code == 303 and response.headers["location"].startswith(
                "/ui/login?next="), url
            api.cookies.set("lks_session", "forged.cookie")
            assert api.get(url).status_code == 303, url
            api.cookies.clear()

        # A wrong key at the login form: 401 and no cookie; an ingest key: 403.
        response = api.post("/ui/login", data={"api_key": WRONG})
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert api.post("/ui/login", data={"api_key": KEYS["rig"][1]}).status_code == 403
        # A sign-in from another site is refused.
        response = api.post("/ui/login", data={"api_key": KEYS["rev"][1]},
                            headers={"Origin": "http://evil.example"})
        assert response.status_code == 403 and "set-cookie" not in response.headers

        # A read key's session looks but changes nothing, even with its CSRF token.
        token = login(api, "reader")
        for url in reads + pages:
            assert api.get(url).status_code == 200, url
        for method, url, body in changes:
            response = api.request(method, url, json=body, headers={"X-CSRF-Token": token})
            assert response.status_code == 403, url
        api.cookies.clear()

        # A reviewer's session: no CSRF token, a wrong one, or a foreign Origin is 403.
        token = login(api, "rev")
        for method, url, body in changes:
            assert api.request(method, url, json=body).status_code == 403, url
            response = api.request(method, url, json=body, headers={"X-CSRF-Token": "nope"})
            assert response.status_code == 403, url
            response = api.request(method, url, json=body, headers={
                "X-CSRF-Token": token, "Origin": "http://evil.example"})
            assert response.status_code == 403, url
        put = api.put(f"/specimens/AUTH-1/cells/{frame}/0", json={"class": "pro_b"},
                      headers={"X-CSRF-Token": token})
        assert put.status_code == 200 and put.json()["after"] == "pro_b"
        # A tampered cookie is no session.
        value = api.cookies.get("lks_session")
        api.cookies.set("lks_session", value[:-3] + ("AAA" if not value.endswith("AAA") else "BBB"))
        assert api.get(f"/frames/{frame}/image").status_code == 401
        api.cookies.set("lks_session", value)
        # Logout needs the CSRF token too, then the session is gone.
        assert api.post("/ui/logout").status_code == 403
        response = api.post("/ui/logout", data={"csrf_token": token})
        assert response.status_code == 303 and 'lks_session=""' in response.headers["set-cookie"]
        api.cookies.clear()
        assert api.get("/ui/specimens").status_code == 303

        # Refusals are counted and audited like the API's (issue 14): a bad session cookie
        # and an unknown key at the sign-in form included.
        metrics = api.get("/metrics").text
        for reason in ("missing", "unknown_key", "session", "ui_login"):
            found = re.search(
                rf'^leukoscope_auth_failures_total{{reason="{reason}"}} (\S+)$', metrics, re.M)
            assert found and float(found.group(1)) >= 1, reason
        trail = api.get("/audit?limit=1000", headers=bearer("adm")).json()["items"]
        assert any(e["action"] == "auth.failed" and e["detail"].startswith("session ")
                   for e in trail)
        assert any(e["action"] == "ui.login_failed" for e in trail)


def test_removing_a_key_ends_its_sessions(make_settings, redis_client: redis.Redis) -> None:
    keys = [{"name": "rev", "role": "reviewer", "sha256": hash_key(KEYS["rev"][1])}]
    settings = make_settings(auth={"keys": keys})
    with serve_http(create_app(settings, redis_client)) as api:
        login(api, "rev")
        cookie = api.cookies.get("lks_session")
    later = make_settings(auth={"keys": [{"name": "rev", "role": "reviewer",
                                          "sha256": hash_key(KEYS["rev2"][1])}]})
    with serve_http(create_app(later, redis_client)) as api:
        api.cookies.set("lks_session", cookie)
        assert api.get("/ui/specimens").status_code == 303
        assert api.get("/specimens").status_code == 401


def test_reclassify_and_sign_reach_audit_fhir_and_hl7(settings, redis_client) -> None:
    frames = synthetic_specimen(redis_client, settings, "SIGN-1", frames=2, cells_per_frame=3)
    frame = frames[0].frame_id
    model = frames[0].cells[1].class_
    target = "pro_b" if model != "pro_b" else "benign"
    with serve_http(create_app(settings, redis_client)) as api:
        url = f"/specimens/SIGN-1/cells/{frame}/1"
        response = api.put(url, json={"class": target}, headers=bearer("rev"))
        assert response.json() == {"specimen_id": "SIGN-1", "frame_id": frame, "index": 1,
                                   "before": model, "after": target, "model": model}
        again = api.put(url, json={"class": "unidentified"}, headers=bearer("rev")).json()
        assert again["before"] == target and again["after"] == "unidentified"
        assert api.put(url, json={"class": "monocyte"}, headers=bearer("rev")).status_code == 422
        assert api.put(f"/specimens/SIGN-1/cells/{frame}/99", json={"class": "pro_b"},
                       headers=bearer("rev")).status_code == 404
        assert api.put(f"/specimens/OTHER/cells/{frame}/0", json={"class": "pro_b"},
                       headers=bearer("rev")).status_code == 404
        # Not complete yet: no sign-off; reports preliminary and say so.
        assert api.post("/specimens/SIGN-1/verify", headers=bearer("rev")).status_code == 409
        SpecimenStore(redis_client).complete("SIGN-1", "api")
        report = api.get("/specimens/SIGN-1/fhir", headers=bearer("reader")).json()
        assert report["status"] == "preliminary" and "resultsInterpreter" not in report
        assert "not yet verified" in report["conclusion"] or "Not verified" in report["conclusion"]
        before = SpecimenStore(redis_client).get("SIGN-1")

        response = api.post("/specimens/SIGN-1/verify", headers=bearer("rev"))
        assert response.status_code == 200 and response.json()["outcome"] == "verified"
        spec = response.json()["specimen"]
        assert spec["result_status"] == "final" and spec["verified_by"] == "rev"
        assert spec["review_status"] == "verified" and spec["reclassified_cells"] == 1
        assert spec["unidentified_cells"] == before.unidentified_cells + (model != "unidentified")
        assert spec["model_cells"] == before.cells
        assert sum(spec["cells"].values()) == spec["cells_classified"]
        assert api.post("/specimens/SIGN-1/verify", headers=bearer("adm")).status_code == 409
        assert api.put(url, json={"class": "benign"}, headers=bearer("rev")).status_code == 409

        fhir = api.get("/specimens/SIGN-1/fhir", headers=bearer("reader")).json()
        parsed = DiagnosticReport.model_validate(fhir)
        assert parsed.status == "final"
        assert fhir["resultsInterpreter"][0] == {"reference": "#verifier", "display": "rev"}
        assert any(r["resourceType"] == "Practitioner" for r in fhir["contained"])
        assert "Verified by rev" in fhir["conclusion"]
        counts = {r["id"]: r.get("valueInteger") for r in fhir["contained"]
                  if r["resourceType"] == "Observation"}
        assert counts["cells-identified"] == spec["cells_classified"]
        assert counts["cells-unidentified"] == spec["unidentified_cells"]  # still reported
        assert counts["cells-needing-review"] == 0 and counts["frames-needing-review"] == 0
        assert sum(counts[f"count-{c.replace('_', '-')}"] for c in spec["cells"]) \
            == spec["cells_classified"]  # the verified counts, under issue 14's codes
        hl7 = api.get("/specimens/SIGN-1/hl7", headers=bearer("reader")).text
        assert parse(hl7).validate()
        obr = next(s for s in hl7.split("\r") if s.startswith("OBR")).split("|")
        assert obr[25] == "F" and obr[32] == "rev"
        obx = [s.split("|") for s in hl7.split("\r") if s.startswith("OBX")]
        assert all(f[11] == "F" and f[16] == "rev" for f in obx)

        trail = api.get("/audit?limit=1000", headers=bearer("adm")).json()["items"]
        changes = [e for e in trail if e["action"] in ("cell.reclassify", "cell.accept")]
        assert [json.loads(e["detail"])["after"] for e in changes] == [target, "unidentified"]
        assert json.loads(changes[0]["detail"])["before"] == model
        assert changes[0]["key"] == "rev" and changes[0]["frame_id"] == frame
        signed = [e for e in trail if e["action"] == "specimen.verify"]
        assert len(signed) == 1 and signed[0]["key"] == "rev"
        assert "before=preliminary" in signed[0]["detail"] and "after=final" in signed[0]["detail"]


def test_two_person_sign_off(make_settings, redis_client: redis.Redis) -> None:
    keys = [{"name": n, "role": r, "sha256": hash_key(k)} for n, (r, k) in KEYS.items()]
    settings = make_settings(auth={"keys": keys}, review={"signatures": 2})
    synthetic_specimen(redis_client, settings, "TWO-1", frames=1, complete=True)
    with serve_http(create_app(settings, redis_client)) as api:
        first = api.post("/specimens/TWO-1/verify", headers=bearer("rev")).json()
        assert first["outcome"] == "signed"
        assert first["specimen"]["result_status"] == "preliminary"
        assert first["specimen"]["review_status"] == "signed"
        assert api.post("/specimens/TWO-1/verify", headers=bearer("rev")).status_code == 409
        second = api.post("/specimens/TWO-1/verify", headers=bearer("rev2")).json()
        assert second["outcome"] == "verified"
        assert second["specimen"]["verified_by"] == "rev2"
        assert [s["by"] for s in second["specimen"]["signatures"]] == ["rev", "rev2"]
        hl7 = api.get("/specimens/TWO-1/hl7", headers=bearer("reader")).text
        assert "also signed by rev" in hl7


def test_images_crops_and_cams(settings, redis_client: redis.Redis) -> None:
    frames = synthetic_specimen(redis_client, settings, "IMG-1", frames=1)
    frame = frames[0].frame_id
    with serve_http(create_app(settings, redis_client)) as api:
        image = api.get(f"/frames/{frame}/image", headers=bearer("reader"))
        assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
        decoded = cv2.imdecode(np.frombuffer(image.content, np.uint8), cv2.IMREAD_COLOR)
        assert decoded.shape[1] == int(image.headers["x-image-width"])
        for kind in ("crop", "cam"):
            png = api.get(f"/frames/{frame}/cells/0/{kind}", headers=bearer("reader"))
            assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
        assert api.get(f"/frames/{frame}/cells/9/crop", headers=bearer("reader")).status_code == 404
        assert api.get("/frames/nope/image", headers=bearer("reader")).status_code == 404
        # The archived file replaced by other bytes under the same name: never served.
        archived = settings.archive_dir / "IMG-1" / "f0000.jpg"
        archived.rename(archived.with_suffix(".bak"))
        archived.write_bytes(synthetic_jpeg(999, 1))
    with serve_http(create_app(settings, redis_client)) as api:  # a fresh process: no cache
        response = api.get(f"/frames/{frame}/image", headers=bearer("reader"))
        assert response.status_code == 404 and "archive" in response.json()["detail"]
        # ... but found again under the free name capture gives a second file of that name.
        archived.with_suffix(".bak").rename(archived.with_name("f0000-1.jpg"))
        assert api.get(f"/frames/{frame}/image", headers=bearer("reader")).status_code == 200


def test_a_pushed_frame_has_an_image(make_settings, redis_client: redis.Redis) -> None:
    from daemon.domain.results import CellResult, FrameResult
    from daemon.store.results import ResultStore

    keys = [{"name": n, "role": r, "sha256": hash_key(k)} for n, (r, k) in KEYS.items()]
    settings = make_settings(auth={"keys": keys})
    data = synthetic_jpeg(7, 2)
    with serve_http(create_app(settings, redis_client)) as api:
        pushed = api.post("/frames?specimen_id=PUSH-1&name=field.jpg", content=data,
                          headers=bearer("rig"))
        assert pushed.status_code == 202, pushed.text
        frame = pushed.json()["frame_id"]
        # The worker's result for it (no worker runs here).
        ResultStore(redis_client).store(FrameResult(
            frame_id=frame, specimen_id="PUSH-1", source="upload:PUSH-1/field.jpg",
            status="done", captured_at=1.0, completed_at=2.0,
            cells=[CellResult(bbox=[5, 5, 30, 30], area_px=600, class_="pre_b",
                              probabilities={"pre_b": 0.9}, confidence=0.9)]))
        image = api.get(f"/frames/{frame}/image", headers=bearer("reader"))
        assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")
        assert api.get(f"/frames/{frame}/cells/0/crop", headers=bearer("reader")).status_code \
            == 200


def test_openapi_lists_the_review_routes(settings, redis_client: redis.Redis) -> None:
    with serve_http(create_app(settings, redis_client)) as api:
        paths = api.get("/openapi.json").json()["paths"]
    assert "get" in paths["/frames/{frame_id}/image"]
    assert "get" in paths["/frames/{frame_id}/cells/{index}/crop"]
    assert "get" in paths["/frames/{frame_id}/cells/{index}/cam"]
    assert "put" in paths["/specimens/{specimen_id}/cells/{frame_id}/{index}"]
    assert "post" in paths["/specimens/{specimen_id}/verify"]
    assert not any(p.startswith("/ui") for p in paths)


def test_pages_render_for_a_signed_in_reviewer(settings, redis_client: redis.Redis) -> None:
    synthetic_specimen(redis_client, settings, "PAGE-1", frames=2, complete=True)
    synthetic_specimen(redis_client, settings, "PAGE-2", frames=1, seed=2)
    with serve_http(create_app(settings, redis_client)) as api:
        login(api, "rev")
        listing = api.get("/ui/specimens").text
        assert "PAGE-1" in listing and "awaiting review" in listing and "collecting" in listing
        assert "PAGE-2" not in api.get("/ui/specimens?status=awaiting").text
        review = api.get("/ui/specimens/PAGE-1")
        assert review.status_code == 200 and 'id="sign"' in review.text
        assert "default-src 'self'" in review.headers["content-security-policy"]
        assert review.text.count('class="cell ') == 6
        assert api.get("/ui/rigs").status_code == 200
        assert api.get("/ui/static/review.js").status_code == 200
        assert api.get("/ui/specimens/NOPE").status_code == 404


def test_export_labels_writes_verified_crops(settings, redis_client: redis.Redis,
                                             tmp_path: Path) -> None:
    from daemon.cli.export_labels import export_labels
    from daemon.store.review import ReviewStore

    frames = synthetic_specimen(redis_client, settings, "EXP-1", frames=2, complete=True)
    synthetic_specimen(redis_client, settings, "EXP-2", frames=1, seed=3, complete=True)
    reviews = ReviewStore(redis_client)
    reviews.reclassify("EXP-1", frames[0].frame_id, 0, "pro_b", frames[0].cells[0].class_, "rev")
    reviews.sign("EXP-1", "rev", "reviewer", 1, False)
    out = tmp_path / "labels"
    written = export_labels(settings, redis_client, out)
    assert written == 6  # EXP-2 is not verified
    assert list((out / "original" / "Pro").glob(f"EXP-1_{frames[0].frame_id[:16]}_0_*.png"))
    rows = (out / "labels.csv").read_text().splitlines()
    assert rows[0].startswith("file,class,model_class,specimen_id,frame_id,index")
    assert len(rows) == 7


def test_verifying_queues_the_final_report_for_mllp_with_a_new_control_id(
    make_settings, redis_client: redis.Redis
) -> None:
    from daemon.store.keys import OUTBOX_KEY
    from daemon.store.review import ReviewStore

    settings = make_settings(lis={"mllp": {"host": "127.0.0.1", "port": 9}})
    frames = synthetic_specimen(redis_client, settings, "MLLP-1", frames=1)
    specimens = SpecimenStore(redis_client, mllp_enabled=True)
    specimens.complete("MLLP-1", "api")
    preliminary = specimens.get("MLLP-1").control_id
    redis_client.zrem(OUTBOX_KEY, "MLLP-1")  # as if the preliminary report was delivered
    redis_client.hset("lks:specimen:MLLP-1", "outbox_state", "delivered")
    reviews = ReviewStore(redis_client)
    reviews.reclassify("MLLP-1", frames[0].frame_id, 0, "pro_b", frames[0].cells[0].class_, "r")
    assert reviews.sign("MLLP-1", "r", "reviewer", 1, queue_for_mllp=True) == "verified"
    spec = specimens.get("MLLP-1")
    assert spec.result_status == "final" and spec.delivery["state"] == "pending"
    assert redis_client.zscore(OUTBOX_KEY, "MLLP-1") is not None
    assert spec.control_id != preliminary


def test_a_sign_off_counted_before_a_late_reclassification_is_counted_again(
    settings, redis_client: redis.Redis
) -> None:
    from daemon.store.review import ReviewStore

    frames = synthetic_specimen(redis_client, settings, "RACE-1", frames=1, complete=True)
    reviews = ReviewStore(redis_client)
    counts = reviews.reviewed_counts
    calls = []

    def counted_then_changed(specimen_id: str):
        result = counts(specimen_id)
        if not calls:  # a reviewer's change lands between counting and signing
            reviews.reclassify("RACE-1", frames[0].frame_id, 0, "pro_b",
                               frames[0].cells[0].class_, "other")
        calls.append(1)
        return result

    reviews.reviewed_counts = counted_then_changed
    assert reviews.sign("RACE-1", "rev", "reviewer", 1, queue_for_mllp=False) == "verified"
    assert len(calls) == 2
    assert SpecimenStore(redis_client).get("RACE-1").reclassified_cells == (
        frames[0].cells[0].class_ != "pro_b")
