//! Unicode and Arabic normalisation with a map back to the original text.
//!
//! [`normalize`] produces the text the PII guardrail scans; [`Normalized::to_original`] turns a
//! span found in it into the span of the original text that produced it, so that reports and
//! redactions point at what the user actually sent.
//!
//! # What changes
//!
//! In this order, per segment (below):
//!
//! 1. **Removed before composition**, because they are invisible or carry no letter and would
//!    otherwise split a token (`٠٥٥ـ١٢٣` or `a\u{200B}@b.com` must still be found) or block
//!    a composition:
//!    - tatweel (kashida) U+0640, and the presentation forms that are only tatweel and harakat
//!      (U+FE71, U+FE77, U+FE79, U+FE7B, U+FE7D, U+FE7F, U+FCF2–U+FCF4);
//!    - Arabic diacritics: harakat U+064B–U+0652 and U+0656–U+065F, superscript alef U+0670,
//!      Quranic annotation marks U+06D6–U+06DC, U+06DF–U+06E4, U+06E7–U+06E8, U+06EA–U+06ED;
//!    - invisible formatting characters: U+200B–U+200F (zero-width space, non-joiner, joiner,
//!      LRM, RLM), U+061C (ALM), U+202A–U+202E and U+2066–U+2069 (bidi embeddings, overrides,
//!      isolates), U+2060–U+2065 (word joiner, invisible operators), U+FEFF (BOM), U+00AD (soft
//!      hyphen), U+034F (combining grapheme joiner), U+180E (Mongolian vowel separator),
//!      variation selectors U+FE00–U+FE0F and U+E0100–U+E01EF, tags U+E0001 and
//!      U+E0020–U+E007F;
//!    - control characters other than tab, line feed, vertical tab, form feed, carriage return
//!      and NEL (U+0085): C0, DEL and C1 carry nothing a reader sees, so like the invisibles they
//!      only serve to split a token.
//! 2. **NFKC**: full-width letters and digits become ASCII (`ＳＡ０３` → `SA03`), Arabic
//!    presentation forms become base letters (`ﻣﺤﻤﺪ` → `محمد`, `ﻻ` → `لا`, `ﷲ` → `الله`), ligatures
//!    decompose (`ﬁ` → `fi`), no-break and other spaces become U+0020, and canonically equivalent
//!    spellings become one: `ا` followed by U+0654 (hamza above) is `أ`, exactly like the
//!    precomposed letter.
//! 3. **Removed after composition**: hamza above/below and maddah (U+0653–U+0655) left over on a
//!    letter that has no precomposed form, and any diacritic or invisible that a compatibility
//!    form decomposed into (`ﹰ` U+FE70 is a space and a fathatan: the space stays). If this step
//!    removed anything, NFKC runs again so that the result is stable.
//! 4. **Mapped**: Arabic-Indic digits U+0660–U+0669 and Extended Arabic-Indic (Persian, Urdu)
//!    digits U+06F0–U+06F9 become ASCII `0`–`9`; the Arabic decimal separator U+066B becomes `.`
//!    and the Arabic thousands separator U+066C becomes `,`.
//!
//! The Arabic comma U+060C stays as it is. It separates clauses and list items, never digit
//! groups (that is U+066C's job), so turning it into `,` would make a list of two numbers such as
//! `١٢٣،٤٥٦` read as the single grouped number `123,456` to a number, card or phone detector.
//!
//! Digits of other scripts (Devanagari, Bengali, Thai, ...) are not mapped, and Latin case is
//! kept, unless [`NormalizeOptions::search_folds`] is on: then alef variants (`أ إ آ ٱ`) become
//! `ا`, alef maqsura `ى` becomes `ي`, teh marbuta `ة` becomes `ه`, and Latin letters are
//! lowercased. These folds lose information a reader would keep apart, so they are for search
//! and the lexical index, not for PII detection.
//!
//! Normalisation is idempotent: normalising its own output changes nothing.
//!
//! # Segments and the map
//!
//! NFKC can merge several original characters into one (`e` + U+0301 → `é`), or expand one into
//! many (`ﷺ` becomes an 18-character phrase). To keep a map to the original exact, the original
//! is cut into segments that NFKC treats independently: a segment starts at every character
//! whose decomposition begins with a starter that never combines with what precedes it, and
//! takes the combining characters after it (the removed characters of step 1 are skipped first,
//! so they never start a segment; removed combining marks such as harakat do end one, so that a
//! letter's source includes its vowels). Each segment is normalised on its own, which gives the
//! same text as normalising the whole at once.
//!
//! A segment whose output has the same bytes as its source, or is one character of the same
//! length as its single source character, is *aligned*: byte offsets inside it map one to one.
//! Aligned segments next to each other in both texts are merged. Any other segment is *atomic*:
//! any part of its output maps to the whole of its source, because `é` cannot be split back into
//! `e` and its accent. Removed starters between segments (tatweel, invisibles, controls) map to
//! nothing, so the range that [`Normalized::to_original`] returns is the smallest one that
//! produced the given text: a span of a phone number starts at its first digit even when a bidi
//! mark precedes it, and ends at its last digit (with that digit's marks, if any).
//!
//! The map is a sorted list of these pieces, recorded only from the first place where offsets
//! stop meaning the same in both texts, and looked up by binary search. ASCII without control
//! characters, which is most prompts, skips all of this: the text is copied (lowercased under
//! search folds) and the map stays empty.

use std::iter;
use std::ops::Range;

use unicode_normalization::char::{canonical_combining_class, decompose_compatible};
use unicode_normalization::{is_nfkc_quick, IsNormalized, UnicodeNormalization};

/// What [`normalize_with`] does beyond the fixed steps described in the [module docs](self).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NormalizeOptions {
    /// Fold for search: alef variants `أ إ آ ٱ` → `ا`, alef maqsura `ى` → `ي`, teh marbuta `ة` →
    /// `ه`, and Latin letters to lower case. Off by default, which is what PII detection wants.
    pub search_folds: bool,
}

impl NormalizeOptions {
    /// The defaults, for PII detection: no search folds.
    pub const DETECTION: Self = Self {
        search_folds: false,
    };

    /// For search and the lexical index: search folds on.
    pub const SEARCH: Self = Self { search_folds: true };
}

/// Normalises `text` with the defaults, which fit PII detection ([`NormalizeOptions::DETECTION`]).
///
/// ```
/// let original = "رقمي ٠٥٥ـ١٢٣\u{200F}٤٥٦٧";
/// let n = isnad_ingest::normalize(original);
/// assert_eq!(n.text(), "رقمي 0551234567");
/// let found = n.text().find("0551234567").unwrap();
/// let span = n.to_original(found..n.text().len());
/// assert_eq!(&original[span], "٠٥٥ـ١٢٣\u{200F}٤٥٦٧");
/// ```
pub fn normalize(text: &str) -> Normalized {
    normalize_with(text, NormalizeOptions::DETECTION)
}

/// Normalises `text` with `options`; see the [module docs](self) for what changes.
pub fn normalize_with(text: &str, options: NormalizeOptions) -> Normalized {
    // Fast path: printable ASCII and ordinary whitespace are already normal (nothing in them is
    // removed, composed or mapped), so offsets are the same in both texts and no map is needed.
    if text.bytes().all(is_plain_ascii) {
        let out = if options.search_folds {
            text.to_ascii_lowercase()
        } else {
            text.to_owned()
        };
        return Normalized {
            text: out,
            original_len: text.len(),
            map: Vec::new(),
        };
    }

    let mut builder = Builder {
        src: text,
        options,
        text: String::with_capacity(text.len()),
        map: Vec::new(),
        diverged: false,
        out: String::new(),
        tmp: String::new(),
    };
    // The characters of the segment being collected (removed characters left out), and the
    // range of the original from its first to its last collected character.
    let mut segment = String::new();
    let mut source = 0..0;
    for (at, c) in text.char_indices() {
        let end = at + c.len_utf8();
        if removed_before_composition(c) {
            // A removed combining mark (a haraka) still belongs to the letter before it: a span
            // that ends on that letter takes its marks along, so redacting `مُحَمَّدٌ` leaves no
            // orphaned tanween behind. Removed starters (tatweel, invisibles) stay outside.
            if !segment.is_empty() && canonical_combining_class(c) != 0 {
                source.end = end;
            }
            continue;
        }
        if !segment.is_empty() && !starts_segment(c) {
            segment.push(c);
            source.end = end;
            continue;
        }
        if !segment.is_empty() {
            builder.push_segment(source.clone(), &segment);
            segment.clear();
        }
        segment.push(c);
        source = at..end;
    }
    if !segment.is_empty() {
        builder.push_segment(source, &segment);
    }
    Normalized {
        text: builder.text,
        original_len: text.len(),
        map: builder.map,
    }
}

/// Normalised text, and the map from its byte offsets back to the original's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized {
    text: String,
    original_len: usize,
    /// Pieces in order of `norm`, each covering the normalised text up to the next one; the
    /// first starts at 0. Empty when every offset of the normalised text means the same in the
    /// original (which may go on with removed characters only).
    map: Vec<Piece>,
}

/// A stretch of the normalised text and the stretch of the original that produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Piece {
    /// Where the stretch starts in the normalised text; it ends where the next piece starts, or
    /// at the end of the text.
    norm: usize,
    /// Where its source starts in the original.
    orig: usize,
    /// Where its source ends in the original. Removed characters after it belong to no piece.
    orig_end: usize,
    /// Offsets inside the stretch are the same in both texts. Otherwise the piece is atomic.
    aligned: bool,
}

impl Normalized {
    /// The normalised text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The normalised text, taking it out of the map.
    pub fn into_text(self) -> String {
        self.text
    }

    /// The length in bytes of the original text.
    pub fn original_len(&self) -> usize {
        self.original_len
    }

    /// Whether every byte offset means the same in both texts, so that [`Self::to_original`]
    /// returns its argument. True for ASCII without control characters, and for any text that
    /// normalisation left unchanged; under search folds, Latin case may still differ.
    pub fn is_identity(&self) -> bool {
        self.map.is_empty() && self.text.len() == self.original_len
    }

    /// Maps a byte range of the normalised text to the smallest byte range of the original text
    /// that produced it.
    ///
    /// The result always lies on char boundaries of the original, and grows with its argument:
    /// a larger range maps to a range at least as large. A range that covers part of a character
    /// made from several original characters (`é` from `e` + U+0301, the digits of `①`) covers
    /// all of them. Removed characters at either end (a bidi mark before a phone number, a
    /// zero-width space after an email) are left out, except the diacritics of the last letter;
    /// those inside are included.
    ///
    /// The argument is made sane rather than refused: ends past the text are clamped to it, a
    /// start inside a character moves back to that character's start and an end inside one moves
    /// forward to its end, and a reversed range is empty at its start. An empty range maps to an
    /// empty range where the next normalised character's source starts (or where the last one's
    /// ends, at the end of the text).
    pub fn to_original(&self, range: Range<usize>) -> Range<usize> {
        let len = self.text.len();
        let start = self.text.floor_char_boundary(range.start.min(len));
        let end = self.text.ceil_char_boundary(range.end.min(len)).max(start);
        if start == end {
            let at = if start < len {
                self.orig_start(start)
            } else {
                self.orig_end(len)
            };
            return at..at;
        }
        self.orig_start(start)..self.orig_end(end)
    }

    /// The piece holding the byte at `at`, which is inside the text; `None` when the map is empty.
    fn piece_at(&self, at: usize) -> Option<&Piece> {
        let after = self.map.partition_point(|piece| piece.norm <= at);
        // The first piece starts at 0, so `after` is at least 1 for any `at` when the map is
        // not empty; `checked_sub` keeps an empty map (or a broken invariant) from panicking.
        self.map.get(after.checked_sub(1)?)
    }

    /// Where the source of the normalised byte at `at` (inside the text) starts.
    fn orig_start(&self, at: usize) -> usize {
        match self.piece_at(at) {
            None => at,
            Some(piece) if piece.aligned => piece.orig + (at - piece.norm),
            Some(piece) => piece.orig,
        }
    }

    /// Where the source of the normalised byte before `end` ends; 0 for the empty text.
    fn orig_end(&self, end: usize) -> usize {
        let Some(last) = end.checked_sub(1) else {
            return 0;
        };
        match self.piece_at(last) {
            None => end,
            Some(piece) if piece.aligned => piece.orig + (end - piece.norm),
            Some(piece) => piece.orig_end,
        }
    }
}

/// Collects the normalised text and the map, one segment at a time.
struct Builder<'a> {
    src: &'a str,
    options: NormalizeOptions,
    text: String,
    map: Vec<Piece>,
    /// Whether offsets have stopped meaning the same in both texts. Until they do, nothing is
    /// recorded.
    diverged: bool,
    /// Scratch buffers for one segment, kept to reuse their allocations.
    out: String,
    tmp: String,
}

impl Builder<'_> {
    /// Normalises one segment: `chars` are its characters without the removed ones, `source`
    /// the range of the original from the first to the last of them.
    fn push_segment(&mut self, source: Range<usize>, chars: &str) {
        // Most segments are one character that NFKC leaves alone: skip the NFKC machinery.
        let mut iter = chars.chars();
        if let (Some(c), None) = (iter.next(), iter.next()) {
            if let Some(mapped) = map_single(c, self.options) {
                let aligned = mapped.len_utf8() == source.len();
                let mut buf = [0; 4];
                return self.push(source, mapped.encode_utf8(&mut buf), aligned);
            }
        }

        let mut out = std::mem::take(&mut self.out);
        normalize_segment(chars, self.options, &mut out, &mut self.tmp);
        let aligned = out.len() == source.len() && {
            let original = self.src.get(source.clone()).unwrap_or_default();
            out == original || (single_char(&out) && single_char(original))
        };
        self.push(source, &out, aligned);
        self.out = out;
    }

    fn push(&mut self, source: Range<usize>, out: &str, aligned: bool) {
        if !self.diverged {
            if aligned && source.start == self.text.len() {
                // Offsets still mean the same in both texts: nothing to record.
                self.text.push_str(out);
                return;
            }
            self.diverged = true;
            if !self.text.is_empty() {
                self.map.push(Piece {
                    norm: 0,
                    orig: 0,
                    orig_end: self.text.len(),
                    aligned: true,
                });
            }
        }
        if out.is_empty() {
            return;
        }
        if aligned {
            if let Some(last) = self.map.last_mut() {
                if last.aligned && last.orig_end == source.start {
                    last.orig_end = source.end;
                    self.text.push_str(out);
                    return;
                }
            }
        }
        self.map.push(Piece {
            norm: self.text.len(),
            orig: source.start,
            orig_end: source.end,
            aligned,
        });
        self.text.push_str(out);
    }
}

/// The normalised form of a segment that is the single character `c`, when it is one character
/// and can be had without running NFKC.
fn map_single(c: char, options: NormalizeOptions) -> Option<char> {
    if c.is_ascii() {
        return Some(if options.search_folds {
            c.to_ascii_lowercase()
        } else {
            c
        });
    }
    if is_common_arabic_letter(c) {
        return Some(map_char(c, options).unwrap_or(c));
    }
    if removed_after_composition(c) || is_nfkc_quick(iter::once(c)) != IsNormalized::Yes {
        return None;
    }
    if let Some(mapped) = map_char(c, options) {
        return Some(mapped);
    }
    if options.search_folds && is_latin(c) {
        let mut lower = c.to_lowercase();
        return match (lower.next(), lower.next()) {
            (Some(l), None) if is_nfkc_quick(iter::once(l)) == IsNormalized::Yes => Some(l),
            _ => None,
        };
    }
    Some(c)
}

/// Normalises one segment into `out`, using `tmp` as scratch.
fn normalize_segment(chars: &str, options: NormalizeOptions, out: &mut String, tmp: &mut String) {
    out.clear();
    out.extend(chars.chars().nfkc());
    // Removing a character or lowercasing can make two neighbours compose that did not before
    // (`a`, U+0654, U+0301: the hamza blocked the acute), so NFKC runs again until nothing is
    // removed. Two rounds suffice: after the first, nothing NFKC produces is ever removed.
    // The bound only guards against a Unicode surprise; the last round always ends mapped.
    const MAX_ROUNDS: usize = 4;
    for round in 1.. {
        let again = remove_and_map(out, tmp, options);
        if !again || round == MAX_ROUNDS {
            break;
        }
        tmp.clear();
        tmp.extend(out.chars().nfkc());
        std::mem::swap(out, tmp);
    }
}

/// Steps 3 and 4 of the module docs on NFKC output in `out`. Returns whether NFKC has to run
/// again (something was removed or lowercased).
fn remove_and_map(out: &mut String, tmp: &mut String, options: NormalizeOptions) -> bool {
    tmp.clear();
    let mut again = false;
    for c in out.chars() {
        if removed_after_composition(c) {
            again = true;
        } else if let Some(mapped) = map_char(c, options) {
            tmp.push(mapped);
        } else if options.search_folds && is_latin(c) {
            for l in c.to_lowercase() {
                again |= l != c;
                tmp.push(l);
            }
        } else {
            tmp.push(c);
        }
    }
    std::mem::swap(out, tmp);
    again
}

/// Digits and separators always; the Arabic search folds when asked. None of the results
/// composes with anything, so mapping never calls for another NFKC round.
fn map_char(c: char, options: NormalizeOptions) -> Option<char> {
    match c {
        '\u{0660}'..='\u{0669}' => char::from_digit(u32::from(c) - 0x0660, 10),
        '\u{06F0}'..='\u{06F9}' => char::from_digit(u32::from(c) - 0x06F0, 10),
        '\u{066B}' => Some('.'),
        '\u{066C}' => Some(','),
        _ if !options.search_folds => None,
        'أ' | 'إ' | 'آ' | 'ٱ' => Some('ا'),
        'ى' => Some('ي'),
        'ة' => Some('ه'),
        _ => None,
    }
}

/// ASCII bytes that normalisation never changes: printable characters and the whitespace
/// controls (tab, line feed, vertical tab, form feed, carriage return).
fn is_plain_ascii(b: u8) -> bool {
    matches!(b, b' '..=b'~' | b'\t'..=b'\r')
}

/// Step 1 of the module docs: characters removed before NFKC.
fn removed_before_composition(c: char) -> bool {
    matches!(
        c,
        // Controls other than the whitespace ones, DEL, C1 other than NEL.
        '\u{0000}'..='\u{0008}'
            | '\u{000E}'..='\u{001F}'
            | '\u{007F}'..='\u{0084}'
            | '\u{0086}'..='\u{009F}'
            // Invisible formatting characters.
            | '\u{00AD}'
            | '\u{034F}'
            | '\u{061C}'
            | '\u{180E}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{FEFF}'
            | '\u{E0001}'
            | '\u{E0020}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
            // Tatweel, and presentation forms that decompose to tatweel and harakat only.
            | '\u{0640}'
            | '\u{FCF2}'..='\u{FCF4}'
            | '\u{FE71}'
            | '\u{FE77}'
            | '\u{FE79}'
            | '\u{FE7B}'
            | '\u{FE7D}'
            | '\u{FE7F}'
            // Diacritics that take part in no composition (U+0653–U+0655 do: see below).
            | '\u{064B}'..='\u{0652}'
            | '\u{0656}'..='\u{065F}'
            | '\u{0670}'
            | '\u{06D6}'..='\u{06DC}'
            | '\u{06DF}'..='\u{06E4}'
            | '\u{06E7}'..='\u{06E8}'
            | '\u{06EA}'..='\u{06ED}'
    )
}

/// Step 3 of the module docs: what is removed from NFKC output. Maddah and hamza above and
/// below compose into letters (`ا` + U+0654 is `أ`), so they are only removed once NFKC has had
/// the chance to compose them.
fn removed_after_composition(c: char) -> bool {
    matches!(c, '\u{0653}'..='\u{0655}') || removed_before_composition(c)
}

/// Whether NFKC output before `c` cannot depend on `c` or anything after it: `c` decomposes to
/// something that starts with a starter that never composes with a preceding character.
fn starts_segment(c: char) -> bool {
    c.is_ascii() || is_common_arabic_letter(c) || starts_segment_by_tables(c)
}

/// [`starts_segment`] without its shortcuts.
fn starts_segment_by_tables(c: char) -> bool {
    let mut first = None;
    decompose_compatible(c, |d| {
        first.get_or_insert(d);
    });
    let first = first.unwrap_or(c);
    canonical_combining_class(first) == 0 && is_nfkc_quick(iter::once(first)) != IsNormalized::Maybe
}

/// The Arabic letters of Arabic and Persian text: starters that NFKC leaves alone, so that the
/// common case needs no table look-ups (`common_arabic_letters_need_no_table_look_ups` holds
/// this to what the tables say).
fn is_common_arabic_letter(c: char) -> bool {
    matches!(
        c,
        '\u{0621}'..='\u{063A}'
            | '\u{0641}'..='\u{064A}'
            | '\u{067E}'
            | '\u{0686}'
            | '\u{0698}'
            | '\u{06A9}'
            | '\u{06AF}'
            | '\u{06CC}'
    )
}

/// Letters of the Latin blocks, which search folds lowercase.
fn is_latin(c: char) -> bool {
    matches!(
        c,
        'A'..='Z'
            | 'a'..='z'
            | '\u{00C0}'..='\u{024F}'
            | '\u{1E00}'..='\u{1EFF}'
            | '\u{2C60}'..='\u{2C7F}'
            | '\u{A720}'..='\u{A7FF}'
            | '\u{AB30}'..='\u{AB6F}'
    )
}

fn single_char(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some() && chars.next().is_none()
}

#[cfg(test)]
mod tests;
