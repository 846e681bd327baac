"""Every business rule the gateway applies, with its reason code and where it comes from (pure).

This table is the integrators' rules table (rendered into the docs by scripts/gen_docs.py); a
test checks that every reason the case rules raise is in it. A rule is either a refusal (its code
is the google.rpc.ErrorInfo reason of the FAILED_PRECONDITION or INVALID_ARGUMENT answer) or a
behaviour with no refusal (its code names it in Tracking, metrics and logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MEASURES: Final = "医保办发〔2021〕43号"


@dataclass(frozen=True)
class Rule:
    code: str     # ErrorInfo.reason of the refusal, or the behaviour's name
    status: str   # FAILED_PRECONDITION, INVALID_ARGUMENT, PERMISSION_DENIED, or "" for a behaviour
    rule: str     # what it says
    source: str   # the article (quoted) or the contract it comes from


_FP, _IA, _PD = "FAILED_PRECONDITION", "INVALID_ARGUMENT", "PERMISSION_DENIED"
_CONTRACT = "the exchange contract"

RULES: Final[tuple[Rule, ...]] = (
    # Who and what the measures cover.
    Rule("INSURANCE_TYPE_NOT_COVERED", _FP, "Only employee (310) and resident (390) basic insurance transfer.",
         f"{MEASURES} 第二条: 职工基本医疗保险参保人员（不含退休人员）和城乡居民基本医疗保险参保人员"),
    Rule("RETIRED_NOT_COVERED", _FP, "A retired employee's case is refused (REASON_CODE_RETIRED), not accepted.",
         f"{MEASURES} 第二条: 职工医保参保人员（不含退休人员）"),
    # Cross-scheme money.
    Rule("FUNDS_MOVE_310_TO_310", "", "A fund transfer is expected exactly when both sides are employee insurance "
         "and the table's balance is positive; every other case moves no money.",
         f"{MEASURES}: 职工医保个人账户……随同转移; 居民医保无个人账户"),
    Rule("NO_FUNDS_ACROSS_SCHEMES", _FP, "No fund transfer from employee to resident insurance.",
         "resident insurance has no personal account (this gateway's decision: the balance stays with the person)"),
    Rule("NO_FUNDS_FOR_RESIDENT_INSURANCE", _FP, "No fund transfer out of resident insurance.",
         "resident insurance has no personal account"),
    Rule("NO_FUNDS_FOR_ZERO_BALANCE", _FP, "No fund transfer when the table's balance is 0.", _CONTRACT),
    Rule("BALANCE_STAYS_AT_OUTBOUND", _FP, "310 → 390: the table reports the balance as "
         "account_balance_retained_fen (it stays with the person at the outbound side), account_balance_fen 0.",
         f"{MEASURES}: 职工医保参保人员……在转入地按规定参加居民医保的，可申请转移接续 (where the balance goes "
         "is not said: this gateway's decision)"),
    Rule("BALANCE_RETAINED_ONLY_ACROSS_SCHEMES", _FP, "A retained balance is reported only for 310 → 390.",
         _CONTRACT),
    Rule("INBOUND_INSURANCE_TYPE_REQUIRED", _FP, "An accepted outbound notice that opens a case states the "
         "inbound insurance type.", "the inbound scheme decides whether money moves"),
    Rule("INSURANCE_TYPE_MISMATCH", _FP, "The insurance types are fixed when the case opens; every later "
         "message that states one (notice, table, acceptance) states the same.",
         f"{MEASURES}: 跨险种转移接续 (职工医保 ⇄ 居民医保)"),
    # Who may do what, and when.
    Rule("CASE_NOT_OPENED", _FP, "A transfer request or an outbound notice opens a case.",
         f"{MEASURES}: 参保人员可在转出地或转入地申请"),
    Rule("CASE_ALREADY_OPEN", _FP, "One open case per person and outbound agency.", "不得重复参保和重复享受待遇"),
    Rule("CASE_CLOSED", _FP, "A closed case accepts no message.", _CONTRACT),
    Rule("PARTIES_MISMATCH", _FP, "Messages go between the case's two agencies.", _CONTRACT),
    Rule("STATE_FORBIDS_MESSAGE", _FP, "The state diagram says which side may send what, when.", _CONTRACT),
    Rule("PERSON_MISMATCH", _FP, "Notice and table are about the request's person.", _CONTRACT),
    Rule("SUSPENSION_DATE_MISMATCH", _FP, "The table's suspension date is the notice's.", _CONTRACT),
    Rule("FUNDS_NOT_YET_SENT", _FP, "The inbound side accepts after the funds reached it, when funds are due.",
         f"{MEASURES}: 完成转入，并接收职工医保个人账户金额"),
    Rule("NO_FUNDS_EXPECTED", _FP, "Acknowledgements about funds only in a case that moves funds.", _CONTRACT),
    Rule("FUND_TRANSFER_ALREADY_ACCEPTED", _FP, "One fund transfer per case.", _CONTRACT),
    Rule("FUND_AMOUNT_MISMATCH", _FP, "The fund transfer moves the table's balance.",
         f"{MEASURES}: 同时划转职工医保个人账户余额"),
    Rule("CREDITED_AMOUNT_MISMATCH", _FP, "The amount credited is the amount sent.", _CONTRACT),
    Rule("ACK_TARGET_UNKNOWN", _FP, "An acknowledgement answers a message of its case sent by the other side.",
         _CONTRACT),
    Rule("ACK_TARGET_WRONG_KIND", _FP, "Each acknowledgement status answers its kind of message.", _CONTRACT),
    Rule("WITHDRAWAL_NOT_BY_APPLICANT", _FP, "Only the side where the application was lodged withdraws it.",
         f"{MEASURES}: 参保人员……申请"),
    Rule("WITHDRAWAL_AFTER_FUNDS", _FP, "No withdrawal once the balance has moved.", _CONTRACT),
    # The missing rules of the measures.
    Rule("RESIDENT_SAME_YEAR", _FP, "Resident → resident: the inbound enrollment is in a later year than the "
         "suspension; otherwise the inbound side rejects with REASON_CODE_RESIDENT_SAME_YEAR.",
         f"{MEASURES}: 原则上当年度在转入地不再办理转移接续手续，"
         "参保人员按转入地规定参加下一年度居民医保后，可申请转移接续"),
    Rule("OVERLAPPING_COVERAGE", _FP, "The inbound enrollment date is not before the outbound suspension; "
         "otherwise the inbound side rejects with REASON_CODE_DUPLICATE_ENROLLMENT.",
         f"{MEASURES}: 不得重复参保和重复享受待遇"),
    Rule("SUSPENSION_IN_FUTURE", _IA, "A suspension date (notice, table) is not after today in Asia/Shanghai "
         "(FIELD_INVALID on suspension_date).", f"{MEASURES}: 转出地……中止参保 (a fact reported once done)"),
    Rule("CONTINUOUS", "", "A gap of at most 3 months may be back-paid; benefits cover it retroactively.",
         f"{MEASURES}: 中断缴费3个月（含）以内的，可按转入地规定补缴"),
    Rule("WAITING_PERIOD", "", "After a gap of more than 3 months, a waiting period of at most 6 months "
         "applies.",
         f"{MEASURES}: 各统筹地区可根据自身情况，对中断缴费3个月以上的，设置不超过6个月的待遇享受等待期"),
    Rule("CUMULATIVE_MONTHS", _IA, "cumulative_months counts months paid and counted as paid (视同缴费) over the "
         "periods, the same month never twice: periods may overlap, their shared months count once "
         "(FIELD_INVALID on cumulative_months).", f"{MEASURES}: 缴费年限累计计算; 不得重复参保和重复享受待遇"),
    Rule("PSN_NO_FORMAT", _IA, "person.psn_no is optional; when present 1 to 30 ASCII letters and digits "
         "(FIELD_INVALID on person.psn_no).", "national platform field psn_no (人员编号, 字符型 30)"),
    Rule("NOT_HELD_FOR_REVIEW", _FP, "Only a held fund transfer is reviewed.", _CONTRACT),
    Rule("REVIEW_ALREADY_DECIDED", _FP, "A review is decided once; the same decision again gets the same receipt.",
         _CONTRACT),
    # Clocks.
    Rule("OUTBOUND_CLOCK", "", "The outbound stage runs from the opening until the table (and the funds when "
         "due) are sent: 10 working days.",
         f"{MEASURES}: 转出地经办机构10个工作日内完成……转出，生成并上传《信息表》，同时划转……余额"),
)


def markdown() -> str:
    """The rules as a Markdown table (the integrator docs embed it)."""
    lines = ["| code | refusal | rule | source |", "| --- | --- | --- | --- |"]
    for r in RULES:
        lines.append(f"| `{r.code}` | {r.status or '— (behaviour)'} | {r.rule} | {r.source} |")
    return "\n".join(lines)
