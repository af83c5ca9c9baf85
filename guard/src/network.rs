//! Email addresses and IPv6 addresses (IPv4 is a number run: see [`crate::numbers`]).

use std::net::Ipv6Addr;

use crate::numbers::adjust;
use crate::scanner::{Candidate, Ctx};
use crate::EntityType;

/// Scans for `@` (emails) and `:` (IPv6) in one pass.
pub(crate) fn scan(ctx: &Ctx<'_>, out: &mut Vec<Candidate>) {
    let b = ctx.bytes;
    let mut ipv6_until = 0;
    for (i, &c) in b.iter().enumerate() {
        match c {
            b'@' => {
                if let Some(c) = email(ctx, i) {
                    out.push(c);
                }
            }
            b':' if i >= ipv6_until => {
                if let Some((c, end)) = ipv6(ctx, i) {
                    out.push(c);
                    ipv6_until = end;
                } else {
                    ipv6_until = token_end(b, i, is_ipv6_byte);
                }
            }
            _ => {}
        }
    }
}

fn is_local_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-' | b'\'')
}

fn is_domain_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-')
}

fn is_ipv6_byte(b: u8) -> bool {
    b.is_ascii_hexdigit() || matches!(b, b':' | b'.')
}

fn token_end(b: &[u8], from: usize, allowed: fn(u8) -> bool) -> usize {
    from + b[from..].iter().take_while(|&&c| allowed(c)).count()
}

fn token_start(b: &[u8], to: usize, allowed: fn(u8) -> bool) -> usize {
    to - b[..to].iter().rev().take_while(|&&c| allowed(c)).count()
}

/// `local@domain.tld` around the `@` at `at`: a local part of up to 64 characters that does
/// not start or end with a dot, and a domain of dot-separated labels (letters, digits, inner
/// hyphens) ending in a top-level domain of two or more letters. A dot that ends the sentence
/// is not part of the address.
fn email(ctx: &Ctx<'_>, at: usize) -> Option<Candidate> {
    let b = ctx.bytes;
    let mut start = token_start(b, at, is_local_byte);
    while start < at && matches!(b[start], b'.' | b'\'' | b'-' | b'+') {
        start += 1;
    }
    let local = &b[start..at];
    if local.is_empty()
        || local.len() > 64
        || local.ends_with(b".")
        || local.windows(2).any(|w| w == b"..")
    {
        return None;
    }
    let mut end = token_end(b, at + 1, is_domain_byte);
    while end > at + 1 && matches!(b[end - 1], b'.' | b'-') {
        end -= 1;
    }
    let domain = &b[at + 1..end];
    if domain.len() > 253 {
        return None;
    }
    let mut labels = domain.split(|&c| c == b'.');
    let mut count = 0;
    let mut last: &[u8] = &[];
    for label in labels.by_ref() {
        if label.is_empty()
            || label.len() > 63
            || label[0] == b'-'
            || label[label.len() - 1] == b'-'
        {
            return None;
        }
        count += 1;
        last = label;
    }
    if count < 2 || last.len() < 2 || !last.iter().all(u8::is_ascii_alphabetic) {
        return None;
    }
    let (confidence, context) = adjust(ctx, start, end, EntityType::Email, 0.95, 0.04, 0.0);
    Some(Candidate::new(
        EntityType::Email,
        start..end,
        confidence,
        "email",
        context,
    ))
}

/// An IPv6 address through the `:` at `at`: the longest run of hex digits, colons and dots
/// around it, not glued to a word, that the standard library parses (all forms: full,
/// compressed with `::`, with an embedded IPv4 address). `::` alone, and forms with no digit
/// and fewer than three groups (`ab::cd`, which reads more like code), are left out.
fn ipv6(ctx: &Ctx<'_>, at: usize) -> Option<(Candidate, usize)> {
    let b = ctx.bytes;
    let start = token_start(b, at, is_ipv6_byte);
    let mut end = token_end(b, at, is_ipv6_byte);
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    if start > 0 && word(b[start - 1]) {
        return None;
    }
    // A trailing dot or colon ends the sentence (`... is ::1.`) or a label (`addr: ...`).
    while end > start && matches!(b[end - 1], b'.') {
        end -= 1;
    }
    if b.get(end).is_some_and(|&c| word(c)) {
        return None;
    }
    let token = std::str::from_utf8(&b[start..end]).ok()?;
    let colons = token.bytes().filter(|&c| c == b':').count();
    if colons < 2 || token.parse::<Ipv6Addr>().is_err() {
        return None;
    }
    let groups = token.split(':').filter(|g| !g.is_empty()).count();
    let has_digit = token.bytes().any(|c| c.is_ascii_digit());
    if groups == 0 || (!has_digit && groups < 3) {
        return None;
    }
    let (confidence, context) = adjust(ctx, start, end, EntityType::Ip, 0.85, 0.1, 0.2);
    Some((
        Candidate::new(EntityType::Ip, start..end, confidence, "ip.v6", context),
        end,
    ))
}
