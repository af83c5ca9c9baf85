//! Egress control: the set of `(scheme, host, port)` the process may talk to.

use std::collections::BTreeSet;

use reqwest::Url;

use crate::{Error, Result};

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
            Err(Error::Egress(format!("{}://{}:{}", o.0, o.1, o.2)))
        }
    }
}

fn origin(url: &Url) -> Result<(String, String, u16)> {
    let host = url
        .host_str()
        .ok_or_else(|| Error::Config(format!("{url} has no host")))?;
    let port = url
        .port_or_known_default()
        .ok_or_else(|| Error::Config(format!("{url} has no port")))?;
    Ok((url.scheme().to_owned(), host.to_ascii_lowercase(), port))
}

#[cfg(test)]
mod tests {
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
                matches!(p.check(&Url::parse(bad).unwrap()), Err(Error::Egress(_))),
                "{bad}"
            );
        }
    }
}
