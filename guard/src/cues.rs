//! One Aho-Corasick pass over the normalised text finds every word the recognisers care
//! about: context words, negative cues, credential prefixes, password and name cues, and the
//! name gazetteers. The recognisers then look cues up by position instead of searching again.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};

use crate::lexicon;
use crate::{EntityType, Error};

/// Bytes before a candidate in which a cue counts.
pub(crate) const WINDOW_BEFORE: usize = 72;
/// Bytes after a candidate in which a cue counts (`1012345678 (national ID)`).
pub(crate) const WINDOW_AFTER: usize = 24;

/// Vendor token prefixes and other credential triggers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Trigger {
    /// `isnad_sk_`.
    Isnad,
    /// A vendor prefix: the token chars after it, their minimum count, an exact count if the
    /// format fixes it, and the recogniser name.
    Vendor {
        min: usize,
        exact: Option<usize>,
        alphabet: Alphabet,
        case_sensitive: bool,
        recognizer: &'static str,
        confidence: f32,
    },
    /// `-----BEGIN`.
    Pem,
    /// `eyJ`, the base64url of `{"`.
    Jwt,
}

/// Which characters a token body may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alphabet {
    /// `[A-Za-z0-9_-]`.
    Token,
    /// `[A-Za-z0-9]`.
    Alnum,
    /// `[A-Z0-9]`.
    UpperAlnum,
    /// `[A-Za-z0-9-]`.
    AlnumDash,
    /// `[A-Za-z0-9_]`.
    AlnumUnderscore,
}

impl Alphabet {
    pub(crate) fn allows(self, b: u8) -> bool {
        match self {
            Alphabet::Token => b.is_ascii_alphanumeric() || b == b'_' || b == b'-',
            Alphabet::Alnum => b.is_ascii_alphanumeric(),
            Alphabet::UpperAlnum => b.is_ascii_uppercase() || b.is_ascii_digit(),
            Alphabet::AlnumDash => b.is_ascii_alphanumeric() || b == b'-',
            Alphabet::AlnumUnderscore => b.is_ascii_alphanumeric() || b == b'_',
        }
    }
}

/// What a cue is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cue {
    /// Raises the confidence of the types in the mask (bit = [`EntityType::index`]).
    Context(u16),
    /// An order, invoice, price or amount word.
    Negative,
    /// A credential prefix.
    Credential(Trigger),
    /// A password cue word.
    Password,
    /// A PIN cue word.
    Pin,
    /// An English title (`Mr`, `Dr`).
    TitleEn,
    /// An English phrase before a name (`my name is`).
    PhraseEn,
    /// An Arabic cue before a name (`اسمي`, `السيد`).
    IntroAr,
    /// A particle of an Arabic compound name (`بن`, `عبد`, `آل`).
    ParticleAr,
    /// A particle of a Latin-script name (`bin`, `al`, `van`).
    ParticleEn,
    /// A given name; `ambiguous` when it is also a common word.
    Given { arabic: bool, ambiguous: bool },
}

/// A cue found in the normalised text.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hit {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) cue: Cue,
}

/// How the cues around a candidate judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Judgement {
    /// A context word of its type is nearest.
    Positive,
    /// An order, price or amount word is nearest.
    Negative,
    /// Neither.
    Neutral,
}

/// The automaton and what each of its patterns means.
pub(crate) struct CueSet {
    automaton: AhoCorasick,
    meanings: Vec<(Cue, Boundary)>,
}

/// Which word boundaries a pattern needs to count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Boundary {
    start: bool,
    end: bool,
}

/// Every pattern with its meaning; Arabic ones with their informal spellings.
fn patterns() -> Vec<(String, Cue, Boundary)> {
    let mut out = Vec::new();
    let ascii = |p: &str, end: bool| Boundary {
        start: true,
        end: end || p.len() < 4,
    };
    // Arabic context words take proclitics and suffixes (`بالهوية`, `وجوالي`): no boundaries.
    let context = |p: &str| {
        if p.is_ascii() {
            ascii(p, false)
        } else {
            Boundary {
                start: false,
                end: false,
            }
        }
    };
    for (word, types) in lexicon::CONTEXT {
        let mask = types.iter().fold(0u16, |m, t| m | 1 << t.index());
        push(&mut out, word, Cue::Context(mask), context(word));
    }
    for word in lexicon::NEGATIVE {
        push(&mut out, word, Cue::Negative, context(word));
    }
    for word in lexicon::PASSWORD_CUES {
        push(&mut out, word, Cue::Password, ascii(word, true));
    }
    for word in lexicon::PIN_CUES {
        push(&mut out, word, Cue::Pin, ascii(word, true));
    }
    for word in lexicon::TITLES_EN {
        push(&mut out, word, Cue::TitleEn, ascii(word, true));
    }
    for word in lexicon::PHRASES_EN {
        push(&mut out, word, Cue::PhraseEn, ascii(word, true));
    }
    let whole = Boundary {
        start: true,
        end: true,
    };
    for word in lexicon::CUES_AR {
        push(&mut out, word, Cue::IntroAr, whole);
    }
    for word in lexicon::NAME_PARTICLES_AR {
        push(&mut out, word, Cue::ParticleAr, whole);
    }
    for word in lexicon::NAME_PARTICLES_EN {
        push(&mut out, word, Cue::ParticleEn, whole);
    }
    for (word, ambiguous) in lexicon::GIVEN_AR {
        let cue = Cue::Given {
            arabic: true,
            ambiguous: *ambiguous,
        };
        push(&mut out, word, cue, whole);
    }
    for (word, ambiguous) in lexicon::GIVEN_EN {
        let cue = Cue::Given {
            arabic: false,
            ambiguous: *ambiguous,
        };
        push(&mut out, word, cue, whole);
    }
    let token = Boundary {
        start: true,
        end: false,
    };
    for (prefix, trigger) in credential_triggers() {
        out.push((prefix.to_owned(), Cue::Credential(trigger), token));
    }
    out
}

/// Credential prefixes: `(prefix, trigger)`.
fn credential_triggers() -> Vec<(&'static str, Trigger)> {
    let vendor = |min, exact, alphabet, case_sensitive, recognizer, confidence| Trigger::Vendor {
        min,
        exact,
        alphabet,
        case_sensitive,
        recognizer,
        confidence,
    };
    use Alphabet::*;
    vec![
        ("isnad_sk_", Trigger::Isnad),
        (
            "sk-",
            vendor(20, None, Token, true, "credential.openai", 0.95),
        ),
        (
            "sk_live_",
            vendor(16, None, Alnum, true, "credential.stripe", 0.98),
        ),
        (
            "rk_live_",
            vendor(16, None, Alnum, true, "credential.stripe", 0.98),
        ),
        (
            "sk_test_",
            vendor(16, None, Alnum, true, "credential.stripe", 0.9),
        ),
        (
            "rk_test_",
            vendor(16, None, Alnum, true, "credential.stripe", 0.9),
        ),
        (
            "ghp_",
            vendor(30, None, Alnum, true, "credential.github", 0.98),
        ),
        (
            "gho_",
            vendor(30, None, Alnum, true, "credential.github", 0.98),
        ),
        (
            "ghu_",
            vendor(30, None, Alnum, true, "credential.github", 0.98),
        ),
        (
            "ghs_",
            vendor(30, None, Alnum, true, "credential.github", 0.98),
        ),
        (
            "ghr_",
            vendor(30, None, Alnum, true, "credential.github", 0.98),
        ),
        (
            "github_pat_",
            vendor(22, None, AlnumUnderscore, true, "credential.github", 0.98),
        ),
        (
            "xoxb-",
            vendor(10, None, AlnumDash, true, "credential.slack", 0.95),
        ),
        (
            "xoxp-",
            vendor(10, None, AlnumDash, true, "credential.slack", 0.95),
        ),
        (
            "xoxa-",
            vendor(10, None, AlnumDash, true, "credential.slack", 0.95),
        ),
        (
            "xoxs-",
            vendor(10, None, AlnumDash, true, "credential.slack", 0.95),
        ),
        (
            "AKIA",
            vendor(16, Some(16), UpperAlnum, true, "credential.aws", 0.95),
        ),
        (
            "ASIA",
            vendor(16, Some(16), UpperAlnum, true, "credential.aws", 0.9),
        ),
        (
            "AIza",
            vendor(35, Some(35), Token, true, "credential.google", 0.95),
        ),
        (
            "glpat-",
            vendor(20, None, Token, true, "credential.gitlab", 0.98),
        ),
        ("-----BEGIN", Trigger::Pem),
        ("eyJ", Trigger::Jwt),
    ]
}

/// Pushes `word`, and for Arabic words their informal spellings.
fn push(out: &mut Vec<(String, Cue, Boundary)>, word: &str, cue: Cue, boundary: Boundary) {
    let mut variants = vec![word.to_owned()];
    if !word.is_ascii() {
        let bare: String = word
            .chars()
            .map(|c| match c {
                'أ' | 'إ' | 'آ' => 'ا',
                _ => c,
            })
            .collect();
        variants.push(bare);
        for v in variants.clone() {
            if let Some(stem) = v.strip_suffix('ة') {
                variants.push(format!("{stem}ه"));
            }
            if let Some(stem) = v.strip_suffix('ى') {
                variants.push(format!("{stem}ي"));
            }
        }
        // A teh marbuta inside a phrase (`رقم الهوية الوطنية`) is typed as heh just as often.
        for v in variants.clone() {
            if v.contains("ة ") {
                variants.push(v.replace("ة ", "ه "));
            }
        }
    }
    variants.sort();
    variants.dedup();
    for v in variants {
        out.push((v, cue, boundary));
    }
}

impl CueSet {
    pub(crate) fn new() -> Result<Self, Error> {
        let all = patterns();
        let automaton = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .match_kind(MatchKind::Standard)
            .kind(Some(AhoCorasickKind::DFA))
            .build(all.iter().map(|(p, _, _)| p.as_str()))?;
        let meanings = all
            .into_iter()
            .map(|(_, cue, boundary)| (cue, boundary))
            .collect();
        Ok(Self {
            automaton,
            meanings,
        })
    }

    /// Every cue in `text`, sorted by start, that stands on the word boundaries it needs.
    pub(crate) fn find(&self, text: &str, out: &mut Vec<Hit>) {
        out.clear();
        let bytes = text.as_bytes();
        for m in self.automaton.find_overlapping_iter(text) {
            let Some(&(cue, boundary)) = self.meanings.get(m.pattern().as_usize()) else {
                continue;
            };
            let (start, end) = (m.start(), m.end());
            if boundary.start && !starts_word(text, start) {
                // `وأحمد`: a name may carry the conjunction `و` ("and"); the name starts after it.
                let conjunction = matches!(cue, Cue::Given { arabic: true, .. })
                    && text[..start].ends_with('و')
                    && starts_word(text, start - 'و'.len_utf8());
                if !conjunction {
                    continue;
                }
            }
            if boundary.end && !ends_word(text, end) {
                continue;
            }
            if let Cue::Credential(
                Trigger::Vendor {
                    case_sensitive: true,
                    ..
                }
                | Trigger::Jwt,
            ) = cue
            {
                // The automaton ignores ASCII case; these prefixes are case-sensitive.
                let pattern = &bytes[start..end];
                if !credential_prefix_is_exact(pattern) {
                    continue;
                }
            }
            out.push(Hit { start, end, cue });
        }
        // Overlapping matches come out ordered by end; recognisers want them by start.
        out.sort_by_key(|h| (h.start, h.end));
    }
}

/// Whether `pattern` (as it appears in the text) is one of the credential prefixes exactly.
fn credential_prefix_is_exact(pattern: &[u8]) -> bool {
    credential_triggers()
        .iter()
        .any(|(p, _)| p.as_bytes() == pattern)
}

/// Whether a word can start at `at`: the character before is not a letter, digit or `_`
/// (ASCII or not).
pub(crate) fn starts_word(text: &str, at: usize) -> bool {
    match text.get(..at).and_then(|s| s.chars().next_back()) {
        None => true,
        Some(c) => !(c.is_alphanumeric() || c == '_'),
    }
}

/// Whether a word can end at `at`: the character after is not a letter, digit or `_`.
pub(crate) fn ends_word(text: &str, at: usize) -> bool {
    match text.get(at..).and_then(|s| s.chars().next()) {
        None => true,
        Some(c) => !(c.is_alphanumeric() || c == '_'),
    }
}

/// The cues of one scan, sorted by start.
pub(crate) struct Cues<'a> {
    pub(crate) hits: &'a [Hit],
}

impl Cues<'_> {
    /// How the cues near `start..end` judge a candidate of type `entity`: the nearest
    /// context word or negative cue before it (within [`WINDOW_BEFORE`]) decides, and if
    /// there is none, the nearest after it (within [`WINDOW_AFTER`]). A context word of
    /// another type decides too, as [`Judgement::Neutral`]: in `رقم الهوية 1012345678
    /// وجوالي …` the number is an ID, and the phone word after it belongs to what follows.
    pub(crate) fn judge(&self, start: usize, end: usize, entity: EntityType) -> Judgement {
        let bit = 1u16 << entity.index();
        let relevant = |h: &Hit| match h.cue {
            Cue::Context(mask) if mask & bit != 0 => Some(Judgement::Positive),
            Cue::Context(_) => Some(Judgement::Neutral),
            Cue::Negative => Some(Judgement::Negative),
            _ => None,
        };
        // Hits that end at or before `start`, nearest first.
        let before = self.hits.partition_point(|h| h.start < start);
        let lo = start.saturating_sub(WINDOW_BEFORE);
        let mut nearest: Option<(usize, Judgement)> = None;
        for h in self.hits[..before].iter().rev() {
            if h.end > start {
                continue;
            }
            if h.start < lo.saturating_sub(64) {
                // Hits are sorted by start and no cue is longer than 64 bytes: none further
                // back can end in the window.
                break;
            }
            if h.end < lo {
                continue;
            }
            if let Some(j) = relevant(h) {
                // Of two cues ending at the same place (`رقم الهوية` and `هوية`), a positive
                // one wins.
                let better = match nearest {
                    None => true,
                    Some((e, nj)) => {
                        h.end > e || (h.end == e && j == Judgement::Positive && nj != j)
                    }
                };
                if better {
                    nearest = Some((h.end, j));
                }
            }
        }
        if let Some((_, j)) = nearest {
            return j;
        }
        let after = self.hits.partition_point(|h| h.start < end);
        for h in &self.hits[after..] {
            if h.start > end + WINDOW_AFTER {
                break;
            }
            if let Some(j) = relevant(h) {
                return j;
            }
        }
        Judgement::Neutral
    }

    /// The hits that start exactly at `at`.
    pub(crate) fn at(&self, at: usize) -> &[Hit] {
        let lo = self.hits.partition_point(|h| h.start < at);
        let hi = self.hits.partition_point(|h| h.start <= at);
        &self.hits[lo..hi]
    }

    /// Whether a given name (or, with `particles`, a name particle) spans exactly
    /// `start..end`; `Some(ambiguous)` for a given name.
    pub(crate) fn given_name(&self, start: usize, end: usize) -> Option<bool> {
        self.at(start).iter().find_map(|h| match h.cue {
            Cue::Given { ambiguous, .. } if h.end == end => Some(ambiguous),
            _ => None,
        })
    }

    /// Whether a name particle spans exactly `start..end`.
    pub(crate) fn particle(&self, start: usize, end: usize) -> bool {
        self.at(start)
            .iter()
            .any(|h| h.end == end && matches!(h.cue, Cue::ParticleAr | Cue::ParticleEn))
    }
}
