"""Every Redis key the daemon uses: the whole schema on one page.

``{}`` is filled with a frame or specimen id. Nothing outside ``daemon/store`` names a key;
the values are part of the data format (a running installation's Redis keeps them across
upgrades), so change a name only with a migration.
"""

from __future__ import annotations

# --- the frame queue (store/queue.py) ---------------------------------------------------
STREAM_KEY = "lks:frames"  # stream: one entry per queued frame: its encoded bytes in field
#   "data", or (above queue.inline_max_bytes) "data_ref", the frame's name in the frame store
#   <data_dir>/frames/ (store/frames.py); "qc": "done" when quality control ran before queueing
GROUP = "workers"  # the consumer group of STREAM_KEY shared by all workers
INFLIGHT_KEY = "lks:inflight"  # hash: frame_id -> {path, rig, specimen} until archived
ADMISSION_KEY = "lks:admission"  # hash: token -> "<frames>:<expires at>": frames of a pushed file
#   admitted against queue.max_backlog and being queued (scripts/admit.lua)
SOLO_KEY = "lks:solo"  # hash: frame_id -> times analysed alone after a crash (poison isolation)

# --- results (store/results.py) ----------------------------------------------------------
RESULT_KEY = "lks:result:{}"  # string: a frame's FrameResult JSON, deflated (store/results.py
#   encode_result; plain JSON before), written once (SET NX) and once more by capture to set
#   its archived_path
STORED_AT_KEY = "lks:results:location"  # hash: frame_id -> path of the original after capture
#   moved it (archive/ or quarantine/), for results stored as plain JSON (before results were
#   deflated: a deflated result carries its archived_path itself); trimmed with the result
LOG_KEY = "lks:results"  # stream: one entry per stored result (cursor polling, archiver)
UNASSIGNED_LOG = "lks:results:unassigned"  # stream: one entry per stored result of a frame with
#   no specimen (straight in the inbox, misplaced): listed, counted, never reported; trimmed
#   with the results
NO_STREAM_KEY = "lks:none"  # placeholder KEYS entry where a script has no key to touch (a
#   store that acknowledges nothing, a forgotten specimen with no order); never written

# --- specimens (store/specimens.py) ------------------------------------------------------
# A complete specimen past specimens.retention_days leaves with its :late, :frames, :cells
# and :order keys, its entries in both logs and its order (scripts/forget_specimen.lua).
SPECIMEN_KEY = "lks:specimen:{}"  # hash: a specimen's counters and lifecycle
LATE_KEY = "lks:specimen:{}:late"  # set: frames stored after the specimen completed
OPENED_LOG = "lks:specimens:opened"  # stream: one entry when a specimen opens
COMPLETED_LOG = "lks:specimens:completed"  # stream: one entry when a specimen completes
OPEN_SET = "lks:specimens:open"  # zset: open specimen -> last activity (idle completion)
REQUESTED_SET = "lks:specimens:requested"  # zset: completion requested -> request time
CONTROL_COUNTER = "lks:lis:control"  # integer: HL7 message control ids (LKS<n>)
OUTBOX_KEY = "lks:outbox"  # zset: specimen -> next MLLP delivery attempt time
PARKED_KEY = "lks:outbox:parked"  # zset: specimen -> time its message was parked (dead letter:
#   failed for good or too often; out of lks:outbox until an operator retries it)

# --- review and sign-off (store/review.py, issue 13) -----------------------------------
SPECIMEN_FRAMES_KEY = "lks:specimen:{}:frames"  # zset: frame folded into the specimen -> time
#   (a frame leaves it when its result is trimmed)
CELL_REVIEW_KEY = "lks:specimen:{}:cells"  # hash: "<frame_id>:<index>" -> reviewed class JSON
UI_SECRET_KEY = "lks:ui:secret"  # string: session-signing secret shared by API replicas

# --- metrics, heartbeats, audit, housekeeping --------------------------------------------
METRICS_KEY = "lks:metrics"  # hash: counter and histogram fields (store/counters.py)
RIGS_KEY = "lks:metrics:rigs"  # set: rig ids admitted as metric label values (capped)
WORKERS_KEY = "lks:workers"  # hash: worker id -> heartbeat JSON
CAPTURES_KEY = "lks:captures"  # hash: rig id -> capture heartbeat JSON
AUDIT_KEY = "lks:audit"  # stream: who read or ingested what (past audit.retention_days or
#   audit.max_entries, moved to <data_dir>/audit/ files by the housekeeping leader)
HOUSEKEEPER_LEASE_KEY = "lks:housekeeper"  # string: token of the API process doing upkeep

# --- rigs (store/rigs.py) ---------------------------------------------------------------
RBC_HISTORY_KEY = "lks:rigs:rbc"  # hash: rig id -> its last red-cell diameters (frame pixels,
#   space-separated, oldest first): the rig's running scale estimate for pushed frames' QC
#   and the workers' rescaling (store/rigs.py, worker/rigs.py; bounded per rig)
RBC_RIGS_KEY = "lks:rigs:rbc:used"  # zset: rig id -> when its diameters last grew; past
#   the cap the least recent rig leaves both keys (scripts/remember_diameters.lua)
STAIN_HISTORY_KEY = "lks:rigs:stain"  # hash: rig id -> its last frames' stain hues (degrees,
#   space-separated, oldest first): the workers' stain calibration (imaging/stain.py)
STAIN_RIGS_KEY = "lks:rigs:stain:used"  # zset: rig id -> when its hues last grew (capped alike)

# --- orders from the LIS (store/orders.py) -----------------------------------------------
ORDER_KEY = "lks:order:{}"  # string: an Order's JSON, by placer order number
SPECIMEN_ORDER_KEY = "lks:specimen:{}:order"  # string: the placer order number of a specimen
ORDERS_LOG = "lks:orders"  # stream: one entry per order received (HL7 or FHIR), for paging
