"""Action, block and callback ids: one place, so handlers and block builders agree."""

FEEDBACK_UP = "answer-helpful"
FEEDBACK_DOWN = "answer-unhelpful"
SHARE_ANSWER = "answer-share"
OPEN_SOURCE = "answer-open-source"
ANSWER_ACTIONS_BLOCK = "answer-actions"
INVITE_EXPERT = "experts-invite"
