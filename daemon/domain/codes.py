"""The observation codes of a specimen report: one table shared by FHIR and HL7.

Every value a report carries has one code here, written the same in FHIR
(``Coding.system``/``code``) and HL7 (OBX-3 ``code^display^coding system``). No LOINC code
means what these values mean (a model's call of an ALL subtype on lymphoid cells, a share of
*identified lymphoid* cells rather than of all leukocytes, counts of cells a model could not
place), so all of them are under the local code system below, documented in the README
("LIS integration"). In particular the blast share is **not** LOINC 26446-5 (Blasts/100
leukocytes): the classifier does not see every leukocyte type, and it does not count blasts
among all leukocytes. A lab that maps these codes to its own catalogue does so in its LIS.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.domain.classes import CLASS_CODES

#: The local code system: a URI in FHIR, and its HL7 v2 name (HL7 table 0396 allows local
#: ``99zzz`` names).
LOCAL_SYSTEM_URI = "urn:leukoscope:codes"
LOCAL_SYSTEM_HL7 = "99LKS"
UCUM_URI = "http://unitsofmeasure.org"

CLASS_DISPLAY = {
    "benign": "Benign (non-blast) lymphoid cell",
    "early_pre_b": "Early pre-B lymphoblast",
    "pre_b": "Pre-B lymphoblast",
    "pro_b": "Pro-B lymphoblast",
}


@dataclass(frozen=True)
class Code:
    code: str
    display: str
    unit: str  # UCUM: "%" or an annotation such as "{cells}"; "" for a coded value


def class_token(class_code: str) -> str:
    """``early_pre_b`` -> ``early-pre-b``: the one spelling in codes and FHIR ids."""
    return class_code.replace("_", "-")


def display(class_code: str) -> str:
    return CLASS_DISPLAY.get(class_code, class_code.replace("_", " "))


PANEL = Code("wbc-all-subtype-panel", "White-cell ALL subtype panel (research use)", "")
PREDOMINANT_CLASS = Code("predominant-class", "Predominant cell class (model call)", "")
PREDOMINANT_SHARE = Code(
    "predominant-class-share", "Predominant class share of identified lymphoid cells", "%")
ALL_SHARE = Code(
    "all-lymphoid-share",
    "ALL-class share of identified lymphoid cells (early pre-B + pre-B + pro-B)",
    "%",
)
IDENTIFIED_CELLS = Code("cells-identified", "Lymphoid cells identified (in the differential)",
                        "{cells}")
IDENTIFIED_SHARE = Code("cells-identified-share", "Identified share of cells found", "%")
UNIDENTIFIED_CELLS = Code("cells-unidentified", "Cells not identified (not in the differential)",
                          "{cells}")
REVIEW_CELLS = Code("cells-needing-review", "Cells flagged for review", "{cells}")
REVIEW_FRAMES = Code("frames-needing-review", "Frames flagged for review", "{frames}")


def count_code(class_code: str) -> Code:
    return Code(f"count-{class_token(class_code)}", f"{display(class_code)} count", "{cells}")


def share_code(class_code: str) -> Code:
    return Code(f"share-{class_token(class_code)}",
                f"{display(class_code)} share of identified lymphoid cells", "%")


def class_value_code(class_code: str) -> Code:
    """The coded answer of PREDOMINANT_CLASS (FHIR valueCodeableConcept, HL7 CWE)."""
    return Code(f"class-{class_token(class_code)}", display(class_code), "")


def all_codes() -> list[Code]:
    """Every code, for the README's table and the tests."""
    codes = [PANEL, PREDOMINANT_CLASS, PREDOMINANT_SHARE, ALL_SHARE, IDENTIFIED_CELLS,
             IDENTIFIED_SHARE, UNIDENTIFIED_CELLS, REVIEW_CELLS, REVIEW_FRAMES]
    for c in CLASS_CODES:
        codes += [count_code(c), share_code(c), class_value_code(c)]
    return codes
