"""Deploys as people live them in Slack, read like a conversation (the shell drives the real Bolt app).

The sample organisation: Priya (payments) requests checkout-api deploys; Marcus (payments) may approve staging
and prod; Rosa (sre) may approve prod; Oliver (frontend) may not approve checkout-api.
"""

from __future__ import annotations

import re

from tests.conftest import Chat


def test_a_staging_deploy_is_requested_approved_run_and_summarised(chat: Chat) -> None:
    asked = chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")
    assert "Deploy checkout-api 1.4.2 to staging" in asked and "[1] Approve  [2] Reject" in asked

    ran = chat.as_("Marcus").say("1")

    assert "⏳ Running since" in ran and "approved by Marcus Oyelaran" in ran
    assert "✅ Succeeded in" in ran and "Summary and log in the thread." in ran
    assert "✅ Deploy checkout-api 1.4.2 to staging: succeeded" in ran  # the summary, in the deploys channel too
    assert "authenticating with token=***" in ran and "health checks passed" in ran


def test_the_requester_cannot_approve_and_someone_from_another_team_is_told_why(chat: Chat) -> None:
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")

    own = chat.say("1")
    other = chat.as_("Oliver").say("1")

    assert "you requested this; someone else has to approve it." in own
    assert "may approve checkout-api deploys to staging" in other
    assert "Running" not in own + other


def test_prod_waits_for_a_second_approver_and_a_rejection_ends_it(chat: Chat) -> None:
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 prod")

    first = chat.as_("Marcus").say("1")
    rejected = chat.as_("Rosa").say("2")

    assert "1 more approval(s) needed" in first
    assert "Rejected by Rosa" in rejected and "nothing ran" in rejected
    again = chat.as_("Priya").say("/deploy checkout-api 1.4.2 prod")
    assert "[3] Approve  [4] Reject" in again  # the lock was released; a new message's buttons, new numbers


def test_a_rollback_to_a_version_never_deployed_is_refused_and_a_failed_deploy_offers_one(chat: Chat) -> None:
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")
    chat.as_("Marcus").say("1")

    refused = chat.as_("Priya").say("/rollback checkout-api staging 9.9.9")
    asked_after_success = chat.say(
        "/deploy checkout-api 1.4.3-bad staging"
    )  # buttons [3] and [4]: numbers run on through the session
    failed = chat.as_("Marcus").say("3")
    offered = chat.as_("Priya").say("5")

    assert "9.9.9 never succeeded for checkout-api in staging" in refused and "newest first: 1.4.2." in refused
    assert "Deploy checkout-api 1.4.2 → 1.4.3-bad to staging: failed" in failed and "[5] Roll back to 1.4.2" in failed
    assert "Rollback checkout-api 1.4.3-bad → 1.4.2 to staging" in offered and "Approve  [" in offered
    assert "may be partly rolled out" not in asked_after_success  # the newest run succeeded: nothing to say


def test_messages_name_people_and_the_request_stops_asking_whoever_approved(chat: Chat) -> None:
    asked = chat.as_("Priya").say("/deploy checkout-api 1.4.2 prod")
    refused = chat.as_("Oliver").say("1")
    approved = chat.as_("Daniel").say("1")

    assert "needs 2 more from Marcus Oyelaran (payments), the sre team or Daniel Okafor;" in asked
    assert "only the payments team, the sre team or Daniel Okafor may approve checkout-api deploys to prod." in refused
    assert "U04C2RN8VD" not in refused
    assert (
        "Approvals: 1 of 2 (approved by Daniel Okafor) · needs 1 more from Marcus Oyelaran (payments) or the sre "
        "team;" in approved
    )
    assert "[1] Approve  [2] Reject" in approved  # the updated message's buttons keep their numbers


def test_a_request_left_waiting_by_a_closed_shell_is_shown_again_in_the_next_one(chat: Chat) -> None:
    from bot.shell.repl import Shell

    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")
    chat.shell.close()  # the session ends; its stand-in Slack, and the request's message, go with it
    deploys = chat.shell.runtime.deploys()
    in_slack = deploys.request("deploy", "payments-gateway", "staging", "2.3.1", "U03F8K2LQ1", channel="C0OPS0001")
    with deploys.store.transaction():  # as the bot serving a real workspace records its message
        deploys.store.update_deploy(in_slack.id, message_ts="1700000000.000200")

    out: list[str] = []
    with Shell(chat.shell.runtime, write=out.append) as shell:
        shell.show_pending()
        again = "\n".join(out)
        ran = Chat(shell, out).as_("Marcus").say("1")

    assert "1 deploy request(s) from an earlier session wait for approval" in again
    assert "Deploy checkout-api 1.4.2 to staging" in again and "[1] Approve  [2] Reject" in again
    assert "✅ Succeeded in" in ran and "approved by Marcus Oyelaran" in ran
    # a request made in a real workspace keeps its message there: never re-posted, never pointed elsewhere
    assert "payments-gateway" not in again and deploys.get(in_slack.id).message_ts == "1700000000.000200"


def test_in_opsbot_shell_one_login_is_one_person_whatever_name_it_acts_under(chat: Chat) -> None:
    # /user acts as anyone on the roster: before, one person at a terminal on the bot's database could request as
    # Priya and approve as Marcus, or approve a prod deploy as Marcus and as Rosa, and it ran.
    store = chat.shell.runtime.store
    store.audit_via = "opsbot shell (ops)"  # as `opsbot shell` marks what it writes (see test_cli)
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")

    refused = chat.as_("Marcus").say("1")

    assert "this login already requested" in refused and "as Priya Raman" in refused
    assert "one login is one person" in refused and "Running" not in refused
    store.audit_via = ""  # the same click from Slack: a second person
    assert "✅ Succeeded in" in chat.say("1")

    chat.as_("Priya").say("/deploy checkout-api 1.4.2 prod")  # requested in Slack this time
    store.audit_via = "opsbot shell (ops)"
    first = chat.as_("Marcus").say("3")
    twice = chat.as_("Rosa").say("3")
    again = chat.as_("Marcus").say("3")

    assert "1 more approval(s) needed" in first
    assert "this login already approved" in twice and "as Marcus Oyelaran" in twice and "Running" not in twice
    assert "you already decided; 1 more approval(s) needed." in again  # one's own second click, as in Slack
    refusals = [r for r in store.audit_rows() if r["action"] == "deploy.approve.refused"]
    assert [r["details"]["via"] for r in refusals] == ["opsbot shell (ops)"] * 2


def test_a_deploy_requested_after_a_failed_run_says_the_failed_version_may_be_partly_rolled_out(chat: Chat) -> None:
    # From: is the last version that succeeded; after a failed run, the failed version may run on some pods, and
    # the request said nothing of it.
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")
    chat.as_("Marcus").say("1")
    chat.as_("Priya").say("/deploy checkout-api 1.4.3-bad staging")
    chat.as_("Marcus").say("3")

    asked = chat.as_("Priya").say("/deploy checkout-api 1.4.4 staging")
    [approve] = re.findall(r"\[(\d+)\] Approve", asked)
    ran = chat.as_("Marcus").say(approve)

    assert "From: 1.4.2 · To: 1.4.4" in asked
    assert "1.4.3-bad, the newest run in staging, failed after 1.4.2 and may be partly rolled out" in asked
    assert "✅ Succeeded in" in ran and "may be partly rolled out" not in ran  # said while it waits, not after


def test_deploy_with_only_a_service_says_what_runs_where_and_what_waits(chat: Chat) -> None:
    # Before, `/deploy checkout-api` only said VERSION and ENV were missing: nothing in Slack said what ran in prod.
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 staging")
    chat.as_("Marcus").say("1")
    chat.as_("Priya").say("/deploy checkout-api 1.4.3-bad staging")
    chat.as_("Marcus").say("3")
    chat.as_("Priya").say("/deploy checkout-api 1.4.4 prod")

    shown = chat.say("/deploy checkout-api")
    unknown = chat.say("/deploy chekout-api")

    assert "checkout-api, by opsbot's record" in shown and "only visible to you" in shown
    assert re.search(r"staging: runs 1\.4\.2, `dep-\S+`, finished \S", shown), shown
    assert re.search(r"then 1\.4\.3-bad failed \(exit code 1\), `dep-\S+`, .+: it may be partly rolled out", shown)
    assert "prod: nothing deployed by opsbot yet" in shown
    assert re.search(r"deploy of 1\.4\.4 waiting for approval, `dep-\S+`, requested by Priya Raman", shown)
    assert "To deploy: `/deploy checkout-api VERSION ENV` · to roll back: `/rollback checkout-api ENV`." in shown
    assert "no deployable service 'chekout-api'" in unknown and "Did you mean checkout-api?" in unknown


def test_a_request_past_its_expiry_is_not_shown_as_waiting(chat: Chat) -> None:
    # Without `opsbot serve`'s sweep (the shell, or between two sweeps) an expired request still held the lock.
    chat.as_("Priya").say("/deploy checkout-api 1.4.2 prod")
    deploys = chat.shell.runtime.deploys()
    (waiting,) = [r for r in chat.shell.runtime.store.all_deploys() if r["status"] == "pending"]
    with deploys.store.transaction():
        deploys.store.update_deploy(waiting["id"], expires_at="2020-01-01T00:00:00+00:00")

    shown = chat.say("/deploy checkout-api")

    assert "waiting for approval" not in shown and "prod: nothing deployed by opsbot yet" in shown
    assert deploys.get(waiting["id"]).status == "expired"
