//! Egress control: the set of `(scheme, host, port)` the process may talk to. One policy for
//! every way out of the process (upstream model calls, webhook deliveries), so that what may be
//! reached is decided in one place.

use std::collections::BTreeSet;

use url::Url;

/// Why a destination is not allowed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EgressError {
    /// The destination is not configured.
    #[error("egress refused: {0} is not a configured destination")]
    Refused(String),
    /// The URL names no host or port.
    #[error("{0}")]
    BadUrl(String),
}

type Result<T, E = EgressError> = std::result::Result<T, E>;

/// Destinations allowed out of the boundary: configured upstreams (and, later, webhook targets).
#[derive(Clone, Debug, Default)]
pub struct EgressPolicy {
    allowed: BTreeSet<(String, String, u16)>,
}

impl EgressPolicy {
    /// Nothing allowed.
    pub fn deny_all() -> Self {
        Self::default()
    }

    /// Allows the origin of `url`.
    pub fn allow(&mut self, url: &Url) -> Result<()> {
        self.allowed.insert(origin(url)?);
        Ok(())
    }

    /// Refuses any URL whose origin was not allowed.
    pub fn check(&self, url: &Url) -> Result<()> {
        let o = origin(url)?;
        if self.allowed.contains(&o) {
            Ok(())
        } else {
            Err(EgressError::Refused(format!("{}://{}:{}", o.0, o.1, o.2)))
        }
    }
}

fn origin(url: &Url) -> Result<(String, String, u16)> {
    let host = url
        .host_str()
        .ok_or_else(|| EgressError::BadUrl(format!("{url} has no host")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| EgressError::BadUrl(format!("{url} has no port")))?;
    Ok((url.scheme().to_owned(), host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn only_configured_origins_pass() {
        let mut p = EgressPolicy::deny_all();
        p.allow(&Url::parse("http://127.0.0.1:8000/v1").unwrap())
            .unwrap();
        assert!(p
            .check(&Url::parse("http://127.0.0.1:8000/v1/chat/completions").unwrap())
            .is_ok());
        for bad in [
            "http://127.0.0.1:8001/v1",
            "https://127.0.0.1:8000/v1",
            "http://example.com/v1",
            "http://localhost:8000/",
        ] {
            assert!(
                matches!(
                    p.check(&Url::parse(bad).unwrap()),
                    Err(EgressError::Refused(_))
                ),
                "{bad}"
            );
        }
    }
}
