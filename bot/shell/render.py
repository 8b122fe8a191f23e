"""Slack messages as terminal text: mrkdwn, Block Kit blocks and numbered buttons (pure functions)."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from textwrap import indent
from typing import Any

from bot.slack.blocks.mrkdwn import as_typed
from bot.text import TERMINAL_CONTROL

Style = Callable[..., str]  # click.style's signature: style(text, bold=True, dim=True, fg="red", ...)


def plain(text: str, **_: Any) -> str:
    """The style that adds nothing: for tests, pipes and files."""
    return text


# What a terminal would act on rather than show, in text that came from elsewhere (a pasted line, an alert payload's
# annotations, a runbook): control characters but line breaks and tabs, and the bidirectional overrides and isolates
# that reorder how the rest of a line reads. Colour codes (as click.style writes them) are the only escapes kept.
COLOUR = r"\x1b\[[0-9;]*m"
UNSHOWABLE = re.compile(rf"({COLOUR})|{TERMINAL_CONTROL}")


def terminal_safe(text: str) -> str:
    """``text`` with what a terminal would act on shown as a code instead (``<U+202E>``, ``<U+001B>``)."""
    return UNSHOWABLE.sub(lambda m: m.group(1) or f"<U+{ord(m.group(0)):04X}>", text)


# The emoji codes opsbot's own messages use (tests/shell/test_repl.py checks every one in bot/ is here), and
# common ones people type; Slack draws them, so the shell does too. An unknown code stays as typed.
EMOJI = {
    "loudspeaker": "📢",
    "no_bell": "🔕",
    "+1": "👍",
    "thumbsup": "👍",
    "-1": "👎",
    "thumbsdown": "👎",
    "white_check_mark": "✅",
    "heavy_check_mark": "✔️",
    "x": "❌",
    "warning": "⚠️",
    "rotating_light": "🚨",
    "rocket": "🚀",
    "rewind": "⏪",
    "fire": "🔥",
    "hourglass": "⌛",
    "hourglass_flowing_sand": "⏳",
    "alarm_clock": "⏰",
    "grey_question": "❔",
    "question": "❓",
    "information_source": "ℹ️",
    "memo": "📝",
    "pager": "📟",
    "bust_in_silhouette": "👤",
    "busts_in_silhouette": "👥",
    "pushpin": "📌",
    "round_pushpin": "📍",
    "mag": "🔍",
    "bulb": "💡",
    "tada": "🎉",
    "no_entry": "⛔",
    "no_entry_sign": "🚫",
    "octagonal_sign": "🛑",
    "stop_sign": "🛑",
    "eyes": "👀",
    "bell": "🔔",
    "calendar": "📆",
    "clipboard": "📋",
    "link": "🔗",
    "lock": "🔒",
    "unlock": "🔓",
    "wrench": "🔧",
    "hammer_and_wrench": "🛠️",
    "construction": "🚧",
    "chart_with_upwards_trend": "📈",
    "chart_with_downwards_trend": "📉",
    "bar_chart": "📊",
    "speech_balloon": "💬",
    "arrow_right": "➡️",
    "arrows_counterclockwise": "🔄",
    "repeat": "🔁",
    "leftwards_arrow_with_hook": "↩️",
    "large_green_circle": "🟢",
    "large_yellow_circle": "🟡",
    "large_orange_circle": "🟠",
    "red_circle": "🔴",
    "white_circle": "⚪",
    "sos": "🆘",
    "zap": "⚡",
    "ambulance": "🚑",
    "checkered_flag": "🏁",
    "wastebasket": "🗑️",
    "label": "🏷️",
    "sparkles": "✨",
    "thinking_face": "🤔",
    "pray": "🙏",
    "wave": "👋",
    "ok_hand": "👌",
    "heart": "❤️",
    "smile": "😄",
    "slightly_smiling_face": "🙂",
}
EMOJI_CODE = re.compile(r":([a-z0-9_+-]+):")
CODE_BLOCK = re.compile(r"```(.*?)```", re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]+`")
ANGLE = re.compile(r"<([^<>\n]+)>")
BOLD = re.compile(r"(?<![\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])")
ITALIC = re.compile(r"(?<![\w_])_(?=\S)([^_\n]*?\S)_(?![\w_])")
STRIKE = re.compile(r"(?<![\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])")
PLACEHOLDER = re.compile("\ue000(\\d+)\ue001")
PLACEHOLDER_CHARS = re.compile("[\ue000\ue001]")  # private use: a Nerd-Font glyph may hold them too


@dataclass(frozen=True)
class Button:
    """A button as the shell shows it, with what Slack sends back when it is clicked."""

    label: str
    action_id: str
    value: str = ""
    block_id: str = ""
    url: str = ""
    style: str = ""


def render_emoji(text: str) -> str:
    """Common :shortcodes: as the emoji Slack shows; unknown ones stay as typed."""
    return EMOJI_CODE.sub(lambda m: EMOJI.get(m.group(1), m.group(0)), text)


def _render_angle(token: str, names: Mapping[str, str], style: Style) -> str:
    """One <...> token: a mention, a channel, a special mention or a link (``names``: people's and channels'
    Slack ids to their names)."""
    target, _, label = token.partition("|")
    if target.startswith("@"):
        return "@" + (label or names.get(target[1:], target[1:]))
    if target.startswith("#"):
        return "#" + (label or names.get(target[1:], target[1:]))
    if target.startswith("!"):
        return label or "@" + target[1:].split("^")[0]
    if not label or label == target:
        return style(target, fg="blue")
    return f"{label} ({style(target, fg='blue')})"


def render_mrkdwn(text: str, names: Mapping[str, str] | None = None, style: Style = plain) -> str:
    """Slack mrkdwn as terminal text: links as "label (url)", mentions by name, styles, quotes indented."""
    names = names or {}
    kept: list[str] = []

    def restore(text: str) -> str:
        return PLACEHOLDER.sub(lambda m: kept[int(m.group(1))], text)

    def keep(rendered: str) -> str:
        kept.append(restore(rendered))  # kept whole: never scanned for placeholders again
        return f"\ue000{len(kept) - 1}\ue001"

    # The text's own placeholder characters are kept first, so every placeholder left in it is one of ours.
    text = PLACEHOLDER_CHARS.sub(lambda m: keep(m.group(0)), text)
    # Code and <...> tokens next, so no *, _ or ~ inside them is read as a style.
    text = CODE_BLOCK.sub(lambda m: keep(indent(style(m.group(1).strip("\n"), fg="cyan"), "    ")), text)
    text = CODE_SPAN.sub(lambda m: keep(style(m.group(0), fg="cyan")), text)
    text = ANGLE.sub(lambda m: keep(_render_angle(m.group(1), names, style)), text)
    text = render_emoji(text)
    lines = []
    for line in text.split("\n"):
        if line.startswith(">"):
            line = style("  │ ", dim=True) + line[1:].lstrip(" ")
        lines.append(line)
    text = "\n".join(lines)
    text = BOLD.sub(lambda m: style(m.group(1), bold=True), text)
    text = ITALIC.sub(lambda m: style(m.group(1), italic=True), text)
    text = STRIKE.sub(lambda m: style(m.group(1), strikethrough=True), text)
    return as_typed(restore(text))


def render_text_object(
    obj: Mapping[str, Any] | None, names: Mapping[str, str] | None = None, style: Style = plain
) -> str:
    """A Block Kit text object: mrkdwn rendered, plain_text as written (with its emoji)."""
    if not obj:
        return ""
    if obj.get("type") == "mrkdwn":
        return render_mrkdwn(str(obj.get("text", "")), names, style)
    return render_emoji(str(obj.get("text", "")))


def _rich_text(element: Mapping[str, Any], names: Mapping[str, str]) -> str:
    """Best-effort text of a rich_text element tree."""
    kind = element.get("type")
    if kind == "text":
        return str(element.get("text", ""))
    if kind == "link":
        return str(element.get("text") or element.get("url", ""))
    if kind == "user":
        return "@" + names.get(str(element.get("user_id", "")), str(element.get("user_id", "")))
    if kind == "channel":
        return "#" + names.get(str(element.get("channel_id", "")), str(element.get("channel_id", "")))
    if kind == "emoji":
        return render_emoji(f":{element.get('name', '')}:")
    return "".join(_rich_text(e, names) for e in element.get("elements", []))


Numbering = Callable[[Button], int]  # the number a button is shown with, so it can be pressed by it


def render_blocks(
    blocks: Iterable[Mapping[str, Any]],
    names: Mapping[str, str] | None = None,
    style: Style = plain,
    first: int = 1,
    number: Numbering | None = None,
) -> tuple[str, list[Button]]:
    """Blocks as terminal text, and their buttons in the order shown, as [first], [first + 1] ... or as
    ``number`` numbers each (``names``: people's and channels' Slack ids to their names)."""
    names = names or {}
    lines: list[str] = []
    buttons: list[Button] = []

    def numbered(element: Mapping[str, Any], block_id: str) -> str:
        """A button element as "[n] label", remembered for pressing."""
        button = Button(
            label=render_text_object(element.get("text"), names),
            action_id=str(element.get("action_id", "")),
            value=str(element.get("value", "")),
            block_id=block_id,
            url=str(element.get("url", "")),
            style=str(element.get("style", "")),
        )
        buttons.append(button)
        label = f"[{number(button) if number else first + len(buttons) - 1}] {button.label}"
        colour = {"primary": "green", "danger": "red"}.get(button.style)
        shown = style(label, bold=True, fg=colour) if colour else style(label, bold=True)
        return shown + (f" ({button.url})" if button.url else "")

    def element_text(element: Mapping[str, Any], block_id: str) -> str:
        """An interactive element: buttons numbered, menus and pickers named as unavailable."""
        kind = element.get("type")
        if kind == "button":
            return numbered(element, block_id)
        if kind == "image":
            return f"[image: {element.get('alt_text', '')}]"
        what = render_text_object(element.get("placeholder"), names) or str(kind).replace("_", " ")
        return style(f"({what}: not available in the shell)", dim=True)

    for block in blocks:
        kind = block.get("type")
        block_id = str(block.get("block_id", ""))
        if kind == "section":
            parts = [render_text_object(block.get("text"), names, style)]
            parts += [render_text_object(f, names, style) for f in block.get("fields", [])]
            accessory = block.get("accessory")
            if accessory and accessory.get("type") != "image":
                parts.append(element_text(accessory, block_id))
            lines.append("\n".join(p for p in parts if p))
        elif kind == "header":
            lines.append(style(render_text_object(block.get("text"), names), bold=True, underline=True))
        elif kind == "divider":
            lines.append(style("─" * 40, dim=True))
        elif kind == "context":
            texts = [
                f"[{e.get('alt_text', 'image')}]" if e.get("type") == "image" else render_text_object(e, names)
                for e in block.get("elements", [])
            ]
            lines.append(style("  ".join(t for t in texts if t), dim=True))
        elif kind == "actions":
            lines.append("  ".join(element_text(e, block_id) for e in block.get("elements", [])))
        elif kind == "image":
            lines.append(f"[image: {block.get('alt_text', '')}] ({block.get('image_url', '')})")
        elif kind == "input":
            label = render_text_object(block.get("label"), names)
            lines.append(f"{label}: " + style("(a form field: not available in the shell)", dim=True))
        elif kind == "rich_text":
            lines.append(_rich_text(block, names))
        else:
            lines.append(style(f"(a {kind} block)", dim=True))
    shown = [line for line in lines if line]
    # A blank line after each multi-line block, so answers with several documents stay readable.
    spaced = [f"{line}\n" if "\n" in line and n < len(shown) - 1 else line for n, line in enumerate(shown)]
    return "\n".join(spaced), buttons


@dataclass
class Post:
    """One thing opsbot showed: a message, an ephemeral message, an update, or a one-line note."""

    text: str = ""
    blocks: list[dict] = field(default_factory=list)
    channel: str = ""
    ts: str = ""
    thread_ts: str = ""
    ephemeral: bool = False
    updated: bool = False
    note: str = ""  # shown instead of a message, e.g. when opsbot removed one


def render_post(
    post: Post,
    names: Mapping[str, str] | None = None,
    style: Style = plain,
    first: int = 1,
    channel_names: Mapping[str, str] | None = None,
    home: str = "",
    number: Numbering | None = None,
) -> tuple[str, list[Button]]:
    """A post with a header saying who can see it and where (unless in ``home``); buttons numbered from ``first``
    or by ``number``."""
    if post.note:
        return style(f"({render_mrkdwn(post.note, names)})", dim=True), []
    if post.blocks:
        body, buttons = render_blocks(post.blocks, names, style, first, number)
    else:
        body, buttons = render_mrkdwn(post.text, names, style), []
    tags = []
    if post.ephemeral:
        tags.append("only visible to you")
    if post.thread_ts:
        tags.append("reply in thread")
    if post.updated:
        tags.append("updated")
    if post.channel and post.channel != home:
        tags.append("in #" + (channel_names or {}).get(post.channel, post.channel))
    header = style("opsbot", bold=True, fg="magenta") + (style(" · " + " · ".join(tags), dim=True) if tags else "")
    return f"{header}\n{indent(body, '  ')}", buttons
