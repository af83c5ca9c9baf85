//! PII recognisers for Arabic and English text, and the language of a prompt.
//!
//! [`Scanner`] finds emails, IP addresses, phones of the Gulf, Egypt and Jordan (and E.164
//! numbers of anywhere), IBANs, payment cards, Saudi, Emirati, Kuwaiti and Egyptian national
//! identifiers, credentials and person names. Each [`Finding`] carries its [`EntityType`], its
//! [`Span`] in the original text and a confidence; it never carries the value. Structured
//! types are checked the way their issuers check them (Luhn, MOD-97, the Kuwaiti mod-11 digit,
//! birth dates, governorate codes): a failed check drops the candidate. [`detect_language`]
//! tells the router whether a prompt is Arabic, English, mixed or something else.
//!
//! Text is normalised first by [`isnad_ingest::normalize`] (NFKC, Arabic-Indic and Persian
//! digits to ASCII, tatweel, diacritics and invisible characters removed), so `٠٥٠ـ١٢٣ ٤٥٦٧`
//! is the phone `0501234567`; spans are mapped back with
//! [`isnad_ingest::Normalized::to_original`], so they point at what the user sent.
//!
//! The crate is pure: no I/O, no global state. Everything that is compiled (the cue
//! automaton, the phone patterns) is compiled once in [`Scanner::new`]; a scan is one pass of
//! the automaton, one pass over the digits and one over `@` and `:`, and is linear in the
//! length of the text.
//!
//! The guardrail stage (actions per type, redaction, the vault) and the router live in the
//! pipeline; this crate only recognises.

mod checksum;
mod credential;
mod cues;
mod entity;
mod iban;
mod language;
mod lexicon;
mod names;
mod network;
mod numbers;
mod phone;
mod scanner;

#[cfg(feature = "corpus")]
pub mod corpus;

pub use entity::{EntityType, Finding, Span};
pub use language::{detect_language, Language, DOMINANT_SHARE, MIXED_SHARE};
pub use scanner::{Scanner, ScannerConfig, DEFAULT_MIN_CONFIDENCE};

/// Why a [`Scanner`] could not be built. The patterns are fixed at compile time, so this
/// happens only if one of them is broken, which the tests would show first.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A phone pattern did not compile.
    #[error("phone pattern: {0}")]
    Pattern(#[from] regex::Error),
    /// The cue automaton could not be built.
    #[error("cue automaton: {0}")]
    Automaton(#[from] aho_corasick::BuildError),
}

/// The result type of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
