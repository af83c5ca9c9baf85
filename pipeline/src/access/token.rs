//! The API key format: `isnad_sk_<id>_<secret><check>`.
//!
//! - `<id>`: 12 base62 characters, public (it names the key in the admin API and the journal);
//!   the server looks a key up by it, then compares SHA-256 hashes in constant time.
//! - `<secret>`: 32 base62 characters (about 190 bits) from the operating system's generator.
//! - `<check>`: 6 base62 characters of the CRC-32 of everything before it, as GitHub's tokens
//!   carry: a secret scanner can tell a real isnad key from a string that only looks like one
//!   without asking the server, and a mistyped key is refused before any lookup.
//!
//! Only the SHA-256 of a key is ever stored or journaled.

/// Every isnad API key starts with this.
pub const PREFIX: &str = "isnad_sk_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const CHECK_LEN: usize = 6;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A freshly issued key: its public id and the key itself (shown to its owner once).
#[derive(Debug)]
pub struct Issued {
    /// The public id.
    pub id: String,
    /// The whole key.
    pub token: String,
}

/// Issues a new key.
pub fn issue() -> Issued {
    let mut rng = rand::rngs::OsRng;
    let id = random_base62(&mut rng, ID_LEN);
    let secret = random_base62(&mut rng, SECRET_LEN);
    let body = format!("{PREFIX}{id}_{secret}");
    let token = format!("{body}{}", check(&body));
    Issued { id, token }
}

/// The id of a key in isnad's format whose checksum holds, or `None` (some other token: the
/// bootstrap admin key or a `[[keys]]` entry, which are looked up by hash).
pub fn id_of(token: &str) -> Option<&str> {
    let rest = token.strip_prefix(PREFIX)?;
    let (id, tail) = rest.split_once('_')?;
    if id.len() != ID_LEN || tail.len() != SECRET_LEN + CHECK_LEN || !is_base62(rest) {
        return None;
    }
    let (body, sum) = token.split_at(token.len() - CHECK_LEN);
    (check(body) == sum).then_some(id)
}

/// Whether `s` looks like an isnad key id (12 base62 characters).
pub fn is_id(s: &str) -> bool {
    s.len() == ID_LEN && is_base62(s)
}

/// Base62 characters, and the one `_` between id and secret.
fn is_base62(s: &str) -> bool {
    s.bytes()
        .filter(|&b| b != b'_')
        .all(|b| b.is_ascii_alphanumeric())
        && s.matches('_').count() <= 1
}

fn random_base62(rng: &mut impl rand::RngCore, n: usize) -> String {
    // Rejection sampling keeps every character equally likely (256 is not a multiple of 62).
    let mut out = String::with_capacity(n);
    let mut buf = [0u8; 64];
    while out.len() < n {
        rng.fill_bytes(&mut buf);
        for &b in &buf {
            if b < 248 && out.len() < n {
                out.push(BASE62[usize::from(b % 62)] as char);
            }
        }
    }
    out
}

fn check(body: &str) -> String {
    let mut v = u64::from(crc32fast::hash(body.as_bytes()));
    let mut out = [b'0'; CHECK_LEN];
    for slot in out.iter_mut().rev() {
        *slot = BASE62[(v % 62) as usize];
        v /= 62;
    }
    out.iter().map(|&b| b as char).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn an_issued_key_parses_to_its_id_and_a_typo_does_not() {
        for _ in 0..200 {
            let k = issue();
            assert_eq!(k.token.len(), PREFIX.len() + 12 + 1 + 32 + 6);
            assert_eq!(id_of(&k.token), Some(k.id.as_str()));
            assert!(is_id(&k.id));
            // Any one character changed breaks the checksum (CRC-32 catches every single-symbol
            // error).
            let pos = PREFIX.len() + 14;
            let mut bytes = k.token.clone().into_bytes();
            bytes[pos] = if bytes[pos] == b'a' { b'b' } else { b'a' };
            assert_eq!(id_of(&String::from_utf8(bytes).unwrap()), None);
        }
    }

    #[test]
    fn other_tokens_are_not_isnad_keys() {
        for t in [
            "",
            "isnad_sk_",
            "isnad_sk_abc_def",
            "sk-proj-123",
            "isnad_sk_AAAAAAAAAAAA_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB000000",
        ] {
            assert_eq!(id_of(t), None, "{t}");
        }
    }
}
