//! Turning documents and prompts into text that isnad can search, index and scan for PII, without
//! losing track of where each piece of that text came from.
//!
//! DESIGN.md gives this crate parsing (PDF, DOCX, HTML, Markdown, plain text), Unicode and Arabic
//! normalisation, and chunking with provenance. Today it holds normalisation ([`normalize()`]): the
//! guardrail scans normalised text and reports spans in the original through
//! [`Normalized::to_original`]. Parsers and chunking come with the RAG work, and their provenance
//! will be built on the same map back to the original.
//!
//! The crate is pure: no I/O, no global state.

pub mod normalize;

pub use normalize::{normalize, normalize_with, NormalizeOptions, Normalized};
