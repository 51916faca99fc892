"""What does not belong in alt text, as patterns: shared by caption cleaning (data) and the guideline metrics
(outputs), so both mean the same thing by a URL, a handle, a hashtag, an emoji or a redundant opening."""

from __future__ import annotations

import re

URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
HANDLE = re.compile(r"(?<![\w@])@\w{1,30}")
HASHTAG = re.compile(r"(?<![\w#&])#(\w*[^\W\d_]\w*)")  # `#pizza`, not `#1` or `&#39;`
# Emoji and pictographs (the Unicode emoji blocks, dingbats, flags, keycaps) and the joiners that build them.
EMOJI_CHARACTER = (
    "[\U0001f000-\U0001faff\U00002600-\U000027bf\U0001f1e6-\U0001f1ff\U00002b00-\U00002bff"
    "\u200d\ufe0f\u20e3\u2190-\u21ff\u2300-\u23ff]"
)
EMOJI = re.compile(EMOJI_CHARACTER + "+")
# Hashtags at the very end of a caption, with the spaces, line breaks, commas and emoji between them.
TRAILING_HASHTAGS = re.compile(rf"(?:{HASHTAG.pattern}(?:[\s,;.!?]|{EMOJI_CHARACTER})*)+\Z")
# "!!!", "?!?", ",,", and runs of dots ("..." is an ellipsis: kept; ".." and "...." are not).
REPEATED_MARKS = re.compile(r"([!?])[!?]+|([,;:])\2+|\.{2,}")
# The words that credit a handle or point to a link ("photo by @maria", "via www..."): left behind alone they
# would dangle ("photo by").
CREDIT = r"(?:\b(?:(?:photo|pic)\s+)?(?:by|via|from|with|at|on|cc|credit|h/t|see)(?:\s*:\s*|\s+))?"
CREDITED_HANDLE = re.compile(CREDIT + HANDLE.pattern, re.IGNORECASE)
CREDITED_URL = re.compile(CREDIT + URL.pattern, re.IGNORECASE)
# Screen readers already say "image" or "graphic": alt text that opens with it repeats them (WCAG, WebAIM).
# "image of", "A picture showing", "This is a photo of", "Photo: ..." (not "photo-realistic", not "Photos from").
REDUNDANT_OPENING = re.compile(
    r"^\s*(?:(?:this|here)\s+is\s+)?(?:an?\s+|the\s+)?(?:image|picture|photo|photograph|graphic|illustration|pic)"
    r"(?:\s+(?:of|showing|shows|that\s+shows|with|depicting)\s+|\s*[:\u2013\u2014-]\s+)",
    re.IGNORECASE,
)
