"""Action, block and callback ids: one place, so handlers and block builders agree."""

FEEDBACK_UP = "answer-helpful"
FEEDBACK_DOWN = "answer-unhelpful"
SHARE_ANSWER = "answer-share"
OPEN_SOURCE = "answer-open-source"
ANSWER_ACTIONS_BLOCK = "answer-actions"
INVITE_EXPERT = "experts-invite"
DEPLOY_APPROVE = "deploy-approve"
DEPLOY_REJECT = "deploy-reject"
DEPLOY_ACTIONS_BLOCK = "deploy-actions"
DEPLOY_NOTE_BLOCK = "deploy-note"
DEPLOY_ROLLBACK = "deploy-rollback"  # on the summary of a failed deploy
DEPLOY_EMERGENCY_BLOCK = "deploy-emergency"
INCIDENT_ROLLBACK = "incident-rollback"
INCIDENT_RESOLVE_VIEW = "incident-resolve"
INCIDENT_RESOLUTION_BLOCK = "incident-resolution"
INCIDENT_ROOT_CAUSE_BLOCK = "incident-root-cause"
INCIDENT_TEXT_INPUT = "incident-text"

# HTTP paths of `opsbot serve`
EVENTS_PATH = "/slack/events"
HEALTH_PATH = "/healthz"
