"""Physical and size limits shared by settings, capture, the API and the workers."""

from __future__ import annotations

import math

#: µm per pixel a microscope camera can plausibly have (a 100x oil objective on a small
#: sensor is about 0.05; a 2x objective on a large one about 5): outside this, a value is
#: a typing or unit error (nm or mm), not a scale.
PHYSICAL_UM_PER_PIXEL = (0.01, 100.0)

#: HL7 v2.5.1 maximum lengths of the MSH fields leukoscope fills from configuration
#: (HD namespace id: 20).
HL7_MAX_LENGTH = {
    "sending_application": 20,
    "sending_facility": 20,
    "receiving_application": 20,
    "receiving_facility": 20,
}
#: characters that delimit or escape HL7 v2 fields, and line ends that split segments
HL7_RESERVED = "|^~\\&\r\n"


def valid_um_per_pixel(value: float | None) -> bool:
    """A finite µm/pixel within PHYSICAL_UM_PER_PIXEL (None: no scale, which is valid)."""
    if value is None:
        return True
    low, high = PHYSICAL_UM_PER_PIXEL
    return isinstance(value, int | float) and math.isfinite(value) and low <= value <= high
