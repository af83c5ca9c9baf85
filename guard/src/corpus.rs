//! A seeded, labelled corpus of Arabic, English and mixed snippets, a markup for hand-written
//! ones, and precision/recall scoring per entity type (feature `corpus`).
//!
//! [`generate`] writes snippets from templates: identifiers made with their real check digits
//! (Luhn, MOD-97, the Kuwaiti mod-11 digit) and real dates and governorate codes, phones from
//! the mobile ranges of each country's numbering plan, IBANs of the registry's lengths, emails,
//! IP addresses, vendor-shaped credentials, JWTs, PEM blocks, passwords after cue words and
//! names from short lists of given and family names. Digits are written in Western, Arabic-Indic
//! or Persian form, and Arabic words sometimes carry tatweel. Every snippet also carries near
//! misses that must not be found: identifiers one digit off their checksum, impossible dates,
//! prices, dates, order, invoice and tracking numbers, short or unassigned phone-like numbers,
//! version strings, and password cues followed by ordinary words.
//!
//! The generator's output alone makes a circular score (the same person wrote the templates
//! and the recognisers), which is why [`parse_marked`] exists: hand-written sentences with
//! their entities marked up, scored apart with the same table.
//!
//! A finding matches a label when their types are equal and their byte ranges overlap; a
//! finding that matches no label is a false positive, a label that no finding matches a false
//! negative.

use std::fmt;
use std::ops::Range;

use crate::{EntityType, Scanner};

/// A labelled piece of sensitive data in a [`Snippet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Its type.
    pub entity: EntityType,
    /// Its byte range in [`Snippet::text`].
    pub range: Range<usize>,
}

/// A text and the sensitive data in it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Snippet {
    /// The text.
    pub text: String,
    /// Every piece of sensitive data in it, in order.
    pub labels: Vec<Label>,
}

impl Snippet {
    fn push(&mut self, s: &str) {
        self.text.push_str(s);
    }

    fn push_entity(&mut self, entity: EntityType, value: &str) {
        let start = self.text.len();
        self.text.push_str(value);
        self.labels.push(Label {
            entity,
            range: start..self.text.len(),
        });
    }
}

/// Why [`parse_marked`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MarkupError {
    /// A `⟦` without its `⟧`, or a `⟧` without its `⟦`.
    #[error("unbalanced brackets at byte {0}")]
    Unbalanced(usize),
    /// The name before `|` is not an entity type.
    #[error("unknown entity type {0:?}")]
    UnknownType(String),
    /// A `⟦…⟧` without `|`.
    #[error("no `|` in the markup at byte {0}")]
    NoSeparator(usize),
}

/// Parses a sentence with its entities marked `⟦type|value⟧` (`type` as
/// [`EntityType::as_str`] writes it) into the plain text and its labels.
///
/// ```
/// use isnad_guard::{corpus::parse_marked, EntityType};
/// let s = parse_marked("جوالي ⟦phone|0501234567⟧ شكرا").unwrap();
/// assert_eq!(s.text, "جوالي 0501234567 شكرا");
/// assert_eq!(s.labels[0].entity, EntityType::Phone);
/// assert_eq!(&s.text[s.labels[0].range.clone()], "0501234567");
/// ```
pub fn parse_marked(marked: &str) -> Result<Snippet, MarkupError> {
    let mut snippet = Snippet::default();
    let mut rest = marked;
    let mut offset = 0;
    while let Some(open) = rest.find('⟦') {
        if let Some(close) = rest[..open].find('⟧') {
            return Err(MarkupError::Unbalanced(offset + close));
        }
        snippet.push(&rest[..open]);
        let inner_start = open + '⟦'.len_utf8();
        let close = rest[inner_start..]
            .find('⟧')
            .map(|c| c + inner_start)
            .ok_or(MarkupError::Unbalanced(offset + open))?;
        let inner = &rest[inner_start..close];
        let (name, value) = inner
            .split_once('|')
            .ok_or(MarkupError::NoSeparator(offset + open))?;
        let entity =
            EntityType::from_name(name).ok_or_else(|| MarkupError::UnknownType(name.to_owned()))?;
        snippet.push_entity(entity, value);
        let next = close + '⟧'.len_utf8();
        offset += next;
        rest = &rest[next..];
    }
    if let Some(close) = rest.find('⟧') {
        return Err(MarkupError::Unbalanced(offset + close));
    }
    snippet.push(rest);
    Ok(snippet)
}

/// True and false positives and false negatives of one entity type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Findings that match a label.
    pub true_positives: usize,
    /// Findings that match no label.
    pub false_positives: usize,
    /// Labels that no finding matches.
    pub false_negatives: usize,
}

impl Counts {
    /// Labels of the type.
    pub fn labels(&self) -> usize {
        self.true_positives + self.false_negatives
    }

    /// `tp / (tp + fp)`; 1 when nothing was found.
    pub fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    /// `tp / (tp + fn)`; 1 when there was nothing to find.
    pub fn recall(&self) -> f64 {
        ratio(self.true_positives, self.labels())
    }
}

fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        1.0
    } else {
        n as f64 / d as f64
    }
}

/// One scoring mistake, for the report.
#[derive(Debug, Clone, PartialEq)]
pub struct Mistake {
    /// Index of the snippet in the scored set.
    pub snippet: usize,
    /// The type found or missed.
    pub entity: EntityType,
    /// Whether it was found without a label (false positive) or missed (false negative).
    pub false_positive: bool,
    /// The text of the finding or label.
    pub value: String,
    /// The whole snippet.
    pub text: String,
}

/// Precision and recall per entity type over a set of snippets.
#[derive(Debug, Clone, Default)]
pub struct Score {
    /// Per type, indexed like [`EntityType::ALL`].
    pub counts: [Counts; EntityType::ALL.len()],
    /// Snippets scored.
    pub snippets: usize,
    /// Every mistake, in snippet order.
    pub mistakes: Vec<Mistake>,
}

impl Score {
    /// The counts of `entity`.
    pub fn of(&self, entity: EntityType) -> Counts {
        self.counts[entity.index()]
    }

    /// The counts over every structured type ([`EntityType::is_structured`]).
    pub fn structured(&self) -> Counts {
        let mut all = Counts::default();
        for entity in EntityType::ALL.into_iter().filter(|e| e.is_structured()) {
            let c = self.of(entity);
            all.true_positives += c.true_positives;
            all.false_positives += c.false_positives;
            all.false_negatives += c.false_negatives;
        }
        all
    }
}

impl fmt::Display for Score {
    /// A table: one row per type with labels, tp, fp, fn, precision and recall, then the
    /// structured types together.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} snippets", self.snippets)?;
        writeln!(
            f,
            "{:<16} {:>6} {:>6} {:>5} {:>5} {:>9} {:>7}",
            "type", "labels", "tp", "fp", "fn", "precision", "recall"
        )?;
        let row = |f: &mut fmt::Formatter<'_>, name: &str, c: Counts| {
            writeln!(
                f,
                "{:<16} {:>6} {:>6} {:>5} {:>5} {:>9.3} {:>7.3}",
                name,
                c.labels(),
                c.true_positives,
                c.false_positives,
                c.false_negatives,
                c.precision(),
                c.recall()
            )
        };
        for entity in EntityType::ALL {
            if entity == EntityType::PersonName {
                continue;
            }
            row(f, entity.as_str(), self.of(entity))?;
        }
        row(f, "(structured)", self.structured())?;
        row(f, "person_name", self.of(EntityType::PersonName))
    }
}

/// Scans every snippet and scores the findings against the labels.
pub fn score<'a>(scanner: &Scanner, snippets: impl IntoIterator<Item = &'a Snippet>) -> Score {
    let mut score = Score::default();
    for (i, snippet) in snippets.into_iter().enumerate() {
        score.snippets += 1;
        let findings = scanner.scan(&snippet.text);
        let mut matched = vec![false; snippet.labels.len()];
        for finding in &findings {
            let range = finding.span.range();
            let hit = snippet.labels.iter().enumerate().find(|(j, l)| {
                !matched[*j]
                    && l.entity == finding.entity
                    && l.range.start < range.end
                    && range.start < l.range.end
            });
            let counts = &mut score.counts[finding.entity.index()];
            match hit {
                Some((j, _)) => {
                    matched[j] = true;
                    counts.true_positives += 1;
                }
                None => {
                    counts.false_positives += 1;
                    score.mistakes.push(Mistake {
                        snippet: i,
                        entity: finding.entity,
                        false_positive: true,
                        value: snippet.text.get(range).unwrap_or_default().to_owned(),
                        text: snippet.text.clone(),
                    });
                }
            }
        }
        for (label, matched) in snippet.labels.iter().zip(matched) {
            if !matched {
                score.counts[label.entity.index()].false_negatives += 1;
                score.mistakes.push(Mistake {
                    snippet: i,
                    entity: label.entity,
                    false_positive: false,
                    value: snippet
                        .text
                        .get(label.range.clone())
                        .unwrap_or_default()
                        .to_owned(),
                    text: snippet.text.clone(),
                });
            }
        }
    }
    score
}

/// `count` snippets from `seed`: the same seed gives the same snippets on every platform.
///
/// Each snippet is one to three clauses in Arabic, English or both, each clause carrying one
/// entity, one near miss or nothing; about a third of the clauses are near misses.
pub fn generate(seed: u64, count: usize) -> Vec<Snippet> {
    let mut g = Gen {
        rng: Rng(seed),
        out: Snippet::default(),
        arabic: false,
    };
    (0..count).map(|i| g.snippet(i)).collect()
}

/// SplitMix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + self.below((hi - lo + 1) as usize) as u32
    }

    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn digits(&mut self, n: usize) -> String {
        (0..n)
            .map(|_| char::from(b'0' + self.below(10) as u8))
            .collect()
    }

    fn alnum(&mut self, n: usize, alphabet: &[u8]) -> String {
        (0..n)
            .map(|_| char::from(alphabet[self.below(alphabet.len())]))
            .collect()
    }
}

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const UPPER_ALNUM: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
const BASE64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// The structured kinds a clause can carry (names are added apart).
#[derive(Debug, Clone, Copy)]
enum Kind {
    Email,
    Phone,
    Iban,
    Card,
    SaId,
    EmiratesId,
    KwId,
    EgId,
    Ip,
    Credential,
    Name,
}

const KINDS: [Kind; 11] = [
    Kind::Email,
    Kind::Phone,
    Kind::Iban,
    Kind::Card,
    Kind::SaId,
    Kind::EmiratesId,
    Kind::KwId,
    Kind::EgId,
    Kind::Ip,
    Kind::Credential,
    Kind::Name,
];

/// How digits are written in a clause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Digits {
    Western,
    ArabicIndic,
    Persian,
}

struct Gen {
    rng: Rng,
    out: Snippet,
    /// Whether the clause being written is Arabic.
    arabic: bool,
}

impl Gen {
    fn snippet(&mut self, i: usize) -> Snippet {
        self.out = Snippet::default();
        // Language of the snippet: Arabic, English, or mixed (clauses of both, and English
        // values inside Arabic sentences).
        let lang = i % 3;
        let clauses = 1 + self.rng.below(3);
        for c in 0..clauses {
            self.arabic = match lang {
                0 => true,
                1 => false,
                _ => self.rng.chance(50),
            };
            if c > 0 {
                let joiner = if self.arabic {
                    self.rng.pick(&["، و", ". ", "، ", " و"])
                } else {
                    self.rng.pick(&[". ", ", and ", "; ", ". Also, "])
                };
                self.out.push(joiner);
            }
            // Cycle through the kinds so every type gets its share.
            let roll = self.rng.below(100);
            if roll < 62 {
                let kind = KINDS[(i * 3 + c + self.rng.below(2)) % KINDS.len()];
                self.entity(kind);
            } else if roll < 95 {
                self.near_miss();
            } else {
                self.filler();
            }
        }
        if self.rng.chance(50) {
            let end = if self.arabic {
                "."
            } else {
                self.rng.pick(&[".", "!", "", " thanks"])
            };
            self.out.push(end);
        }
        std::mem::take(&mut self.out)
    }

    /// Writes `template` with `{}` replaced by the labelled `value`.
    fn templ(&mut self, template: &str, entity: Option<EntityType>, value: &str) {
        let template = self.tatweel(template);
        let (before, after) = template.split_once("{}").unwrap_or((&template, ""));
        self.out.push(before);
        match entity {
            Some(e) => self.out.push_entity(e, value),
            None => self.out.push(value),
        }
        self.out.push(after);
    }

    /// Sometimes stretches one Arabic word of `s` with a tatweel.
    fn tatweel(&mut self, s: &str) -> String {
        if !self.rng.chance(15) {
            return s.to_owned();
        }
        let joinable = |c: char| {
            matches!(
                c,
                'ب' | 'ت'
                    | 'ج'
                    | 'ح'
                    | 'س'
                    | 'ع'
                    | 'ف'
                    | 'ق'
                    | 'ك'
                    | 'ل'
                    | 'م'
                    | 'ن'
                    | 'ه'
                    | 'ي'
            )
        };
        let mut out = String::with_capacity(s.len() + 2);
        let mut done = false;
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            out.push(c);
            let next_is_letter = chars
                .peek()
                .is_some_and(|n| ('\u{0621}'..='\u{064A}').contains(n));
            if !done && joinable(c) && next_is_letter {
                out.push('\u{0640}');
                done = true;
            }
        }
        out
    }

    fn digit_style(&mut self) -> Digits {
        if !self.arabic {
            return if self.rng.chance(5) {
                Digits::ArabicIndic
            } else {
                Digits::Western
            };
        }
        match self.rng.below(10) {
            0..=4 => Digits::Western,
            5..=8 => Digits::ArabicIndic,
            _ => Digits::Persian,
        }
    }

    /// `s` with its ASCII digits written in `style`.
    fn write_digits(s: &str, style: Digits) -> String {
        let zero = match style {
            Digits::Western => return s.to_owned(),
            Digits::ArabicIndic => 0x0660,
            Digits::Persian => 0x06F0,
        };
        s.chars()
            .map(|c| match c.to_digit(10) {
                Some(d) => char::from_u32(zero + d).unwrap_or(c),
                None => c,
            })
            .collect()
    }

    fn numeric(&mut self, s: &str) -> String {
        let style = self.digit_style();
        Self::write_digits(s, style)
    }

    fn entity(&mut self, kind: Kind) {
        match kind {
            Kind::Email => self.email(),
            Kind::Phone => self.phone(),
            Kind::Iban => self.iban(),
            Kind::Card => self.card(),
            Kind::SaId => self.sa_id(),
            Kind::EmiratesId => self.emirates_id(),
            Kind::KwId => self.kw_id(),
            Kind::EgId => self.eg_id(),
            Kind::Ip => self.ip(),
            Kind::Credential => self.credential(),
            Kind::Name => self.name(),
        }
    }

    fn email(&mut self) {
        let user = self.rng.pick(&[
            "ahmed",
            "sara.ali",
            "m.alqahtani",
            "noura_92",
            "john.smith",
            "fatima",
            "k.haddad",
            "support",
            "omar+news",
            "layla.h",
            "dr.yousef",
            "info",
        ]);
        let digits = if self.rng.chance(30) {
            self.rng.digits(2)
        } else {
            String::new()
        };
        let domain = self.rng.pick(&[
            "gmail.com",
            "outlook.sa",
            "company.com.sa",
            "example.ae",
            "mail.eg",
            "stc.com.sa",
            "hotmail.com",
            "uni.edu.kw",
            "yahoo.co.uk",
            "isnad.dev",
        ]);
        let value = format!("{user}{digits}@{domain}");
        let t = if self.arabic {
            self.rng.pick(&[
                "بريدي الإلكتروني {}",
                "راسلني على {}",
                "الإيميل: {}",
                "أرسل الملف إلى {} من فضلك",
                "تواصل مع {} بخصوص الطلب",
            ])
        } else {
            self.rng.pick(&[
                "my email is {}",
                "write to {}",
                "Contact: {}",
                "cc {} on the thread",
                "send the report to {} by Monday",
            ])
        };
        self.templ(t, Some(EntityType::Email), &value);
    }

    /// A mobile number of one of the eight countries, in one of its written forms.
    fn phone(&mut self) {
        // (code, trunk 0, national number without trunk: prefix + digits to fill)
        let (code, trunk, nsn) = match self.rng.below(8) {
            0 => {
                let p = self.rng.pick(&["50", "53", "54", "55", "56", "58", "59"]);
                ("966", true, format!("{p}{}", self.rng.digits(7)))
            }
            1 => {
                let p = self.rng.pick(&["50", "52", "54", "55", "56", "58"]);
                ("971", true, format!("{p}{}", self.rng.digits(7)))
            }
            2 => {
                let p = self.rng.pick(&["10", "11", "12", "15"]);
                ("20", true, format!("{p}{}", self.rng.digits(8)))
            }
            3 => {
                let p = self
                    .rng
                    .pick(&["50", "55", "66", "90", "94", "96", "97", "99"]);
                ("965", false, format!("{p}{}", self.rng.digits(6)))
            }
            4 => {
                let p = self.rng.pick(&["3", "5", "6", "7"]);
                ("974", false, format!("{p}{}", self.rng.digits(7)))
            }
            5 => {
                let p = self.rng.pick(&["33", "34", "35", "36", "39"]);
                ("973", false, format!("{p}{}", self.rng.digits(6)))
            }
            6 => {
                let p = self
                    .rng
                    .pick(&["91", "92", "95", "96", "99", "71", "72", "79"]);
                ("968", false, format!("{p}{}", self.rng.digits(6)))
            }
            _ => {
                let p = self.rng.pick(&["77", "78", "79"]);
                let third = self.rng.pick(&["0", "1", "2", "5", "6", "7", "8", "9"]);
                ("962", true, format!("{p}{third}{}", self.rng.digits(6)))
            }
        };
        let grouped = |s: &str, sep: &str, sizes: &[usize]| -> String {
            let mut out = Vec::new();
            let mut at = 0;
            for &n in sizes {
                if at >= s.len() {
                    break;
                }
                let end = (at + n).min(s.len());
                out.push(&s[at..end]);
                at = end;
            }
            if at < s.len() {
                out.push(&s[at..]);
            }
            out.join(sep)
        };
        let sizes: &[usize] = match nsn.len() {
            8 => &[4, 4],
            9 => &[2, 3, 4],
            _ => &[3, 3, 4],
        };
        // International forms stand on their own; national ones with a trunk 0 too; numbers
        // without a trunk prefix are written only with a phone word.
        let form = self.rng.below(5);
        let (value, needs_context) = match form {
            0 => (format!("+{code}{nsn}"), false),
            1 => (format!("+{code} {}", grouped(&nsn, " ", sizes)), false),
            2 => (format!("00{code} {}", grouped(&nsn, " ", sizes)), false),
            3 if trunk => {
                let sep = self.rng.pick(&["", " ", "-"]);
                let national = format!("0{nsn}");
                let sizes: &[usize] = if national.len() == 11 {
                    &[3, 4, 4]
                } else {
                    &[3, 3, 4]
                };
                (grouped(&national, sep, sizes), false)
            }
            _ if trunk => (format!("0{nsn}"), false),
            _ => (grouped(&nsn, self.rng.pick(&["", " "]), &[4, 4]), true),
        };
        let value = self.numeric(&value);
        let t = match (self.arabic, needs_context || self.rng.chance(70)) {
            (true, true) => self.rng.pick(&[
                "جوالي {}",
                "رقم الجوال: {}",
                "اتصل على {} بعد العصر",
                "واتساب {}",
                "رقم التواصل {}",
                "هاتفي {} ومتاح طول اليوم",
                "ممكن تكلمني على الموبايل {}",
            ]),
            (true, false) => self
                .rng
                .pick(&["أنا على {} دائما", "{} هذا رقمي", "كلمني {}"]),
            (false, true) => self.rng.pick(&[
                "my mobile is {}",
                "call me on {}",
                "WhatsApp: {}",
                "phone {} (after 5pm)",
                "you can reach me at my cell {}",
                "Tel: {}",
            ]),
            (false, false) => {
                self.rng
                    .pick(&["reach me at {}", "{} is the number", "ring {} tomorrow"])
            }
        };
        self.templ(t, Some(EntityType::Phone), &value);
    }

    fn iban(&mut self) {
        // (country, BBAN shape: 'n' digit, 'a' upper letter, 'c' upper alphanumeric)
        let (cc, shape) = *self.rng.pick(&[
            &("SA", "nnnnnnnnnnnnnnnnnnnn"),
            &("AE", "nnnnnnnnnnnnnnnnnnn"),
            &("EG", "nnnnnnnnnnnnnnnnnnnnnnnnn"),
            &("KW", "aaaacccccccccccccccccccccc"),
            &("QA", "aaaaccccccccccccccccccccc"),
            &("BH", "aaaacccccccccccccc"),
            &("OM", "nnncccccccccccccccc"),
            &("JO", "aaaannnncccccccccccccccccc"),
            &("GB", "aaaannnnnnnnnnnnnn"),
            &("DE", "nnnnnnnnnnnnnnnnnn"),
            &("FR", "nnnnnnnnnncccccccccccnn"),
            &("TR", "nnnnnncccccccccccccccc"),
        ]);
        let bban: String = shape
            .chars()
            .map(|c| match c {
                'n' => char::from(b'0' + self.rng.below(10) as u8),
                'a' => char::from(b'A' + self.rng.below(26) as u8),
                _ => char::from(UPPER_ALNUM[self.rng.below(UPPER_ALNUM.len())]),
            })
            .collect();
        let check = iban_check(cc, &bban);
        let compact = format!("{cc}{check:02}{bban}");
        let value = if self.rng.chance(50) {
            group4(&compact)
        } else {
            compact
        };
        let t = if self.arabic {
            self.rng.pick(&[
                "رقم الآيبان {}",
                "حوّل المبلغ على الحساب {}",
                "الايبان: {}",
                "هذا حسابي البنكي {}",
            ])
        } else {
            self.rng.pick(&[
                "IBAN: {}",
                "pay to {}",
                "my account is {}",
                "wire it to IBAN {} please",
            ])
        };
        self.templ(t, Some(EntityType::Iban), &value);
    }

    fn card(&mut self) {
        let (prefix, len) = *self.rng.pick(&[
            &("4", 16),
            &("4", 16),
            &("51", 16),
            &("55", 16),
            &("2221", 16),
            &("2720", 16),
            &("34", 15),
            &("37", 15),
            &("6011", 16),
            &("35", 16),
            &("62", 16),
            &("4", 19),
        ]);
        let body = format!("{prefix}{}", self.rng.digits(len - prefix.len() - 1));
        let number = with_luhn(&body);
        let value = self.card_format(&number);
        let value = self.numeric(&value);
        let t = if self.arabic {
            self.rng.pick(&[
                "رقم البطاقة {}",
                "بطاقتي الائتمانية {} تنتهي ١٢/٢٧",
                "ادفع بالفيزا {}",
                "{}",
            ])
        } else {
            self.rng.pick(&[
                "card number {}",
                "my Visa is {}, exp 11/27",
                "charge {} for the order",
                "{}",
            ])
        };
        self.templ(t, Some(EntityType::Card), &value);
    }

    fn card_format(&mut self, number: &str) -> String {
        if self.rng.chance(40) {
            return number.to_owned();
        }
        let sep = self.rng.pick(&[" ", "-"]);
        if number.len() == 15 {
            return [&number[..4], &number[4..10], &number[10..]].join(sep);
        }
        number
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(sep)
    }

    fn sa_id(&mut self) {
        let first = if self.rng.chance(60) { "1" } else { "2" };
        let id = with_luhn(&format!("{first}{}", self.rng.digits(8)));
        let value = self.numeric(&id);
        let t = if self.arabic {
            self.rng.pick(&[
                "رقم الهوية {}",
                "هويتي الوطنية رقم {}",
                "رقم الإقامة: {}",
                "السجل المدني {}",
                "{} رقم هويتي",
                "المريض صاحب الهوية {} راجع العيادة",
            ])
        } else {
            self.rng.pick(&[
                "my national ID is {}",
                "Iqama {}",
                "ID number: {}",
                "the patient with ID {} came back",
                "{}",
            ])
        };
        self.templ(t, Some(EntityType::SaNationalId), &value);
    }

    fn emirates_id(&mut self) {
        let year = self.rng.range(1950, 2020);
        let id = with_luhn(&format!("784{year}{}", self.rng.digits(7)));
        let value = match self.rng.below(3) {
            0 => id.clone(),
            1 => format!("{}-{}-{}-{}", &id[..3], &id[3..7], &id[7..14], &id[14..]),
            _ => format!("{} {} {} {}", &id[..3], &id[3..7], &id[7..14], &id[14..]),
        };
        let value = self.numeric(&value);
        let t = if self.arabic {
            self.rng
                .pick(&["رقم الهوية الإماراتية {}", "الهوية {}", "{}"])
        } else {
            self.rng
                .pick(&["Emirates ID {}", "EID: {}", "my ID is {}", "{}"])
        };
        self.templ(t, Some(EntityType::EmiratesId), &value);
    }

    fn birth(&mut self) -> (u32, u32, u32) {
        let year = self.rng.range(1940, 2015);
        let month = self.rng.range(1, 12);
        let day = self.rng.range(1, days_in(year, month));
        (year, month, day)
    }

    fn kw_id(&mut self) {
        let id = loop {
            let (y, m, d) = self.birth();
            let century = if y >= 2000 { 3 } else { 2 };
            let head = format!("{century}{:02}{m:02}{d:02}{}", y % 100, self.rng.digits(4));
            if let Some(id) = with_kw_check(&head) {
                break id;
            }
        };
        let value = self.numeric(&id);
        let t = if self.arabic {
            self.rng.pick(&[
                "الرقم المدني {}",
                "رقم البطاقة المدنية: {}",
                "{} هو رقمي المدني",
            ])
        } else {
            self.rng.pick(&[
                "civil ID {}",
                "Kuwaiti civil number {}",
                "Civil ID no. {}",
                "{}",
            ])
        };
        self.templ(t, Some(EntityType::KwCivilId), &value);
    }

    fn eg_id(&mut self) {
        let (y, m, d) = self.birth();
        let century = if y >= 2000 { 3 } else { 2 };
        let gov = *self.rng.pick(&[
            &1u32, &2, &3, &4, &11, &12, &13, &14, &15, &16, &17, &18, &19, &21, &22, &23, &24,
            &25, &26, &27, &28, &29, &31, &32, &33, &34, &35, &88,
        ]);
        let id = format!(
            "{century}{:02}{m:02}{d:02}{gov:02}{}",
            y % 100,
            self.rng.digits(5)
        );
        let value = self.numeric(&id);
        // Structure only: without a context word an Egyptian ID is reported at lower
        // confidence, still above the default threshold.
        let t = if self.arabic {
            self.rng.pick(&[
                "الرقم القومي {}",
                "رقم البطاقة الشخصية {}",
                "بطاقة الرقم القومي: {}",
                "{}",
            ])
        } else {
            self.rng
                .pick(&["Egyptian national ID {}", "national number {}", "{}"])
        };
        self.templ(t, Some(EntityType::EgNationalId), &value);
    }

    fn ip(&mut self) {
        let value = if self.rng.chance(65) {
            let first = self
                .rng
                .pick(&["10", "192", "172", "8", "185", "41", "197", "213"]);
            format!(
                "{first}.{}.{}.{}",
                self.rng.below(256),
                self.rng.below(256),
                self.rng.range(1, 254)
            )
        } else {
            let groups: Vec<String> = (0..8)
                .map(|_| format!("{:x}", self.rng.below(0x10000)))
                .collect();
            match self.rng.below(3) {
                0 => groups.join(":"),
                1 => format!("2001:db8::{}:{}", groups[6], groups[7]),
                _ => format!("fe80::{}:{}:{}", groups[5], groups[6], groups[7]),
            }
        };
        let t = if self.arabic {
            self.rng.pick(&[
                "عنوان الخادم {}",
                "السيرفر على {}",
                "الـ IP هو {}",
                "اتصل بـ {} عبر ssh",
            ])
        } else {
            self.rng.pick(&[
                "server at {}",
                "my IP is {}",
                "ssh into {} and restart",
                "host {} is down",
            ])
        };
        self.templ(t, Some(EntityType::Ip), &value);
    }

    fn credential(&mut self) {
        let value = match self.rng.below(12) {
            0 => format!(
                "isnad_sk_{}_{}",
                self.rng.alnum(12, BASE62),
                self.rng.alnum(38, BASE62)
            ),
            1 => format!("sk-proj-{}", self.rng.alnum(48, BASE62)),
            2 => format!("sk-ant-api03-{}", self.rng.alnum(40, BASE62)),
            3 => format!("sk-{}", self.rng.alnum(48, BASE62)),
            4 => format!("ghp_{}", self.rng.alnum(36, BASE62)),
            5 => format!(
                "github_pat_{}_{}",
                self.rng.alnum(22, BASE62),
                self.rng.alnum(59, BASE62)
            ),
            6 => format!(
                "xoxb-{}-{}-{}",
                self.rng.digits(12),
                self.rng.digits(13),
                self.rng.alnum(24, BASE62)
            ),
            7 => format!("AKIA{}", self.rng.alnum(16, UPPER_ALNUM)),
            8 => format!("AIza{}", self.rng.alnum(35, BASE64URL)),
            9 => format!("glpat-{}", self.rng.alnum(20, BASE62)),
            10 => format!("sk_live_{}", self.rng.alnum(24, BASE62)),
            _ => self.jwt_or_pem_or_password(),
        };
        if value.starts_with("PASSWORD:") {
            return;
        }
        let t = if self.arabic {
            self.rng.pick(&[
                "هذا المفتاح {}",
                "التوكن: {}",
                "استخدم {} في الإعدادات",
                "مفتاح الـ API هو {}",
            ])
        } else {
            self.rng.pick(&[
                "my key is {}",
                "token: {}",
                "export API_KEY={}",
                "use {} for the staging env",
            ])
        };
        self.templ(t, Some(EntityType::Credential), &value);
    }

    /// A JWT or PEM value to put in a credential template, or a password written directly
    /// (then it returns the marker `PASSWORD:` and the caller writes nothing more).
    fn jwt_or_pem_or_password(&mut self) -> String {
        match self.rng.below(3) {
            0 => {
                let alg = self.rng.pick(&["HS256", "RS256", "ES256"]);
                let header = format!("{{\"alg\":\"{alg}\",\"typ\":\"JWT\"}}");
                let payload = format!("{{\"sub\":\"{}\",\"name\":\"x\"}}", self.rng.digits(8));
                format!(
                    "{}.{}.{}",
                    base64url(header.as_bytes()),
                    base64url(payload.as_bytes()),
                    self.rng.alnum(43, BASE64URL)
                )
            }
            1 => {
                let label = self.rng.pick(&[
                    "RSA PRIVATE KEY",
                    "PRIVATE KEY",
                    "EC PRIVATE KEY",
                    "OPENSSH PRIVATE KEY",
                ]);
                let lines: Vec<String> = (0..3).map(|_| self.rng.alnum(64, BASE64)).collect();
                format!(
                    "-----BEGIN {label}-----\n{}\n-----END {label}-----",
                    lines.join("\n")
                )
            }
            _ => {
                let word = self
                    .rng
                    .pick(&["Riyadh", "sunset", "Falcon", "qwerty", "Nour", "Blue"]);
                let n = self.rng.range(2, 4) as usize;
                let secret = format!(
                    "{}{}{}",
                    word,
                    self.rng.digits(n),
                    self.rng.pick(&["!", "#", "", "$", "@x"])
                );
                let t = if self.arabic {
                    self.rng
                        .pick(&["كلمة المرور: {}", "كلمة السر هي {}", "الباسورد: {}"])
                } else {
                    self.rng.pick(&[
                        "password: {}",
                        "my password is {}",
                        "pwd={}",
                        "Password = {}",
                    ])
                };
                self.templ(t, Some(EntityType::Credential), &secret);
                "PASSWORD:".to_owned()
            }
        }
    }

    fn name(&mut self) {
        if self.arabic {
            let female = self.rng.chance(40);
            let first = if female {
                self.rng.pick(&[
                    "فاطمة",
                    "نورة",
                    "سارة",
                    "مريم",
                    "هند",
                    "ريم",
                    "لطيفة",
                    "عائشة",
                    "منى",
                ])
            } else {
                self.rng.pick(&[
                    "محمد",
                    "أحمد",
                    "خالد",
                    "عبدالله",
                    "فهد",
                    "سلطان",
                    "يوسف",
                    "عمر",
                    "إبراهيم",
                ])
            };
            let father = self
                .rng
                .pick(&["محمد", "عبدالعزيز", "سعد", "ناصر", "علي", "حمد"]);
            let family = self.rng.pick(&[
                "القحطاني",
                "الشمري",
                "العتيبي",
                "الحربي",
                "الدوسري",
                "الزهراني",
                "المطيري",
                "الغامدي",
            ]);
            let value = match self.rng.below(3) {
                0 => format!("{first} {family}"),
                1 => format!("{first} بن {father} {family}"),
                _ => format!("{first} {father} {family}"),
            };
            let t = match (female, self.rng.below(4)) {
                (_, 0) => "اسمي {}",
                (true, 1) => "الأستاذة {} ستحضر الاجتماع",
                (false, 1) => "السيد {} ينتظرك",
                (true, 2) => "الدكتورة {}",
                (false, 2) => "الدكتور {} في العيادة",
                _ => "راجعنا {} اليوم",
            };
            self.templ(t, Some(EntityType::PersonName), &value);
        } else {
            let first = self.rng.pick(&[
                "James", "Sarah", "Mohammed", "Fatima", "David", "Layla", "Omar", "Emily",
                "Khalid", "Noura",
            ]);
            let last = self.rng.pick(&[
                "Johnson",
                "Al-Harbi",
                "Smith",
                "Haddad",
                "Al Qahtani",
                "Brown",
                "Nasser",
                "Williams",
            ]);
            let (t, value) = match self.rng.below(4) {
                0 => ("my name is {}", format!("{first} {last}")),
                1 => ("Mr. {} will call you", format!("{first} {last}")),
                2 => ("please forward this to Dr. {}", last.to_owned()),
                _ => ("{} joined the team yesterday", format!("{first} {last}")),
            };
            self.templ(t, Some(EntityType::PersonName), &value);
        }
    }

    /// Something that looks like sensitive data and is not.
    fn near_miss(&mut self) {
        match self.rng.below(16) {
            0 => {
                // A Saudi ID one digit off its Luhn digit.
                let first = if self.rng.chance(50) { "1" } else { "2" };
                let id = break_last(&with_luhn(&format!("{first}{}", self.rng.digits(8))));
                let id = self.numeric(&id);
                let t = if self.arabic {
                    "رقم الهوية {}"
                } else {
                    "ID number {}"
                };
                self.templ(t, None, &id);
            }
            1 => {
                let prefix = self.rng.pick(&["4", "51", "37"]);
                let len = if prefix == "37" { 15 } else { 16 };
                let n = break_last(&with_luhn(&format!(
                    "{prefix}{}",
                    self.rng.digits(len - prefix.len() - 1)
                )));
                let n = self.card_format(&n);
                let t = if self.arabic {
                    "رقم البطاقة {}"
                } else {
                    "card {}"
                };
                self.templ(t, None, &n);
            }
            2 => {
                // IBAN with wrong check digits.
                let bban = self.rng.digits(20);
                let check = iban_check("SA", &bban);
                let wrong = (check + 1 + self.rng.below(90) as u32) % 97;
                let wrong = if wrong < 2 { wrong + 2 } else { wrong };
                let value = format!("SA{wrong:02}{bban}");
                let t = if self.arabic {
                    "الآيبان {}"
                } else {
                    "IBAN {}"
                };
                self.templ(t, None, &value);
            }
            3 => {
                // Kuwaiti civil ID with a wrong check digit, or an impossible date.
                let (y, m, d) = self.birth();
                let century = if y >= 2000 { 3 } else { 2 };
                let value = if self.rng.chance(50) {
                    let head = format!("{century}{:02}{m:02}{d:02}{}", y % 100, self.rng.digits(4));
                    match with_kw_check(&head) {
                        Some(id) => break_last(&id),
                        None => format!("{head}0"),
                    }
                } else {
                    format!("{century}{:02}13{d:02}{}", y % 100, self.rng.digits(5))
                };
                let t = if self.arabic {
                    "الرقم المدني {}"
                } else {
                    "civil ID {}"
                };
                self.templ(t, None, &value);
            }
            4 => {
                // Egyptian ID with an unassigned governorate or a 31st of a 30-day month.
                let (y, _, _) = self.birth();
                let century = if y >= 2000 { 3 } else { 2 };
                let value = if self.rng.chance(50) {
                    let gov = self.rng.pick(&["05", "09", "36", "40", "77", "99"]);
                    format!("{century}{:02}0115{gov}{}", y % 100, self.rng.digits(5))
                } else {
                    format!("{century}{:02}0431{:02}{}", y % 100, 1, self.rng.digits(5))
                };
                let value = self.numeric(&value);
                let t = if self.arabic {
                    "الرقم القومي {}"
                } else {
                    "national ID {}"
                };
                self.templ(t, None, &value);
            }
            5 => {
                let id = break_last(&with_luhn(&format!(
                    "784{}{}",
                    self.rng.range(1960, 2010),
                    self.rng.digits(7)
                )));
                let value = format!("{}-{}-{}-{}", &id[..3], &id[3..7], &id[7..14], &id[14..]);
                self.templ(
                    if self.arabic {
                        "الهوية {}"
                    } else {
                        "Emirates ID {}"
                    },
                    None,
                    &value,
                );
            }
            6 => {
                let price = format!(
                    "{},{:03}.{:02}",
                    self.rng.range(1, 99),
                    self.rng.below(1000),
                    self.rng.below(100)
                );
                let t = if self.arabic {
                    self.rng.pick(&[
                        "السعر {} ريال",
                        "المبلغ الإجمالي {} درهم",
                        "الإجمالي: {} جنيه",
                    ])
                } else {
                    self.rng
                        .pick(&["Total: SAR {}", "the price is ${}", "balance {} AED"])
                };
                let price = self.numeric(&price);
                self.templ(t, None, &price);
            }
            7 => {
                let (y, m, d) = self.birth();
                let date = match self.rng.below(4) {
                    0 => format!("{y}-{m:02}-{d:02}"),
                    1 => format!("{d:02}/{m:02}/{y}"),
                    2 => format!("{d:02}.{m:02}.{y}"),
                    _ => format!(
                        "{d}/{m}/{y} {:02}:{:02}",
                        self.rng.below(24),
                        self.rng.below(60)
                    ),
                };
                let date = self.numeric(&date);
                let t = if self.arabic {
                    "بتاريخ {}"
                } else {
                    "on {}"
                };
                self.templ(t, None, &date);
            }
            8 => {
                // Order and invoice numbers, some of them shaped like IDs or phones.
                let number = match self.rng.below(4) {
                    0 => with_luhn(&format!("1{}", self.rng.digits(8))),
                    1 => format!("05{}", self.rng.digits(8)),
                    2 => {
                        let n = self.rng.range(6, 12) as usize;
                        self.rng.digits(n)
                    }
                    _ => format!("9665{}", self.rng.digits(8)),
                };
                let number = self.numeric(&number);
                let t = if self.arabic {
                    self.rng.pick(&[
                        "رقم الطلب {}",
                        "رقم الفاتورة: {}",
                        "رقم الشحنة {}",
                        "رقم التتبع {}",
                    ])
                } else {
                    self.rng.pick(&[
                        "order #{}",
                        "Invoice no. {}",
                        "tracking number {}",
                        "booking ref {}",
                    ])
                };
                self.templ(t, None, &number);
            }
            9 => {
                let value = format!("INV-{}-{}", self.rng.range(2019, 2026), self.rng.digits(6));
                let t = if self.arabic {
                    "الفاتورة {}"
                } else {
                    "see invoice {}"
                };
                self.templ(t, None, &value);
            }
            10 => {
                // Phone-like: too short, or an unassigned range.
                let value = match self.rng.below(3) {
                    0 => format!("05{}", self.rng.digits(5)),
                    1 => format!("+966 7{}", self.rng.digits(8)),
                    _ => format!("ext. {}", self.rng.digits(4)),
                };
                let value = self.numeric(&value);
                let t = if self.arabic {
                    "التحويلة {}"
                } else {
                    "dial {}"
                };
                self.templ(t, None, &value);
            }
            11 => {
                let value = format!(
                    "{}.{}.{}.{}.{}",
                    self.rng.below(20),
                    self.rng.below(20),
                    self.rng.below(9999),
                    self.rng.below(999),
                    self.rng.below(99)
                );
                self.templ(
                    if self.arabic {
                        "الإصدار {}"
                    } else {
                        "version {}"
                    },
                    None,
                    &value,
                );
            }
            12 => {
                let t = if self.arabic {
                    self.rng.pick(&[
                        "كلمة المرور: خاطئة",
                        "نسيت كلمة السر",
                        "كلمة المرور هي المشكلة",
                    ])
                } else {
                    self.rng.pick(&[
                        "password: required",
                        "I forgot my password",
                        "Password is too weak",
                        "reset your password here",
                    ])
                };
                self.templ(t, None, "");
            }
            13 => {
                let t = if self.arabic {
                    self.rng
                        .pick(&["اكتب على {} ثم اضغط", "الحساب {} غير مفعل"])
                } else {
                    self.rng.pick(&[
                        "the task-{} is done",
                        "use sk-{} in sklearn docs",
                        "email me at {} soon",
                    ])
                };
                let v = self.rng.pick(&["learn", "admin", "@home", "AKIA12"]);
                self.templ(t, None, v);
            }
            14 => {
                let n = format!("{}", self.rng.range(1000, 99_999));
                let n = self.numeric(&n);
                let t = if self.arabic {
                    "عدد الزوار {} زائر"
                } else {
                    "we shipped {} units"
                };
                self.templ(t, None, &n);
            }
            _ => {
                // Common words that are also names, without a cue.
                let t = if self.arabic {
                    self.rng
                        .pick(&["ضع الكتاب علي الطاولة", "عندي أمل كبير", "الجو جميل اليوم"])
                } else {
                    self.rng.pick(&[
                        "Will you grace us with a visit",
                        "Thanks, see you Monday",
                        "The Bank of England raised rates",
                    ])
                };
                self.templ(t, None, "");
            }
        }
    }

    fn filler(&mut self) {
        let t = if self.arabic {
            self.rng.pick(&[
                "ما هي عاصمة عمان؟",
                "شكرا جزيلا لك",
                "أريد ملخصا قصيرا للمقال",
                "كيف أكتب دالة في بايثون",
            ])
        } else {
            self.rng.pick(&[
                "summarise this in three bullets",
                "what is the capital of Oman",
                "thanks in advance",
                "explain how TLS works",
            ])
        };
        self.templ(t, None, "");
    }
}

/// `body` and its Luhn check digit.
fn with_luhn(body: &str) -> String {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    format!("{body}{}", (10 - sum % 10) % 10)
}

/// The same number with its last digit changed (so a check digit fails).
fn break_last(s: &str) -> String {
    let (head, last) = s.split_at(s.len() - 1);
    let d = last.bytes().next().map_or(0, |b| b - b'0');
    format!("{head}{}", (d + 1 + (d % 3)) % 10)
}

/// The Kuwaiti civil ID for an 11-digit head, or `None` when its check digit would be 10 or 11.
fn with_kw_check(head: &str) -> Option<String> {
    const WEIGHTS: [u32; 11] = [2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
    let sum: u32 = head
        .bytes()
        .zip(WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    let c = 11 - sum % 11;
    (c <= 9).then(|| format!("{head}{c}"))
}

/// The two IBAN check digits of `country` and `bban`: 98 − (BBAN, country, 00 mod 97).
fn iban_check(country: &str, bban: &str) -> u32 {
    let mut rem: u64 = 0;
    for b in bban.bytes().chain(country.bytes()).chain(*b"00") {
        if b.is_ascii_digit() {
            rem = (rem * 10 + u64::from(b - b'0')) % 97;
        } else {
            rem = (rem * 100 + u64::from(b - b'A') + 10) % 97;
        }
    }
    98 - rem as u32
}

fn group4(s: &str) -> String {
    s.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn days_in(year: u32, month: u32) -> u32 {
    match month {
        4 | 6 | 9 | 11 => 30,
        2 if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => {
            29
        }
        2 => 28,
        _ => 31,
    }
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{iban_mod97, kw_civil_check, luhn};

    #[test]
    fn generated_identifiers_pass_the_real_checks() {
        assert!(luhn(with_luhn("101234567").as_bytes()));
        assert_eq!(with_luhn("101234567"), "1012345672");
        assert!(!luhn(break_last(&with_luhn("101234567")).as_bytes()));
        let kw = with_kw_check("28505150123").unwrap_or_default();
        assert!(kw_civil_check(kw.as_bytes()), "{kw}");
        let iban = format!(
            "SA{:02}80000000608010167519",
            iban_check("SA", "80000000608010167519")
        );
        assert_eq!(iban, "SA0380000000608010167519");
        assert!(iban_mod97(iban.as_bytes()));
    }

    #[test]
    fn same_seed_same_corpus() {
        assert_eq!(generate(7, 50), generate(7, 50));
        assert_ne!(generate(7, 50), generate(8, 50));
    }

    #[test]
    fn markup() {
        let s = parse_marked("a ⟦email|x@y.com⟧ b ⟦ip|10.0.0.1⟧").unwrap_or_default();
        assert_eq!(s.text, "a x@y.com b 10.0.0.1");
        assert_eq!(s.labels.len(), 2);
        assert_eq!(&s.text[s.labels[1].range.clone()], "10.0.0.1");
        assert!(matches!(
            parse_marked("⟦nope|x⟧"),
            Err(MarkupError::UnknownType(_))
        ));
        assert!(matches!(
            parse_marked("⟦email|x"),
            Err(MarkupError::Unbalanced(_))
        ));
        assert!(matches!(
            parse_marked("x⟧"),
            Err(MarkupError::Unbalanced(_))
        ));
    }
}
