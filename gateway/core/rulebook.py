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
_ZHEJIANG = ("浙江 自动归集 (in-province since 2022-09): 参保人员在新地区参保同时，系统将自动校验参保人是否存在原"
             "参保地的暂停参保记录，同步发起转移接续申请")
_JIANGSU = ("江苏 免申请 (in-province since 2025-09): 由医保信息平台完成参保状态的读取、办理条件的判断、"
            "业务的自动触发办理")
_JIANGSU_BLOCKERS = ("江苏: 若存在转出地在院费用未结算、历史欠费、多重参保编号或缴费信息不完整等情形，"
                     "需先完成前置处理方可办理")
_JIANGSU_CHOICE = "江苏: 参保人员有多地暂停参保记录，可以自主选择待转移的记录进行申请办理"

RULES: Final[tuple[Rule, ...]] = (
    # Who and what the measures cover.
    Rule("INSURANCE_TYPE_NOT_COVERED", _FP, "Only employee (310) and resident (390) basic insurance transfer; "
         "cross-scheme 310 ⇄ 390 moves are allowed.",
         f"{MEASURES}: 职工基本医疗保险参保人员（不含退休人员）和城乡居民基本医疗保险参保人员"),
    Rule("RETIRED_NOT_COVERED", _FP, "A retired employee is not covered: refuse the case with REASON_CODE_RETIRED "
         "instead of accepting it.", f"{MEASURES}: 职工基本医疗保险参保人员（不含退休人员）"),
    # Cross-scheme money.
    Rule("FUNDS_MOVE_310_TO_310", "", "A fund transfer is expected exactly when both sides are employee insurance "
         "and the table's balance is positive (the guard \"funds expected\" of the diagram); no other case moves "
         "money.", f"{MEASURES}: 转出地……同时划转职工医保个人账户余额 (resident insurance has no personal account)"),
    Rule("NO_FUNDS_ACROSS_SCHEMES", _FP, "No fund transfer from employee to resident insurance.",
         "resident insurance has no personal account; this gateway's decision: the balance stays with the person "
         "at the outbound side"),
    Rule("NO_FUNDS_FOR_RESIDENT_INSURANCE", _FP, "No fund transfer out of resident insurance.",
         "resident insurance has no personal account"),
    Rule("NO_FUNDS_FOR_ZERO_BALANCE", _FP, "A zero balance means no fund transfer is expected.", _CONTRACT),
    Rule("BALANCE_STAYS_AT_OUTBOUND", _FP, "310 → 390: the table reports the balance as "
         "`account_balance_retained_fen` (it stays with the person at the outbound side, used or paid out under "
         "local rules) and `account_balance_fen` 0; metadata `field`.",
         f"{MEASURES}: 职工医保参保人员……在转入地按规定参加居民医保的，可申请转移接续 (where the balance goes is not "
         "said: this gateway's decision)"),
    Rule("BALANCE_RETAINED_ONLY_ACROSS_SCHEMES", _FP, "A retained balance is reported only from employee to "
         "resident insurance; otherwise it moves as `account_balance_fen`; metadata `field`.", _CONTRACT),
    Rule("INBOUND_INSURANCE_TYPE_REQUIRED", _FP, "An accepted outbound notice that opens a case (no transfer "
         "request before it) states `inbound_insurance_type`: it decides whether money moves; metadata `field`.",
         f"{MEASURES}: 跨险种转移接续 (职工医保 ⇄ 居民医保)"),
    Rule("INSURANCE_TYPE_MISMATCH", _FP, "Both insurance types are fixed when the case opens; every later message "
         "that states one (notice, table, inbound acceptance) states the same; metadata `field`.",
         f"{MEASURES}: 跨险种转移接续 (职工医保 ⇄ 居民医保)"),
    # Who may do what, and when.
    Rule("CASE_NOT_OPENED", _FP, "Only a transfer request or an outbound notice opens a case.",
         f"{MEASURES}: 参保人员可在转出地或转入地申请"),
    Rule("CASE_ALREADY_OPEN", _FP, "One open case per person and outbound agency (a person with suspended "
         "records at several agencies may have one case at each); metadata `open_transfer_id` names it when the "
         "calling platform is one of its sides, and is left out otherwise. Two replicas racing to open the same "
         "person's case end on the database's unique index, refused with the same reason (without metadata).",
         f"{MEASURES}: 不得重复参保和重复享受待遇"),
    Rule("CASE_CLOSED", _FP, "A closed case (completed, refused, rejected, withdrawn, closed by an operator, "
         "expired) accepts nothing more.", _CONTRACT),
    Rule("CASE_MESSAGE_LIMIT", _FP, "A case holds at most 100 messages from its platforms (a whole case, "
         "returns and blockers included, needs about twenty), so no party can grow a case, and every answer that "
         "shows it, without bound; metadata `limit`.", _CONTRACT),
    Rule("STATE_FORBIDS_MESSAGE", _FP, "This side may not send this message in this state (see the diagram); "
         "metadata `event` and `side`.", _CONTRACT),
    Rule("PARTIES_MISMATCH", _FP, "Sender and receiver are the case's outbound and inbound agencies, the "
         "sender being one of them; metadata `sender`, `receiver`. A sender that is neither learns nothing of the "
         "case (see `TRANSFER_ID_IN_USE`).", _CONTRACT),
    Rule("PERSON_MISMATCH", _FP, "The notice and the table are about the request's (notice's) person: certificate "
         "type and number.", _CONTRACT),
    Rule("SUSPENSION_DATE_MISMATCH", _FP, "The table's suspension date is the notice's.", _CONTRACT),
    Rule("FUNDS_NOT_YET_SENT", _FP, "When funds are expected the inbound side accepts after they reached it; "
         "metadata `event`.", f"{MEASURES}: 转入地……完成转入，并接收职工医保个人账户金额"),
    Rule("NO_FUNDS_EXPECTED", _FP, "When no funds are expected the inbound side accepts at once, and nothing "
         "about funds is answered; metadata `event`.", _CONTRACT),
    Rule("FUND_TRANSFER_ALREADY_ACCEPTED", _FP, "One fund transfer per case (also enforced by the schema).",
         _CONTRACT),
    Rule("FUND_AMOUNT_MISMATCH", _FP, "The fund transfer moves exactly the table's balance.",
         f"{MEASURES}: 同时划转职工医保个人账户余额"),
    Rule("CREDITED_AMOUNT_MISMATCH", _FP, "The amount credited is the amount sent.",
         f"{MEASURES}: 转入地……核实金额"),
    Rule("ACK_TARGET_UNKNOWN", _FP, "An acknowledgement answers a message of this case sent to its sender.",
         _CONTRACT),
    Rule("ACK_TARGET_WRONG_KIND", _FP, "Accepted, rejected and completed answer the table; funds credited answers "
         "the fund transfer.", _CONTRACT),
    Rule("WITHDRAWAL_NOT_BY_APPLICANT", _FP, "Only the side where the application was lodged withdraws it.",
         f"{MEASURES}: 参保人员……申请"),
    Rule("WITHDRAWAL_AFTER_FUNDS", _FP, "No withdrawal once the balance has moved (held or sent).", _CONTRACT),
    # The rules of the measures that are easy to get wrong.
    Rule("RESIDENT_SAME_YEAR", _FP, "Resident → resident: the inbound enrollment is in a later year than the "
         "suspension; otherwise the inbound side rejects the table with REASON_CODE_RESIDENT_SAME_YEAR; metadata "
         "`field`.", f"{MEASURES}: 原则上当年度在转入地不再办理转移接续手续，"
         "参保人员按转入地规定参加下一年度居民医保后，可申请转移接续"),
    Rule("OVERLAPPING_COVERAGE", _FP, "The inbound enrollment date is not before the outbound suspension date "
         "(it would be a zero gap over months insured twice); the inbound side rejects the table with "
         "REASON_CODE_DUPLICATE_ENROLLMENT; metadata `field`.", f"{MEASURES}: 不得重复参保和重复享受待遇"),
    Rule("SUSPENSION_IN_FUTURE", _IA, "A suspension date (notice, table) is not after today in Asia/Shanghai: "
         "`FIELD_INVALID` on `suspension_date`.", f"{MEASURES}: 转出地……中止参保 (reported once done)"),
    Rule("CUMULATIVE_MONTHS", _IA, "`cumulative_months` counts the months paid and counted as paid (视同缴费) of "
         "the periods, the same month never twice: periods may overlap (two regions or two schemes), their shared "
         "months count once: `FIELD_INVALID` on `cumulative_months` otherwise.",
         f"{MEASURES}: 参保人员……缴费年限累计计算; 不得重复参保"),
    Rule("PSN_NO_FORMAT", _IA, "`person.psn_no` is optional; when present 1 to 30 ASCII letters and digits: "
         "`FIELD_INVALID` on `person.psn_no` otherwise.", "national platform field psn_no (人员编号, 字符型 30)"),
    Rule("CONTINUOUS", "", "A contribution gap of at most 3 months may be back-paid and benefits cover it "
         "retroactively (Tracking `continuity`).", f"{MEASURES}: 中断缴费3个月（含）以内的，可按转入地规定补缴"),
    Rule("SWITCH_UNDER_TWO_YEARS", "", "A switch between employee and resident insurance after fewer than 24 months "
         "insured without a break (counted from the table's periods up to the suspension) is not continuous: no "
         "retroactive benefits (Tracking `continuity.rule`, `continuity.insured_months`).",
         f"{MEASURES}: 已连续2年（含）以上参保的，因就业等个人状态变化在职工医保和居民医保间切换参保关系，"
         "中断缴费3个月（含）以内的，可按转入地规定补缴……中断期间的待遇可追溯享受"),
    Rule("WAITING_PERIOD", "", "After a gap of more than 3 months the inbound region's own waiting period applies: "
         "its policy in the registry (`waiting_period_months`, 0 to 6; none by default), fixed when it accepted; "
         "Tracking `continuity`.",
         f"{MEASURES}: 各统筹地区可根据自身情况，对中断缴费3个月以上的，设置不超过6个月的待遇享受等待期"),
    # Review of large transfers: each region's own practice.
    Rule("REVIEW_BY_REGION_POLICY", "", "A fund transfer is held for review only where the outbound region's policy "
         "in the registry reviews transfers above a balance (`review_above_fen`; none by default; the dev registry "
         "has Zhejiang's 10,000 yuan); the guards \"reviewed\" and \"not reviewed\" of the diagram.",
         "provincial practice, not a national rule (浙江: 个账结余>1万元情况下后台会进行人工审核，1个工作日内完成)"),
    Rule("REVIEWER_NOT_OF_PROVINCE", "PERMISSION_DENIED", "A reviewer lists and decides only the held transfers "
         "of the outbound provinces the registry scopes it to; metadata `reviewer`, `province`.",
         "provincial practice: each province reviews its own outbound transfers"),
    Rule("NOT_HELD_FOR_REVIEW", _FP, "A reviewer decides only on a held fund transfer.", _CONTRACT),
    Rule("REVIEW_ALREADY_DECIDED", _FP, "The opposite decision on an already decided review (the same decision "
         "again returns the first receipt); metadata `transfer_id`.", _CONTRACT),
    # Automatic transfer (免申请): the suspended-record index.
    Rule("AUTOMATIC_ACROSS_PROVINCES", "", "A suspended record and a new enrollment of the same person (certificate "
         "type and number) at agencies of two provinces open the case without an application, as if the person had "
         "applied at the inbound side (channel CHANNEL_AUTOMATIC); a move within one province is left to the "
         "province's own platform.", f"{_ZHEJIANG}; {_JIANGSU}"),
    Rule("AUTOMATIC_OLDEST_FIRST", "", "Several suspended records of the person open one case each, the oldest "
         "suspension first, unless the enrollment names the outbound agencies the person chose.",
         f"{_JIANGSU_CHOICE}"),
    Rule("AUTOMATIC_ONLY_WHAT_THE_RULES_ALLOW", "", "A record and an enrollment open nothing when the case would "
         "be refused: an enrollment before the suspension (OVERLAPPING_COVERAGE), resident → resident within the "
         "suspension's year (RESIDENT_SAME_YEAR).",
         f"{MEASURES}: 不得重复参保; 原则上当年度在转入地不再办理转移接续手续"),
    Rule("ENROLLMENT_WAITS", "", "An enrollment without a matching record waits for one for the gateway's "
         "retention period (`[automatic] enrollment_retention_days`, 90 days by default; the receipt's "
         "`automatic.waiting_until`); a record registered meanwhile opens the case.", _CONTRACT),
    Rule("BLOCKERS_WAIT", "", "An automatic case the outbound side refuses only for blockers the person can "
         "clear (在院未结算 `REASON_CODE_UNSETTLED_HOSPITAL_STAY`, 欠费 `REASON_CODE_ARREARS`, 多重参保编号 "
         "`REASON_CODE_MULTIPLE_INSURED_NUMBERS`, 缴费信息不完整 `REASON_CODE_INCOMPLETE_CONTRIBUTIONS`, 透支 "
         "`REASON_CODE_ACCOUNT_OVERDRAWN`) waits, `AWAITING_RESOLUTION`; the outbound side's `BlockerResolution` "
         "resumes it (`OPENED`) with no new application; a refusal with any other reason closes it (`REFUSED`), and so "
         "do the inbound side's Withdrawal and an operator (Admin.CloseCase, with a reason, signed and delivered to "
         "both sides) when the blockers are never cleared. An applied case refused for blockers closes, as before: the "
         "person applies again once they are cleared.",
         f"{_JIANGSU_BLOCKERS}"),
    Rule("RESOLUTION_CLOCK", "", "While an automatic case waits for its blockers, its outbound and total stages "
         "stand finished and the resolution stage runs: the person's, on no agency's clock (20 working days by "
         "default, to draw attention; no legal limit). The resolution starts the outbound and total stages again, as "
         "a new application would.", f"{MEASURES}: 转出地经办机构10个工作日内完成……转出 (counted from the request)"),
    Rule("TRANSFER_ID_IN_USE", _FP, "A transfer id that opens something is new: a suspended record's (it becomes "
         "the id of the case the record opens), and that of a request or notice naming a case the sender is not a "
         "side of; nothing of that case or record is said (any other message naming it is refused as if the id did "
         "not exist, `CASE_NOT_OPENED`); metadata `transfer_id`.", _CONTRACT),
    Rule("RECORD_ALREADY_REGISTERED", _FP, "One waiting record per person and agency; metadata `transfer_id` names "
         "it (withdraw it first if it ended).", f"{MEASURES}: 不得重复参保"),
    Rule("RECORD_NOT_FOUND", "NOT_FOUND", "The agency withdrawing a record registered it; metadata `transfer_id`.",
         _CONTRACT),
    Rule("RECORD_NOT_WAITING", _FP, "A record that opened its case, or was withdrawn, is not withdrawn again: an "
         "open case is answered (or refused) in the case; metadata `transfer_id`, `record_state`.", _CONTRACT),
    Rule("ENROLLMENT_NOT_FOUND", "NOT_FOUND", "The agency opting out reported the enrollment; metadata "
         "`enrollment_message_id`.", _CONTRACT),
    Rule("ENROLLMENT_NOT_WAITING", _FP, "An enrollment that lapsed or was opted out of opens nothing more; the "
         "cases it opened are withdrawn like any other; metadata `enrollment_message_id`, `enrollment_state`.",
         _CONTRACT),
    Rule("CASE_EXISTS", _FP, "The gateway opens an automatic case only under a transfer id no case has.", _CONTRACT),
    Rule("AUTOMATIC_TRANSFER_NOT_CONFIGURED", _FP, "No longer sent: a gateway keeps every open case's person under "
         "a person-key secret (`[automatic.person_key_secrets]`) and does not start without one, so its index is "
         "always on. Earlier versions refused the index's messages with it while no secret was configured.",
         _CONTRACT),
    # Clocks: each stage is one side's.
    Rule("OUTBOUND_CLOCK", "", "The outbound stage runs from the opening until the table (and the funds when due) "
         "are sent: 10 working days, the outbound agency's.",
         f"{MEASURES}: 转出地经办机构10个工作日内完成……转出，生成并上传《信息表》，同时划转……余额"),
    Rule("INBOUND_CLOCK", "", "The inbound stage starts when the inbound side has all it needs: the table and, "
         "when funds are due, the funds released to it (after review, if held); 5 working days, the inbound "
         "agency's. Time held for review is the review stage's, the reviewers'.",
         f"{MEASURES}: 转入地经办机构收到信息后，5个工作日内……完成转入，并接收职工医保个人账户金额"),
    Rule("STAGE_OWNER", "", "Every stage records whose clock it is (outbound, inbound, reviewer, both): Tracking "
         "shows it, the metrics and alerts count overdue stages by owner and owning province.", _CONTRACT),
    Rule("PROVISIONAL_DEADLINE", "", "A deadline that counts days of a year with no official calendar yet (Monday "
         "to Friday meanwhile) is provisional; when the State Council's notice for the year is loaded "
         "(Admin.LoadCalendar), unfinished stages are counted again and finished ones judged again.",
         "国务院办公厅关于部分节假日安排的通知 (published each year)"),
    # Returns and escalation.
    Rule("FUNDS_RETURNED_AFTER_REJECTION", "", "An inbound rejection after the funds arrived opens the return: "
         "the inbound side sends a FundReturn (the return stage, its own), the outbound side confirms it "
         "(FUNDS_RETURN_RECEIVED, the return receipt stage, its own), and only then is the case closed.",
         "the balance is the person's: it goes back to the outbound side (不得重复享受待遇)"),
    Rule("RETURN_TARGET_UNKNOWN", _FP, "A fund return returns the case's fund transfer.", _CONTRACT),
    Rule("RETURN_AMOUNT_MISMATCH", _FP, "A fund return returns the whole amount transferred.", _CONTRACT),
    Rule("REQUEST_ESCALATED", "", "A transfer request the outbound side leaves unanswered past its limit is "
         "overdue and alerted (escalated), never closed by the clock: only its applicant (Withdrawal) or an "
         "operator (Admin.CloseCase, with a reason, signed and delivered to both sides) closes it.",
         f"{MEASURES}: 转出地经办机构10个工作日内完成"),
    Rule("CASE_NOT_UNANSWERED", _FP, "An operator closes only a request still waiting for its outbound notice, "
         "or an automatic case waiting for its blockers (`AWAITING_RESOLUTION`).", _CONTRACT),
)


def markdown() -> str:
    """The rules as a Markdown table (the integrator docs embed it)."""
    lines = ["| code | refusal | rule | source |", "| --- | --- | --- | --- |"]
    for r in RULES:
        lines.append(f"| `{r.code}` | {r.status or '— (behaviour)'} | {r.rule} | {r.source} |")
    return "\n".join(lines)
