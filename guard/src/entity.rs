//! What the scanner reports: entity types, spans and findings.

use std::fmt;
use std::ops::Range;

/// A kind of personal or secret data the scanner recognises.
///
/// The serde names (and [`EntityType::as_str`]) are the snake_case names used in policies,
/// journal events and the command line.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EntityType {
    /// An email address (`local@domain.tld`).
    Email,
    /// A phone number: E.164 (`+966 50 123 4567`, `00971…`) or a national format of Saudi
    /// Arabia, the UAE, Egypt, Kuwait, Qatar, Bahrain, Oman or Jordan.
    Phone,
    /// An International Bank Account Number: registry length for its country, MOD-97 check.
    Iban,
    /// A payment card number: issuer prefix and length, Luhn check.
    Card,
    /// A Saudi national ID or Iqama (resident) number: 10 digits, first 1 or 2, Luhn check.
    SaNationalId,
    /// An Emirates ID: `784-YYYY-NNNNNNN-C`, Luhn check over the 15 digits.
    EmiratesId,
    /// A Kuwaiti civil ID: 12 digits with a birth date and a mod-11 check digit.
    KwCivilId,
    /// An Egyptian national ID: 14 digits with a birth date and a governorate code. There is no
    /// public check digit, so this is recognised by structure only.
    EgNationalId,
    /// An IPv4 or IPv6 address.
    Ip,
    /// A secret: an API key or token (isnad's own `isnad_sk_…` keys, vendor prefixes), a PEM
    /// private key block, a JWT, or a password written after a cue word.
    Credential,
    /// A person's name in Arabic or English (gazetteers and cue words: lower confidence).
    PersonName,
}

impl EntityType {
    /// Every entity type, in declaration order.
    pub const ALL: [EntityType; 11] = [
        EntityType::Email,
        EntityType::Phone,
        EntityType::Iban,
        EntityType::Card,
        EntityType::SaNationalId,
        EntityType::EmiratesId,
        EntityType::KwCivilId,
        EntityType::EgNationalId,
        EntityType::Ip,
        EntityType::Credential,
        EntityType::PersonName,
    ];

    /// The snake_case name, as serde writes it.
    pub const fn as_str(self) -> &'static str {
        match self {
            EntityType::Email => "email",
            EntityType::Phone => "phone",
            EntityType::Iban => "iban",
            EntityType::Card => "card",
            EntityType::SaNationalId => "sa_national_id",
            EntityType::EmiratesId => "emirates_id",
            EntityType::KwCivilId => "kw_civil_id",
            EntityType::EgNationalId => "eg_national_id",
            EntityType::Ip => "ip",
            EntityType::Credential => "credential",
            EntityType::PersonName => "person_name",
        }
    }

    /// The type named `name` (its snake_case name), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|entity| entity.as_str() == name)
    }

    /// Whether the type is recognised by structure (formats, checksums) rather than by
    /// gazetteers and cues: every type but [`EntityType::PersonName`].
    pub const fn is_structured(self) -> bool {
        !matches!(self, EntityType::PersonName)
    }

    /// Index into [`EntityType::ALL`].
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for EntityType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a finding lies in the original text (the text given to [`crate::Scanner::scan`], not
/// its normalised form), as byte offsets and as character (Unicode scalar value) offsets.
///
/// Byte offsets always lie on char boundaries of the original text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Span {
    /// Byte offset of the first byte.
    pub start: usize,
    /// Byte offset one past the last byte.
    pub end: usize,
    /// Character offset of the first character.
    pub char_start: usize,
    /// Character offset one past the last character.
    pub char_end: usize,
}

impl Span {
    /// The byte range.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// Whether the span is empty (a finding's span never is).
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Whether the two spans share at least one byte.
    pub fn overlaps(&self, other: &Span) -> bool {
        self.start < other.end && other.start < self.end
    }
}

/// One piece of sensitive data found in a text.
///
/// A finding never holds the matched value: read it back by slicing the original text with
/// [`Finding::span`], and keep it out of anything that is logged or journaled.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Finding {
    /// What was found.
    pub entity: EntityType,
    /// Where, in the original text.
    pub span: Span,
    /// How sure the recogniser is, from 0 to 1: a passed checksum and context words raise it,
    /// structure-only matches and names stay lower.
    pub confidence: f32,
    /// Which recogniser matched, such as `phone.e164`, `card.luhn` or `credential.jwt`: stable
    /// names, for explanations and tests.
    pub recognizer: &'static str,
    /// Whether a context word of the entity's kind (`رقم الهوية`, `IBAN`, `جوال`, ...) stood
    /// near the match and raised its confidence.
    pub context: bool,
}
