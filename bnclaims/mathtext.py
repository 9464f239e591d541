"""The TeX that forum threads contain, as HTML and Unicode (no JavaScript, no math library).

StackExchange posts write math as ``$\\gamma$`` (inline) and ``$$y = W \\hat{x}' + b$$``
(display), and wrap every post in ``$\\begingroup$ ... $\\endgroup$``. ``segments`` splits a
thread's text into plain text, math and that debris *without changing any offsets*, so quote
spans (character offsets into the raw text) still line up; ``tex_to_html`` converts one
piece of math: Greek letters and symbols to Unicode, ``_``/``^`` to ``<sub>``/``<sup>``,
``\\hat`` and friends to combining accents, ``\\mathcal`` to script letters, primes to ′.
Unknown commands are shown as written. Everything returned is escaped HTML (``Markup``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html import unescape

from markupsafe import Markup, escape

GREEK = {
    "alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ϵ", "varepsilon": "ε",
    "zeta": "ζ", "eta": "η", "theta": "θ", "vartheta": "ϑ", "iota": "ι", "kappa": "κ",
    "lambda": "λ", "mu": "μ", "nu": "ν", "xi": "ξ", "pi": "π", "varpi": "ϖ", "rho": "ρ",
    "varrho": "ϱ", "sigma": "σ", "varsigma": "ς", "tau": "τ", "upsilon": "υ", "phi": "ϕ",
    "varphi": "φ", "chi": "χ", "psi": "ψ", "omega": "ω",
    "Gamma": "Γ", "Delta": "Δ", "Theta": "Θ", "Lambda": "Λ", "Xi": "Ξ", "Pi": "Π",
    "Sigma": "Σ", "Upsilon": "Υ", "Phi": "Φ", "Psi": "Ψ", "Omega": "Ω",
}

SYMBOLS = {
    "cdot": "·", "times": "×", "div": "÷", "pm": "±", "mp": "∓", "leq": "≤", "le": "≤",
    "geq": "≥", "ge": "≥", "neq": "≠", "ne": "≠", "approx": "≈", "sim": "∼", "simeq": "≃",
    "equiv": "≡", "propto": "∝", "in": "∈", "notin": "∉", "subset": "⊂", "subseteq": "⊆",
    "cup": "∪", "cap": "∩", "to": "→", "rightarrow": "→", "leftarrow": "←", "Rightarrow": "⇒",
    "mapsto": "↦", "infty": "∞", "partial": "∂", "nabla": "∇", "sum": "∑", "prod": "∏",
    "int": "∫", "sqrt": "√", "ldots": "…", "cdots": "⋯", "dots": "…", "forall": "∀",
    "exists": "∃", "top": "⊤", "circ": "∘", "odot": "⊙", "otimes": "⊗", "oplus": "⊕",
    "ell": "ℓ", "prime": "′", "langle": "⟨", "rangle": "⟩", "lVert": "‖", "rVert": "‖",
    "Vert": "‖", "vert": "|", "mid": "|", "lbrace": "{", "rbrace": "}", "lfloor": "⌊",
    "rfloor": "⌋", "lceil": "⌈", "rceil": "⌉", "log": "log", "exp": "exp", "max": "max",
    "min": "min", "arg": "arg", "lim": "lim", "sin": "sin", "cos": "cos", "tanh": "tanh",
    "E": "E", "Var": "Var",
}
# Commands that only size or space things: dropped (spaces become one space).
IGNORED = {"left", "right", "big", "Big", "bigg", "Bigg", "bigl", "bigr", "Bigl", "Bigr",
           "displaystyle", "textstyle", "limits", "nolimits", "begingroup", "endgroup"}
SPACES = {"quad": "\u2003", "qquad": "\u2003\u2003", ",": "\u2009", ";": "\u2005", ":": "\u2005",
          " ": " ", "!": ""}
ACCENTS = {"hat": "\u0302", "widehat": "\u0302", "bar": "\u0304", "overline": "\u0305",
           "tilde": "\u0303", "widetilde": "\u0303", "vec": "\u20d7", "dot": "\u0307", "ddot": "\u0308"}
# Script capitals: most live at U+1D49C + i, but a few were encoded earlier in Letterlike Symbols.
_SCRIPT_HOLES = {"B": "ℬ", "E": "ℰ", "F": "ℱ", "H": "ℋ", "I": "ℐ", "L": "ℒ", "M": "ℳ", "R": "ℛ"}
_BLACKBOARD_HOLES = {"C": "ℂ", "H": "ℍ", "N": "ℕ", "P": "ℙ", "Q": "ℚ", "R": "ℝ", "Z": "ℤ"}
BINARY = {"=": "=", "+": "+", "-": "−", "<": "<", ">": ">", "±": "±", "×": "×", "·": "·",
          "≤": "≤", "≥": "≥", "≠": "≠", "≈": "≈", "→": "→", "∈": "∈", "∼": "∼", "≡": "≡", "∝": "∝",
          "⇒": "⇒", "↦": "↦"}

_TOKEN = re.compile(r"\\[A-Za-z]+|\\.|[{}^_']|\s+|.", re.DOTALL)


def script_letter(letter: str) -> str:
    if letter in _SCRIPT_HOLES:
        return _SCRIPT_HOLES[letter]
    if "A" <= letter <= "Z":
        return chr(0x1D49C + ord(letter) - ord("A"))
    return letter


def blackboard_letter(letter: str) -> str:
    if letter in _BLACKBOARD_HOLES:
        return _BLACKBOARD_HOLES[letter]
    if "A" <= letter <= "Z":
        return chr(0x1D538 + ord(letter) - ord("A"))
    return letter


class _Parser:
    """Recursive descent over TeX tokens, producing HTML strings (every text piece escaped)."""

    def __init__(self, tex: str):
        self.tokens = _TOKEN.findall(tex)
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        self.pos += 1
        return self.tokens[self.pos - 1]

    def skip_space(self) -> None:
        while self.peek() is not None and self.peek().isspace():
            self.pos += 1

    def sequence(self, closing: str | None = None) -> str:
        out: list[str] = []
        while True:
            token = self.peek()
            if token is None:
                return "".join(out)
            if token == "}":
                self.take()
                if closing == "}":
                    return "".join(out)
                continue  # an unbalanced brace: ignore it
            out.append(self.atom_with_scripts())

    def argument(self) -> tuple[str, str]:
        """One argument: a {group} or a single token. Returns (html, raw text)."""
        self.skip_space()
        token = self.peek()
        if token is None:
            return "", ""
        if token == "{":
            self.take()
            start = self.pos
            html = self.sequence("}")
            raw = "".join(self.tokens[start:self.pos - 1])
            return html, raw
        return self.atom(), token

    def atom_with_scripts(self) -> str:
        base = self.atom()
        while True:
            token = self.peek()
            if token == "'":
                self.take()
                base += "′"
            elif token in ("_", "^"):
                self.take()
                html, _ = self.argument()
                tag = "sub" if token == "_" else "sup"
                base += f"<{tag}>{html}</{tag}>"
            else:
                return base

    def atom(self) -> str:
        token = self.take()
        if token == "{":
            return self.sequence("}")
        if token.isspace():
            return ""
        if token in ("_", "^"):  # a script with no base: attach to nothing
            html, _ = self.argument()
            tag = "sub" if token == "_" else "sup"
            return f"<{tag}>{html}</{tag}>"
        if token == "'":
            return "′"
        if token.startswith("\\"):
            return self.command(token[1:])
        if token == ",":
            return ", "
        if token in BINARY:
            return f" {escape(BINARY[token])} "
        if token.isalpha() and token.isascii():
            return f"<i>{escape(token)}</i>"
        return str(escape(token))

    def command(self, name: str) -> str:
        if name in GREEK:
            return GREEK[name]
        if name in ACCENTS:
            html, raw = self.argument()
            raw = raw.strip()
            if len(raw) == 1 and raw.isalpha():
                inner = f"{escape(raw)}{ACCENTS[name]}"
                return f"<i>{inner}</i>" if raw.isascii() else inner
            if raw.startswith("\\") and raw[1:] in GREEK:
                return GREEK[raw[1:]] + ACCENTS[name]
            return f'<span class="accent-{name}">{html}</span>'
        if name == "mathcal" or name == "mathscr":
            _, raw = self.argument()
            return f'<span class="cal">{escape("".join(script_letter(c) for c in raw.strip()))}</span>'
        if name == "mathbb":
            _, raw = self.argument()
            return escape("".join(blackboard_letter(c) for c in raw.strip()))
        if name in ("text", "textrm", "mathrm", "operatorname", "textit", "mathit"):
            if name in ("text", "textrm", "textit"):
                self.skip_space()
                if self.peek() == "{":
                    self.take()
                    start = self.pos
                    depth = 1
                    while self.peek() is not None and depth:
                        token = self.take()
                        depth += {"{": 1, "}": -1}.get(token, 0)
                    raw = "".join(self.tokens[start:self.pos - (0 if depth else 1)])
                    return f'<span class="tx">{escape(raw)}</span>'
            html, _ = self.argument()
            return f'<span class="tx">{re.sub(r"</?i>", "", html)}</span>'
        if name in ("mathbf", "boldsymbol", "bm", "textbf"):
            html, _ = self.argument()
            return f"<b>{html}</b>"
        if name in ("frac", "dfrac", "tfrac"):
            num, _ = self.argument()
            den, _ = self.argument()
            return f'<span class="frac"><sup>{num}</sup>⁄<sub>{den}</sub></span>'
        if name == "sqrt":
            html, _ = self.argument()
            return f'√<span class="radicand">{html}</span>'
        if name in SYMBOLS:
            symbol = SYMBOLS[name]
            if symbol in BINARY:
                return f" {escape(symbol)} "
            return str(escape(symbol)) + (" " if symbol.isalpha() and len(symbol) > 1 else "")
        if name in SPACES:
            return SPACES[name]
        if name in IGNORED:
            return ""
        if len(name) == 1:  # \{ \} \$ \% \_ \& ...
            return str(escape(name))
        return f'<span class="tex">\\{escape(name)}</span>'


MAX_NESTING = 24  # deeper TeX (never seen in real text) is shown as written, not parsed


def _nesting(tex: str) -> int:
    depth = deepest = 0
    for char in tex:
        if char == "{":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "}":
            depth = max(0, depth - 1)
    return max(deepest, tex.count("^") + tex.count("_"))


def tex_to_html(tex: str, display: bool = False) -> Markup:
    """One piece of TeX (without its ``$`` delimiters) as an HTML span."""
    css = "math display" if display else "math"
    if _nesting(tex) > MAX_NESTING:
        return Markup(f'<span class="{css} tex">{escape(tex)}</span>')
    body = _Parser(tex).sequence()
    body = re.sub(r"  +", " ", body.replace("</i><i>", "")).strip()
    return Markup(f'<span class="{css}">{body}</span>')


def tex_to_text(tex: str) -> str:
    """The same conversion as plain Unicode text (for titles and alt texts)."""
    html = re.sub(r"<sup>(.*?)</sup>", lambda m: "^" + m.group(1) if len(m.group(1)) > 1 else _superscript(m.group(1)),
                  str(tex_to_html(tex)))
    html = re.sub(r"<sub>(.*?)</sub>", lambda m: "_" + m.group(1), html)
    return unescape(re.sub(r"<[^>]+>", "", html))


def _superscript(text: str) -> str:
    table = str.maketrans("0123456789-+n", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺ⁿ")
    return text.translate(table) if all(c in "0123456789-+n" for c in text) else "^" + text


# --------------------------------------------------------------------------- thread text

@dataclass(frozen=True)
class Segment:
    """A piece of a thread's raw text: [start, end) offsets, what it is, and its HTML if math."""

    start: int
    end: int
    kind: str  # "text", "math" (inline), "display", "drop" (StackExchange $\begingroup$ debris)
    html: Markup | None = None
    tex: str = ""


_GREEK_NAMES = "|".join(sorted(GREEK, key=len, reverse=True))
_MATH = re.compile(
    r"(?P<drop>\$\\(?:begingroup|endgroup)\$)"
    r"|(?P<display>\$\$(?P<dtex>[^$]{1,2000}?)\$\$)"
    r"|(?P<inline>\$(?P<itex>(?!\s)[^$\n]{1,500}?)(?<![\s\\])\$)"
    r"|(?P<bare>\\(?:" + _GREEK_NAMES + r")(?![A-Za-z]))"
)


def segments(text: str) -> list[Segment]:
    """Split ``text`` into segments covering it exactly, in order (offsets are preserved)."""
    out: list[Segment] = []
    position = 0
    for match in _MATH.finditer(text):
        if match.start() > position:
            out.append(Segment(position, match.start(), "text"))
        if match.group("drop"):
            out.append(Segment(match.start(), match.end(), "drop"))
        elif match.group("display"):
            out.append(Segment(match.start(), match.end(), "display", tex_to_html(match.group("dtex"), True),
                               match.group("dtex")))
        elif match.group("inline"):
            out.append(Segment(match.start(), match.end(), "math", tex_to_html(match.group("itex")), match.group("itex")))
        else:  # a bare \beta outside dollars, as some forums write it
            out.append(Segment(match.start(), match.end(), "math", tex_to_html(match.group("bare")), match.group("bare")))
        position = match.end()
    if position < len(text):
        out.append(Segment(position, len(text), "text"))
    return out


def prose_to_text(text: str) -> str:
    """``text`` with its math converted to Unicode and debris removed (for titles)."""
    parts = []
    for seg in segments(text):
        if seg.kind == "text":
            parts.append(text[seg.start:seg.end])
        elif seg.kind != "drop":
            parts.append(tex_to_text(seg.tex))
    return "".join(parts)
